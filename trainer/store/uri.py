"""Paths that are a local folder or an ``s3://`` prefix: one test for which, the one parser of
``s3://`` URIs (which refuses a key prefix that would leave a folder), the few reads that work
on both (``join``, ``has``, ``read_text``, ``read_json``), and the local cache that S3 data is
synced into.

Example:
    >>> is_s3("s3://my-bucket/runs/r1/")
    True
    >>> join("s3://my-bucket/runs/r1/", "summary.json")
    's3://my-bucket/runs/r1/summary.json'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from trainer.errors import DataError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class UnsafeURI(DataError, ValueError):
    """An ``s3://`` key prefix with a ``..``, ``.`` or empty segment: as a local folder (every
    ``s3://`` output and input is staged in one) it would leave the cache, and as keys it
    would name other objects than the ones meant. A ``DataError`` for the command line, and a
    ``ValueError`` like any other malformed URI."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


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


def cache_dir(given: str | os.PathLike = "") -> Path:
    """The local cache for ``s3://`` data and media: ``given``, else ``~/.cache/av-emotion``."""
    return Path(given or Path.home() / ".cache" / "av-emotion").expanduser()


def join(out: str, name: str) -> str:
    """``out/name`` for a folder or an s3:// prefix."""
    return out.rstrip("/") + "/" + name


def has(uri: str) -> bool:
    """Whether the file ``uri`` (a path or an s3:// URI) exists."""
    if not is_s3(uri):
        return Path(uri).is_file()
    from trainer.store import s3  # boto3: loaded only where S3 is used

    return s3.exists(uri)


def read_text(uri: str) -> str:
    """The text file at ``uri`` (a path or an s3:// URI)."""
    if not is_s3(uri):
        return Path(uri).read_text()
    from trainer.store import s3  # boto3: loaded only where S3 is used

    return s3.read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> dict:
    """The JSON document at ``uri`` (a path or an s3:// URI)."""
    return json.loads(read_text(uri))


def resolve_data(uri: str, given_cache: str = "") -> Path:
    """A local folder (or manifest) for ``uri``; an s3:// prefix is synced into the cache."""
    if is_s3(uri):
        from trainer.store.s3 import sync_down  # boto3: loaded only where S3 is used

        return sync_down(uri, cache_dir(given_cache))
    return Path(uri)
