"""Paths that are a local folder or an ``s3://`` prefix: one test for which, the few reads that
work on both (``join``, ``has``, ``read_text``, ``read_json``), and the local cache that S3 data
is synced into. ``s3://`` URIs are parsed (and a prefix leaving its folder refused) in one
place, trainer.store.s3uri.

Example:
    >>> is_s3("s3://my-bucket/runs/r1/")
    True
    >>> join("s3://my-bucket/runs/r1/", "summary.json")
    's3://my-bucket/runs/r1/summary.json'
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def cache_dir(given: str | os.PathLike = "") -> Path:
    """The local cache for ``s3://`` data and media: ``given``, else ``~/.cache/av-emotion``."""
    return Path(given or Path.home() / ".cache" / "av-emotion").expanduser()


def join(out: str, name: str) -> str:
    """``out/name`` for a folder or an s3:// prefix."""
    return out.rstrip("/") + "/" + name


def has(uri: str) -> bool:
    """Whether the file ``uri`` (a path or an s3:// URI) exists.

    Raises:
        S3Error: S3 cannot say (a 403, which S3 gives for a missing key to a caller that may not
            list the bucket; no such bucket; unreachable), in one line.
    """
    if not is_s3(uri):
        return Path(uri).is_file()
    from trainer.store import s3  # boto3: loaded only where S3 is used

    try:
        return s3.exists(uri)
    except (s3.BotoCoreError, s3.ClientError) as e:
        raise s3.explain(e, uri) from None


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
