"""A run directory mirrored to S3: every file written locally is uploaded whole, and a file
that cannot be uploaded stays pending and is tried again, so an S3 outage never stops training.

Example:
    >>> mirror = S3Mirror("s3://my-bucket/runs/r1/", "/tmp/staging")   # what RunDir uses
    >>> mirror.upload("status.json"); mirror.flush()
"""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from trainer import s3  # its helpers by attribute, so a test's patch of s3.retry reaches here

log = structlog.get_logger()
T = TypeVar("T")


class S3Mirror:
    """A local folder mirrored to an ``s3://`` prefix, one whole file (one PUT) at a time.

    Uploads never raise: a file that cannot be uploaded after the retries stays pending and is
    tried again at the next ``upload``/``flush`` (after a failure, uploads only queue for a
    while, so an S3 outage does not stall training). ``flush`` raises ``S3Error`` if anything is
    still pending when it is done.

    Args:
        uri: ``s3://bucket/prefix``; ``name`` maps to the key ``prefix/name``.
        local: the local folder.
        attempts, backoff, max_backoff: this layer's retries (on top of botocore's).

    Example:
        >>> m = S3Mirror("s3://my-bucket/runs/r1/", "/tmp/staging")
        >>> m.fetch("checkpoints/last.pt")   # False when there is none
        False
    """

    def __init__(self, uri: str, local: str | os.PathLike, attempts: int = 4,
                 backoff: float = 1.0, max_backoff: float = 20.0):
        self.uri = str(uri)
        self.bucket, prefix = s3.parse_s3_uri(self.uri)
        self.prefix = s3._folder(prefix)
        self.local = Path(local)
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self._s3 = s3.client()
        self._lock = threading.RLock()  # the training loop and a heartbeat thread may both write
        self._synced: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) last uploaded
        self._pending: dict[str, None] = {}  # an ordered set of names to upload
        self._failures = 0
        self._quiet_until = 0.0

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    def _key(self, name: str) -> str:
        return self.prefix + Path(name).as_posix()

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return s3.retry(fn, what, self.attempts, self.backoff, self.max_backoff)

    def _put(self, name: str) -> None:
        path = self.local / name
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            log.warning("s3.upload_skipped_missing", name=name)
            return
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._retry(lambda: self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                                                ContentType=ctype), f"put {name}")
        self._synced[name] = (st.st_mtime_ns, st.st_size)

    def _drain(self) -> None:
        """Upload what is pending, oldest first; stop at the first transient failure."""
        for name in list(self._pending):
            try:
                self._put(name)
            except Exception as e:
                self._failures += 1
                self._quiet_until = time.monotonic() + min(60.0, self.backoff * 2 ** self._failures)
                log.error("s3.upload_pending", uri=self.uri, name=name, pending=len(self._pending),
                          error=s3._brief(e))
                if s3._transient(e):
                    return
                continue
            del self._pending[name]
        if not self._pending:
            self._failures, self._quiet_until = 0, 0.0

    def upload(self, name: str) -> None:
        """Upload ``local/name`` to ``prefix/name`` (whole); on failure keep it pending. Never raises."""
        with self._lock:
            self._pending.pop(name, None)
            self._pending[name] = None
            if time.monotonic() < self._quiet_until:
                return
            try:
                self._drain()
            except Exception as e:  # never crash training for a mirror
                log.error("s3.upload_error", name=name, error=s3._brief(e))

    def fetch(self, name: str) -> bool:
        """Download ``prefix/name`` into ``local/name`` (temp name, then rename); False if absent.

        Raises:
            S3Error: S3 could not say (unreachable, no credentials, no bucket): a resume must not
                silently start over.
        """
        with self._lock:
            def get() -> bytes:
                return self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
            try:
                data = self._retry(get, f"get {name}")
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return False
                raise s3._explain(e, f"s3://{self.bucket}/{self._key(name)}") from None
            except BotoCoreError as e:
                raise s3._explain(e, f"s3://{self.bucket}/{self._key(name)}") from None
            path = self.local / name
            s3._write_atomic(path, data)
            st = path.stat()
            self._synced[name] = (st.st_mtime_ns, st.st_size)
            self._pending.pop(name, None)
            return True

    def flush(self) -> None:
        """Upload every local file that changed since its last upload, and whatever is pending.

        Raises:
            S3Error: files still not uploaded after the retries (they stay pending).
        """
        with self._lock:
            for path in sorted(self.local.rglob("*")):
                try:
                    if not path.is_file() or s3._is_temp(path.name):
                        continue
                    st = path.stat()
                except FileNotFoundError:  # a temp file renamed meanwhile
                    continue
                name = path.relative_to(self.local).as_posix()
                if self._synced.get(name) != (st.st_mtime_ns, st.st_size):
                    self._pending.setdefault(name, None)
            self._drain()
            if self._pending:
                names = ", ".join(list(self._pending)[:5])
                raise s3.S3Error(f"{len(self._pending)} file(s) not uploaded to {self.uri} "
                                 f"after retries: {names}")
