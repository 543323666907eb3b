"""Where an extraction run reads and writes: local folders, or ``s3://`` prefixes staged in a
local cache (only what changed is synced down; finished clip files go up every
``UPLOAD_SECONDS`` while the run goes, through ``Uploader``, so that an interrupted run on a spot
instance loses at most the clips of the last interval; the rest is synced up at the end).

    media = local_media("s3://bucket/media/crema/", Path("~/.cache/av-emotion"), stage)
    out = local_out("s3://bucket/data/crema/", Path("~/.cache/av-emotion"), stage)

``stage`` is the run's per-stage seconds: the time spent syncing down is added to its
``s3_down``. The output's staging folder holds what an earlier run uploaded, so that resume
counts those clips as done.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog

from trainer.store.uri import is_s3

log = structlog.get_logger()

UPLOAD_SECONDS = 45.0  # finished clip files go up at least this often while extracting


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


class Uploader:
    """Sends finished clip files (``*.npz``: written whole, by a rename) from ``local`` to the
    ``uri`` prefix every ``every`` seconds in a thread, and once more when it stops; calls
    ``on_progress(clip files here, clip files sent)`` after each round. An empty ``uri`` only
    counts. A failed round is logged and retried by the next (the final sync_up sends it too).

    Example:
        >>> with Uploader(Path("~/.cache/av-emotion/out/b/data/crema"), "s3://b/data/crema/"):
        ...     pass  # extract into that folder
    """

    def __init__(self, local: Path, uri: str = "", every: float | None = None,
                 on_progress=None):
        from trainer.store.s3 import as_folder, parse_s3_uri  # boto3: only for s3://

        self.local, self.uri, self.every = local, uri, every or UPLOAD_SECONDS
        self.on_progress = on_progress or (lambda done, sent: None)
        self.bucket, prefix = parse_s3_uri(uri) if uri else ("", "")
        self.prefix = as_folder(prefix) if uri else ""
        self.sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) uploaded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="extract-upload", daemon=True)

    def tick(self) -> None:
        """Upload the clip files not sent yet (or changed since); report the counts."""
        from trainer.store.s3 import TRANSFER, client, retry  # boto3: only for s3://

        done = {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*.npz")}
        if self.uri:
            s3 = client()
            for rel, path in sorted(done.items()):
                st = path.stat()
                if self.sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    retry(lambda: s3.upload_file(str(path), self.bucket, self.prefix + rel,
                                                 Config=TRANSFER), f"put {rel}")
                    self.sent[rel] = (st.st_size, st.st_mtime_ns)
        self.on_progress(len(done), len(self.sent))

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception as e:  # S3 hiccup: the next round (or the final sync) sends it
            log.warning("extract.upload_failed", error=" ".join(str(e).split())[:200])

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._safe_tick()

    def start(self) -> "Uploader":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread, then send what finished since its last round (also on Ctrl-C)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._safe_tick()

    def __enter__(self) -> "Uploader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
