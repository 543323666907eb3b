"""The one parser of ``s3://`` URIs, which every verb's S3 access goes through: it refuses a
key prefix with a ``..``, ``.`` or empty segment, which as a local staging folder would leave
the cache and as keys would name other objects. No boto3 here (trainer.store.s3 builds on it).

Example:
    >>> parse_s3_uri("s3://my-bucket/runs/r1/")
    ('my-bucket', 'runs/r1/')
"""

from __future__ import annotations

import re

from trainer.errors import DataError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class UnsafeURI(DataError, ValueError):
    """An ``s3://`` key prefix with a ``..``, ``.`` or empty segment. A ``DataError`` for the
    command line (one line), and a ``ValueError`` like any other malformed URI."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``. Every ``s3://`` URI
    any verb uses goes through here, so this is the one place that refuses a prefix leaving
    its folder.

    The prefix is returned as written (possibly ``""``).

    Raises:
        UnsafeURI: a ``..``, ``.`` or empty segment in the prefix (a trailing ``/`` is fine).
        ValueError: any other malformed URI.

    Example:
        >>> parse_s3_uri("s3://my-bucket/runs/r1/")
        ('my-bucket', 'runs/r1/')
    """
    uri = str(uri)
    scheme, sep, rest = uri.partition("://")
    if (scheme, sep) != ("s3", "://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/prefix): {uri!r}")
    bucket, _, prefix = rest.partition("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.removesuffix("/").split("/")):
        raise UnsafeURI(f"bad S3 prefix in {uri}: '..', '.' and empty segments are not allowed "
                        "(files would be written outside the cache folder, or under other keys)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"bad bucket name {bucket!r} in {uri!r} (3-63 characters: a-z 0-9 . -)")
    if any(c in prefix for c in "\n\r\t"):
        raise ValueError(f"bad key prefix {prefix!r} in {uri!r}")
    return bucket, prefix
