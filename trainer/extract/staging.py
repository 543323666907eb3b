"""Where an extraction run reads and writes: local folders, or ``s3://`` prefixes staged in a
local cache (only what changed is synced down; finished clip files go up every
``upload_seconds()`` while the run goes, through ``Uploader``, so that an interrupted run on a
spot instance loses at most the clips of the last interval; the rest goes up at the end, and
the completion record ``extract.json`` last of all, through ``publish``).

    media = local_media("s3://bucket/media/crema/", Path("~/.cache/av-emotion"), stage)
    out = local_out("s3://bucket/data/crema/", Path("~/.cache/av-emotion"), stage)
    with Uploader(out, "s3://bucket/data/crema/"):
        ...  # extract into out
    publish(out, "s3://bucket/data/crema/", "extract.json")

A reader trusts a completion record only if every clip file it lists is there
(``missing_files``), and features only for the media they were made from
(``media_fingerprint``, recorded in the report).

``stage`` is the run's per-stage seconds: the time spent syncing down is added to its
``s3_down``. The output's staging folder holds what an earlier run uploaded, so that resume
counts those clips as done.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import structlog

from trainer.store.files import listing_digest, walk_files
from trainer.store.uri import is_s3

log = structlog.get_logger()
T = TypeVar("T")

UPLOAD_SECONDS = 45.0  # finished clip files go up at least this often while extracting
UPLOAD_SECONDS_ENV = "AVE_UPLOAD_SECONDS"  # overrides it (tests; a slower or faster bucket)


def upload_seconds() -> float:
    """Seconds between upload rounds: ``AVE_UPLOAD_SECONDS`` if set (positive), else 45."""
    given = os.environ.get(UPLOAD_SECONDS_ENV, "").strip()
    if not given:
        return UPLOAD_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{UPLOAD_SECONDS_ENV}={given} must be a positive number of seconds")
    return seconds


def local_media(media: str, cache: Path, stage: dict) -> Path:
    """The media folder; an ``s3://`` prefix is synced down into the cache (only changes)."""
    if not is_s3(media):
        if not Path(media).is_dir():
            raise FileNotFoundError(f"no media folder {media}")
        return Path(media)
    from trainer.store.s3 import sync_down  # boto3: only for s3://

    t0 = time.perf_counter()
    local = sync_down(media, cache / "media")
    stage["s3_down"] += time.perf_counter() - t0
    return local


def local_out(out: str, cache: Path, stage: dict) -> Path:
    """The output folder; for an ``s3://`` prefix, a staging folder in the cache holding what
    an earlier run uploaded (so that resume counts it as done)."""
    if not is_s3(out):
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)
    from trainer.store.s3 import parse_s3_uri, sync_down  # boto3: only for s3://

    t0 = time.perf_counter()
    bucket, prefix = parse_s3_uri(out)
    local = cache / "out" / bucket / prefix
    if _s3_has_objects(out):
        local = sync_down(out, cache / "out")
    local.mkdir(parents=True, exist_ok=True)
    stage["s3_down"] += time.perf_counter() - t0
    return local


def _s3_has_objects(uri: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError  # boto3: only for s3://

    from trainer.store.s3 import (  # boto3: only for s3://
        as_folder,
        client,
        explain,
        parse_s3_uri,
        retry,
    )

    bucket, prefix = parse_s3_uri(uri)
    s3 = client()
    try:
        got = retry(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=as_folder(prefix), MaxKeys=1),
                    f"list {uri}")
    except (BotoCoreError, ClientError) as e:
        raise explain(e, uri) from None
    return got.get("KeyCount", 0) > 0


def media_fingerprint(media: str) -> str:
    """The content of a media folder or prefix in one string: a digest of every file's path,
    size and, in S3, ETag (in a local folder, modification time). The report records it, so
    features are reused only for the very media they were made from.

    Example:
        >>> media_fingerprint("s3://b/media/crema/")[:10]
        's3-etag:4c'
    """
    if is_s3(media):
        return "s3-etag:" + listing_digest(_listing(media))
    files = walk_files(Path(media))
    return "local-mtime:" + listing_digest({rel: (p.stat().st_size, str(p.stat().st_mtime_ns))
                                            for rel, p in files.items()})


def _listing(uri: str) -> dict[str, tuple[int, str]]:
    """``{relative key: (size, etag)}`` under ``uri``; an S3 problem is one ``S3Error``."""
    from botocore.exceptions import BotoCoreError, ClientError  # boto3: only for s3://

    from trainer.store.s3 import (  # boto3: only for s3://
        as_folder,
        client,
        explain,
        list_objects,
        parse_s3_uri,
        retry,
    )

    bucket, prefix = parse_s3_uri(uri)
    try:
        return retry(lambda: list_objects(client(), bucket, as_folder(prefix)), f"list {uri}")
    except (BotoCoreError, ClientError) as e:
        raise explain(e, uri) from None


def missing_files(data: str, report: dict) -> list[str]:
    """The clip files a completion record lists (``written``, ``already_done``) that ``data``
    (a folder or an ``s3://`` prefix) does not hold: a record is trusted only when this is
    empty."""
    listed = list(report.get("written", [])) + list(report.get("already_done", []))
    if is_s3(data):
        there = _listing(data)
        return sorted(rel for rel in listed if rel not in there)
    return sorted(rel for rel in listed if not (Path(data) / rel).is_file())


def publish(local: Path, uri: str, record: str) -> dict:
    """Send the folder ``local`` to ``uri`` with its completion record ``record`` last: every
    other file first (only what changed), then a listing checks that each of them is there
    with its size, and only then the record goes up, alone. So a record in S3 never stands
    beside missing files. Returns ``sync_up``'s counts.

    Raises:
        S3Error: a file could not be sent, or is not there after: the record was not sent,
        and the same command sends the rest.
    """
    from trainer.store.s3 import (  # boto3: only for s3://
        TRANSFER,
        S3Error,
        as_folder,
        client,
        parse_s3_uri,
        retry,
        sync_up,
    )

    counts = sync_up(local, uri, exclude={record})
    there = _listing(uri)
    missing = sorted(rel for rel, p in walk_files(local).items()
                     if rel != record and there.get(rel, (None,))[0] != p.stat().st_size)
    if missing:
        raise S3Error(f"{len(missing)} files did not arrive in {uri} (first: {missing[0]}); "
                      f"{record} was not sent: the same command sends the rest")
    bucket, prefix = parse_s3_uri(uri)
    s3 = client()
    retry(lambda: s3.upload_file(str(local / record), bucket, as_folder(prefix) + record,
                                 Config=TRANSFER), f"put {record}")
    return counts


def uninterrupted(fn: Callable[[], T], what: str) -> T:
    """``fn()`` in a thread of its own, waited for through Ctrl-C and stop signals: a
    ``KeyboardInterrupt`` or ``SystemExit`` raised while it runs is held and raised again once
    it has finished, so no signal (a spot stop sends two) cuts the final upload short. Only
    SIGKILL does."""
    done: list = []

    def run() -> None:
        try:
            done.append((fn(), None))
        except BaseException as e:  # raised again in the caller's thread
            done.append((None, e))

    thread = threading.Thread(target=run, name=f"finish-{what}")
    thread.start()
    held: BaseException | None = None
    while thread.is_alive():
        try:
            thread.join(0.1)
        except (KeyboardInterrupt, SystemExit) as e:
            if held is None:
                held = e
                log.warning("extract.finishing_first", what=what,
                            message="stop requested: this finishes first")
    value, error = done[0]
    if error is not None:
        raise error
    if held is not None:
        raise held
    return value


class Uploader:
    """Sends finished clip files (``*.npz``: written whole, by a rename) from ``local`` to the
    ``uri`` prefix every ``every`` seconds (``upload_seconds()``) in a thread, and once more
    when it stops; calls ``on_progress(clip files here, clip files sent)`` after each round and
    logs ``extract.upload_round`` with ``listed_at``, the time the round looked at the folder
    (every clip file there then is in S3 unless ``failed``). An empty ``uri`` only counts. A
    file that fails is logged and sent by the next round (and by ``publish``); the others of
    its round still go.

    It first lists ``uri``: clip files already there with the same size and MD5 (an earlier,
    interrupted run sent them; they were synced down into ``local``) are not sent again.

    Example:
        >>> with Uploader(Path("~/.cache/av-emotion/out/b/data/crema"), "s3://b/data/crema/"):
        ...     pass  # extract into that folder
    """

    def __init__(self, local: Path, uri: str = "", every: float | None = None,
                 on_progress=None):
        from trainer.store.s3 import as_folder, parse_s3_uri  # boto3: only for s3://

        self.local, self.uri, self.every = local, uri, every or upload_seconds()
        self.on_progress = on_progress or (lambda done, sent: None)
        self.bucket, prefix = parse_s3_uri(uri) if uri else ("", "")
        self.prefix = as_folder(prefix) if uri else ""
        self.sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) in S3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="extract-upload", daemon=True)

    def _clip_files(self) -> dict[str, Path]:
        return {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*.npz")}

    def seed(self) -> None:
        """Count as sent the clip files ``uri`` already holds with the same bytes."""
        from trainer.store.s3 import same_as_remote  # boto3: only for s3://

        if not self.uri:
            return
        here = self._clip_files()
        for rel in same_as_remote(here, _listing(self.uri)):
            st = here[rel].stat()
            self.sent[rel] = (st.st_size, st.st_mtime_ns)
        log.info("extract.upload_seeded", already_there=len(self.sent), here=len(here))

    def tick(self) -> None:
        """Upload the clip files not sent yet (or changed since); report the counts."""
        from trainer.store.s3 import TRANSFER, client, error_text, retry  # boto3: only for s3://

        listed_at = time.time()
        done = self._clip_files()
        failed: list[str] = []
        if self.uri:
            s3 = client()
            for rel, path in sorted(done.items()):
                st = path.stat()
                if self.sent.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                try:
                    retry(lambda: s3.upload_file(str(path), self.bucket, self.prefix + rel,
                                                 Config=TRANSFER), f"put {rel}")
                except Exception as e:  # S3 hiccup: the next round (or publish) sends it
                    if not failed:
                        log.warning("extract.upload_failed", file=rel, error=error_text(e))
                    failed.append(rel)
                    continue
                self.sent[rel] = (st.st_size, st.st_mtime_ns)
            log.info("extract.upload_round", files=len(done), sent=len(self.sent),
                     failed=len(failed), listed_at=round(listed_at, 3))
        self.on_progress(len(done), len(self.sent))

    def _safe(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as e:  # S3 hiccup: the next round (or the final publish) sends it
            log.warning("extract.upload_failed", error=" ".join(str(e).split())[:200])

    def _loop(self) -> None:
        self._safe(self.seed)
        while not self._stop.wait(self.every):
            self._safe(self.tick)

    def start(self) -> "Uploader":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, then send what finished since its last round, also when stopped by
        Ctrl-C or a signal: no second signal cuts that short (``uninterrupted``)."""

        def finish() -> None:
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()
            self._safe(self.tick)

        uninterrupted(finish, "upload")

    def __enter__(self) -> "Uploader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
