"""One writer per cv task directory: a second process that would write the same fold (an orphan
of a killed ``cv --parallel``, a second ``cv --resume``, a Batch retry whose previous attempt is
still alive) waits for the first to end, and gives up with one line if it does not.

    with task_lock("runs/cv/fold-2"):             # fcntl lock on runs/cv/fold-2/.writer.lock
        train(...)
    with task_lock("s3://b/runs/r1/fold-2/"):     # a lease object, fold-2/.writer-lease.json
        train(...)

Locally the lock is ``flock`` on a file in the task directory: the kernel releases it when its
holder dies, even by SIGKILL. On S3 it is a lease: an object naming its owner, written with a
conditional PUT (``If-None-Match: *`` to create it, ``If-Match: ETAG`` to renew, take over or
release it), so two writers never both believe they hold it. The holder renews it every
``ttl / 3`` seconds; a lease not renewed for ``ttl`` seconds (its holder's host was reclaimed)
may be taken over. Its age is measured on S3's clock alone (the object's Last-Modified against
the Date of the response that read it), so hosts' clocks do not matter. The trainer deletes
nothing in S3: a released lease is overwritten with ``released: true``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path

import structlog

from trainer import logs
from trainer.errors import DataError
from trainer.store.uri import is_s3, join

log = structlog.get_logger()

LOCK_FILE = ".writer.lock"
LEASE_FILE = ".writer-lease.json"
LEASE_SECONDS = 90.0  # a Batch retry waits at most this long (plus a poll) for a dead holder
WAIT_SECONDS = 2 * LEASE_SECONDS  # how long a second writer waits before giving up
POLL_SECONDS = 1.0
LOST_EXIT = 75  # EX_TEMPFAIL: the task goes on in the process that took it over


def owner() -> str:
    """Who holds a lock: host, pid, and the Batch job (with its attempt) when there is one."""
    job = os.environ.get("AWS_BATCH_JOB_ID", "")
    attempt = os.environ.get("AWS_BATCH_JOB_ATTEMPT", "")
    return f"{socket.gethostname()} pid {os.getpid()}" + (f" job {job}" if job else "") + (
        f" attempt {attempt}" if attempt else "")


@contextmanager
def local_lock(where: str | os.PathLike, wait: float = WAIT_SECONDS, poll: float = POLL_SECONDS):
    """Hold ``where/.writer.lock`` (flock) for the block; DataError after ``wait`` seconds."""
    folder = Path(where)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    raise DataError(f"{folder} is being written by another process ({holder}); "
                                    "let it end or stop it, then run again") from None
                if not said:
                    log.warning("cv_task_locked", dir=str(folder), holder=holder,
                                message=f"waiting up to {wait:.0f}s for it to end")
                    said = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner().encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def leave(uri: str) -> None:
    """What a holder does when its lease was taken over: stop at once, writing nothing more.
    The process that took the task resumes it from its last checkpoint; a checkpoint or metric
    written from here after that would mix two runs in one folder."""
    print(f"error: another process took over {uri.rsplit('/', 1)[0]}/ (this one could not renew "
          f"its lease for over its ttl); stopping without writing more", file=sys.stderr)
    logs.flush()
    os._exit(LOST_EXIT)


class Lease:
    """A lease object on S3 (see the module's docstring). ``acquire``, then ``release``; a
    thread renews it meanwhile, and calls ``on_lost(uri)`` if another writer took it over."""

    def __init__(self, uri: str, ttl: float = LEASE_SECONDS, wait: float | None = None,
                 poll: float = POLL_SECONDS, on_lost=leave):
        from trainer.store import s3  # boto3: loaded only where S3 is used

        self.s3lib, self.uri = s3, uri
        self.bucket, self.key = s3.parse_s3_uri(uri)
        self.client = s3.client()
        self.ttl, self.poll = ttl, poll
        self.wait = 2 * ttl if wait is None else wait
        self.etag: str | None = None
        self.lost, self.on_lost = False, on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, released: bool = False) -> bytes:
        return json.dumps({"owner": owner(), "ttl_seconds": self.ttl, "released": released,
                           "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                           }).encode()

    def _put(self, released: bool = False, **cond) -> str:
        r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(released),
                                   ContentType="application/json", **cond)
        return r["ETag"]

    def _code(self, e) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _read(self) -> tuple[dict, str, float] | None:
        """(the lease, its ETag, its age in seconds on S3's clock), or None if there is none."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.s3lib.ClientError as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None
            raise
        body = r["Body"].read()
        now = parsedate_to_datetime(r["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - r["LastModified"]).total_seconds()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        return doc, r["ETag"], age

    def acquire(self) -> None:
        deadline, said = time.monotonic() + self.wait, False
        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except self.s3lib.ClientError as e:
                if self._code(e) not in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                         "409"):
                    raise self.s3lib.explain(e, self.uri) from None
            got = self._read()
            if got is not None:
                doc, etag, age = got
                if doc.get("released") or age > float(doc.get("ttl_seconds", self.ttl)):
                    try:  # free or stale: take it over, unless another did just now
                        self.etag = self._put(IfMatch=etag)
                        if not doc.get("released"):
                            log.warning("cv_task_lease_taken_over", lease=self.uri,
                                        previous=doc.get("owner"), age_seconds=round(age, 1))
                        break
                    except self.s3lib.ClientError as e:
                        if self._code(e) not in ("PreconditionFailed", "412", "NoSuchKey",
                                                 "404", "ConditionalRequestConflict", "409"):
                            raise self.s3lib.explain(e, self.uri) from None
                elif time.monotonic() >= deadline:
                    raise DataError(f"{self.uri.rsplit('/', 1)[0]}/ is being written by another "
                                    f"process ({doc.get('owner', '?')}, lease renewed "
                                    f"{age:.0f}s ago); let it end or stop it, then run again")
                elif not said:
                    log.warning("cv_task_locked", lease=self.uri, holder=doc.get("owner"),
                                message=f"waiting up to {self.wait:.0f}s for it to end")
                    said = True
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._renew, name="cv-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except self.s3lib.ClientError as e:
                if self._code(e) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    self.lost = True  # another writer took it: our renewals failed for > ttl
                    log.error("cv_task_lease_lost", lease=self.uri,
                              message="another process took this task over")
                    self.on_lost(self.uri)
                    return
                log.warning("cv_task_lease_renew_failed", lease=self.uri, error=str(e)[:200])
            except Exception as e:  # S3 unreachable for a moment: the next round tries again
                log.warning("cv_task_lease_renew_failed", lease=self.uri, error=str(e)[:200])

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.etag is None or self.lost:
            return
        try:
            self._put(released=True, IfMatch=self.etag)
        except Exception as e:  # it expires by itself within ttl
            log.warning("cv_task_lease_release_failed", lease=self.uri, error=str(e)[:200])


@contextmanager
def task_lock(where: str, ttl: float = LEASE_SECONDS, wait: float | None = None):
    """Hold the task directory ``where`` (a folder or an s3:// prefix) for one writer."""
    if not is_s3(where):
        with local_lock(where, 2 * ttl if wait is None else wait):
            yield
        return
    lease = Lease(join(where, LEASE_FILE), ttl, wait)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()
