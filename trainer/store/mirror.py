"""A run directory mirrored to S3: every file written locally is uploaded whole, by a thread of
its own, and a file that cannot be uploaded stays pending and is tried again, so an S3 outage,
or an S3 that hangs, never stops training.

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

from trainer.store import (
    s3,  # its helpers by attribute, so a test's patch of s3.retry reaches here
)
from trainer.store.files import atomic_write_bytes

log = structlog.get_logger()
T = TypeVar("T")


class S3Mirror:
    """A local folder mirrored to an ``s3://`` prefix, one whole file (one PUT) at a time.

    ``upload`` only queues the name and returns: one uploader thread sends the queue oldest
    first, reading each file when its turn comes, so the newest version of a file supersedes a
    pending older one (it is sent once, and moves to the back of the queue: everything written
    before it goes first, so the S3 copy of a run directory is always an earlier state of the
    local one, file by file). No lock is held through the network: a PUT that hangs (S3 stalled)
    or retries only delays the queue behind it. After a failure the thread waits a while before
    the next try. ``flush`` waits, with a bound, and raises ``S3Error`` naming what is still
    pending.

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
        self.prefix = s3.as_folder(prefix)
        self.local = Path(local)
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self._s3 = s3.client()
        # Guards the bookkeeping below, never held through a network call.
        self._cond = threading.Condition(threading.Lock())
        self._synced: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) last uploaded
        self._pending: dict[str, int] = {}  # name -> enqueue number; dict order is queue order
        self._seq = 0
        self._busy: str | None = None  # the name being uploaded now
        self._begun = 0  # upload attempts begun, for flush: the number of the next one
        self._last_failure = -1  # the number of the latest attempt that failed
        self._failures = 0  # failed attempts in a row
        self._quiet_until = 0.0
        self._hurry = False  # a flush waits: try now, not after the quiet period
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> list[str]:
        """Names not yet safely in S3 (queued, being sent, or failed), oldest first."""
        with self._cond:
            return list(self._pending)

    def _key(self, name: str) -> str:
        return self.prefix + Path(name).as_posix()

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return s3.retry(fn, what, self.attempts, self.backoff, self.max_backoff)

    def _put(self, name: str) -> tuple[int, int] | None:
        """One whole-file PUT of ``local/name`` (with retries); its (mtime_ns, size), or None if
        the file is gone."""
        path = self.local / name
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            log.warning("s3.upload_skipped_missing", name=name)
            return None
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._retry(lambda: self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                                                ContentType=ctype), f"put {name}")
        return st.st_mtime_ns, st.st_size

    def _next(self) -> tuple[str, int] | None:
        """The oldest pending name once it may be tried (called with the lock held)."""
        if not self._pending:
            return None
        if time.monotonic() < self._quiet_until and not self._hurry:
            return None
        return next(iter(self._pending.items()))

    def _work(self) -> None:
        """The uploader thread: send the queue, oldest first, for the life of the process."""
        while True:
            with self._cond:
                while (item := self._next()) is None:
                    wait = self._quiet_until - time.monotonic() if self._pending else None
                    self._cond.wait(None if wait is None else max(wait, 0.01))
                name, seq = item
                self._busy, attempt = name, self._begun
                self._begun += 1
            try:
                stat, error = self._put(name), None
            except Exception as e:  # never let the thread die: the queue would stall
                stat, error = None, e
            with self._cond:
                self._busy = None
                if error is None:
                    if stat is not None:
                        self._synced[name] = stat
                    if self._pending.get(name) == seq:  # not written again meanwhile
                        del self._pending[name]
                    self._failures = 0
                    if not self._pending:
                        self._quiet_until = 0.0
                else:
                    self._failures += 1
                    self._last_failure = attempt
                    self._quiet_until = time.monotonic() + min(60.0,
                                                               self.backoff * 2 ** self._failures)
                    if not s3.is_transient(error) and self._pending.get(name) == seq:
                        # S3 refuses this one file (e.g. access denied): try the others first
                        self._pending[name] = self._pending.pop(name)
                self._cond.notify_all()
            if error is not None:
                log.error("s3.upload_pending", uri=self.uri, name=name,
                          pending=len(self._pending), error=s3.error_text(error))

    def _enqueue(self, name: str) -> None:
        """Queue ``name`` at the back (called with the lock held); start the thread if needed."""
        self._pending.pop(name, None)
        self._seq += 1
        self._pending[name] = self._seq
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="s3-mirror", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def upload(self, name: str) -> None:
        """Queue ``local/name`` for upload to ``prefix/name`` (whole) and return at once; a
        pending older version of it is superseded. Never raises, never waits for S3."""
        with self._cond:
            self._enqueue(name)

    def fetch(self, name: str) -> bool:
        """Download ``prefix/name`` into ``local/name`` (temp name, then rename); False if absent.

        Raises:
            S3Error: S3 could not say (unreachable, no credentials, no bucket): a resume must not
                silently start over.
        """
        def get() -> bytes:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        try:
            data = self._retry(get, f"get {name}")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise s3.explain(e, f"s3://{self.bucket}/{self._key(name)}") from None
        except BotoCoreError as e:
            raise s3.explain(e, f"s3://{self.bucket}/{self._key(name)}") from None
        path = self.local / name
        atomic_write_bytes(path, data)
        st = path.stat()
        with self._cond:
            self._synced[name] = (st.st_mtime_ns, st.st_size)
            self._pending.pop(name, None)
        return True

    def flush(self, timeout: float = 300.0) -> None:
        """Queue every local file that changed since its last upload, then wait until nothing is
        pending, until an upload has failed after the wait began (S3 down: waiting longer would
        not help), or for ``timeout`` seconds (S3 hanging). Files left stay pending.

        Raises:
            S3Error: files still not uploaded; the message names them (the log lists them all).
        """
        with self._cond:
            for path in sorted(self.local.rglob("*")):
                try:
                    if not path.is_file() or s3.is_temp_name(path.name):
                        continue
                    st = path.stat()
                except FileNotFoundError:  # a temp file renamed meanwhile
                    continue
                name = path.relative_to(self.local).as_posix()
                if self._synced.get(name) != (st.st_mtime_ns, st.st_size) \
                        and name not in self._pending:
                    self._enqueue(name)
            deadline = time.monotonic() + timeout
            started = self._begun  # attempts numbered from here on began during this wait
            self._hurry = True
            self._cond.notify_all()
            try:
                while self._pending and self._last_failure < started:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._hurry = False
            left_over, busy = list(self._pending), self._busy
        if left_over:
            log.error("s3.flush_incomplete", uri=self.uri, pending=left_over, uploading=busy,
                      waited_seconds=round(timeout - max(deadline - time.monotonic(), 0), 1))
            names = ", ".join(left_over[:5]) + (", ..." if len(left_over) > 5 else "")
            raise s3.S3Error(f"{len(left_over)} file(s) not uploaded to {self.uri}: {names}")
