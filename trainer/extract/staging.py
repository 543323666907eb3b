"""Where an extraction run reads and writes: local folders, or ``s3://`` prefixes staged in a
local cache (only what changed is synced down; the run syncs its output up at the end).

    media = local_media("s3://bucket/media/crema/", Path("~/.cache/av-emotion"), stage)
    out = local_out("s3://bucket/data/crema/", Path("~/.cache/av-emotion"), stage)

``stage`` is the run's per-stage seconds: the time spent syncing down is added to its
``s3_down``. The output's staging folder holds what an earlier run uploaded, so that resume
counts those clips as done.
"""

from __future__ import annotations

import time
from pathlib import Path


def local_media(media: str, cache: Path, stage: dict) -> Path:
    """The media folder; an ``s3://`` prefix is synced down into the cache (only changes)."""
    if not media.startswith("s3://"):
        if not Path(media).is_dir():
            raise FileNotFoundError(f"no media folder {media}")
        return Path(media)
    from trainer.s3 import sync_down

    t0 = time.perf_counter()
    local = sync_down(media, cache / "media")
    stage["s3_down"] += time.perf_counter() - t0
    return local


def local_out(out: str, cache: Path, stage: dict) -> Path:
    """The output folder; for an ``s3://`` prefix, a staging folder in the cache holding what
    an earlier run uploaded (so that resume counts it as done)."""
    if not out.startswith("s3://"):
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)
    from trainer.s3 import parse_s3_uri, sync_down

    t0 = time.perf_counter()
    bucket, prefix = parse_s3_uri(out)
    local = cache / "out" / bucket / prefix
    if _s3_has_objects(out):
        local = sync_down(out, cache / "out")
    local.mkdir(parents=True, exist_ok=True)
    stage["s3_down"] += time.perf_counter() - t0
    return local


def _s3_has_objects(uri: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    from trainer.s3 import _explain, _folder, client, parse_s3_uri, retry

    bucket, prefix = parse_s3_uri(uri)
    s3 = client()
    try:
        got = retry(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=_folder(prefix), MaxKeys=1),
                    f"list {uri}")
    except (BotoCoreError, ClientError) as e:
        raise _explain(e, uri) from None
    return got.get("KeyCount", 0) > 0
