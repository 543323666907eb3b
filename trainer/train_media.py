"""``train --media``: extract the run's raw media into its ``--data`` first, then train on it.

    python -m trainer train --media media/crema --data data/crema --out runs/r1
    python -m trainer train --media s3://B/media/crema-1a2b3c4d5e6f/ \\
        --data s3://B/features/crema-1a2b3c4d5e6f-0a1b2c3d4e5f/ --out s3://B/runs/r1/ \\
        --extract-args "--video opencv"
    make deploy MEDIA=media/crema       # deploy passes the three URIs above (trainer/ops/flow.py)

Why a train flag, and not a separate job before the run: the run on the instance is one
container, resumed by bootstrap.sh after a spot interruption with the same arguments; with the
extraction inside ``train`` a resumed run continues the extraction where it stopped (``extract``
skips clips already in ``--data`` with the same settings) and then trains, with no second kind
of job to schedule, watch or resume. The features go to ``--data``: deploy names it
``features/MEDIA-DIGEST-SETTINGS/`` by the media's content and the extract settings, so a later
run with the same media and settings finds ``extract.json`` there and skips extraction
entirely. That record is trusted only when its settings and its media fingerprint (the
media's keys, sizes and ETags) are those of this run, and every clip file it lists is there;
media changed in place are refused in one line, missing clip files extracted again.

While it extracts, finished clip files are uploaded every 45 s (``AVE_UPLOAD_SECONDS``;
trainer.extract.staging.Uploader), so a spot interruption loses at most the clips of the last
interval, and ``extract.json`` goes up last, once every clip file is there;
``status.json`` says ``extracting`` with the clips done.
"""

from __future__ import annotations

import signal
from pathlib import Path

import structlog

from trainer.errors import EXIT_STOPPED, DataError, Stopped
from trainer.extract.cli import parse_extract_args
from trainer.extract.clips import VIDEO_EXTENSIONS
from trainer.extract.encoders import resolve
from trainer.extract.places import check_folder
from trainer.extract.run import REPORT, extract
from trainer.extract.settings import ExtractSettings
from trainer.extract.staging import (
    Uploader,
    media_fingerprint,
    missing_files,
    publish,
    uninterrupted,
)
from trainer.store.uri import cache_dir as default_cache
from trainer.store.uri import has, is_s3, join, read_json

log = structlog.get_logger()


def _read_report(data: str) -> dict | None:
    """``DATA/extract.json`` (written only when an extraction ends), or None."""
    uri = join(data, REPORT)
    try:
        return read_json(uri) if has(uri) else None
    except ValueError:
        return None


def _media_files(media: str) -> int:
    """How many video files the media hold (the progress line's total; an estimate, since a
    bad file is reported rather than extracted)."""
    if not is_s3(media):
        return sum(1 for p in Path(media).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    from trainer.store.s3 import as_folder, client, list_objects, parse_s3_uri  # boto3

    bucket, prefix = parse_s3_uri(media)
    return sum(1 for rel in list_objects(client(), bucket, as_folder(prefix))
               if Path(rel).suffix.lower() in VIDEO_EXTENSIONS)


def extract_media(media: str, data: str, extract_args: str, cache_dir: str = "",
                  status=None, every: float | None = None) -> dict | None:
    """Extract ``media`` into ``data`` unless ``data`` already holds that extraction; the
    extract report, or None when it was reused. ``status(**fields)`` gets the progress.

    An ``s3://`` data prefix is staged where ``train``'s own sync of ``--data`` puts it
    (``CACHE/BUCKET/PREFIX/``): clips already in S3 come down first (resume), new ones go up as
    they finish, and training then finds them all in place.

    Raises:
        DataError: nothing could be extracted (the first reason); ValueError: bad extract args.
    """
    settings, workers = parse_extract_args(extract_args)
    cache = default_cache(cache_dir)
    if is_s3(media) or is_s3(data):
        check_folder(cache, "--cache-dir")
    settings = resolve(settings, cache)  # an s3:// model synced down: params hash its weights
    report = _read_report(data)
    if (report is not None and report.get("settings") == settings.params()
            and report.get("min_face_frames") == settings.min_face_frames
            and report.get("max_seconds", ExtractSettings.max_seconds) == settings.max_seconds):
        if report.get("media_fingerprint") != media_fingerprint(media):
            raise DataError(f"--data {data} holds features of other media than --media {media} "
                            "now holds (changed since, or not recorded): extract into a new "
                            "--data (make deploy names it by the media's content)")
        missing = missing_files(data, report)
        if not missing:
            log.info("extract.reused", data=data, written=len(report.get("written", [])) +
                     len(report.get("already_done", [])))
            return None
        log.warning("extract.record_incomplete", data=data, missing=len(missing),
                    first=missing[0], then="extracting the missing clips")
    total = _media_files(media)
    say = status or (lambda **kw: None)
    say(state="extracting", extract={"clips_done": 0, "media_files": total, "uploaded": 0})

    def progress(done: int, uploaded: int) -> None:
        say(state="extracting", extract={"clips_done": done, "media_files": total,
                                         "uploaded": uploaded})
        log.info("extract.progress", clips_done=done, media_files=total, uploaded=uploaded)

    if is_s3(data):
        from trainer.store.s3 import S3Error, parse_s3_uri, sync_down  # boto3

        bucket, prefix = parse_s3_uri(data)
        local = cache / bucket / prefix
        try:
            local = sync_down(data, cache)  # what an interrupted extraction already sent
        except S3Error as e:
            if "no objects under" not in str(e):
                raise
        local.mkdir(parents=True, exist_ok=True)
    else:
        local = Path(data)
    with Uploader(local, data if is_s3(data) else "", every, progress):
        # isolate: a clip killed for memory takes only itself, not this training run
        report = extract(media, local, settings, workers, cache_dir=cache, isolate=True)
    if is_s3(data):  # manifest.csv and the rest, then the report once they are all there
        uninterrupted(lambda: publish(local, data, REPORT), "publish")
    c = report["counts"]
    if c["written"] + c["already_done"] == 0:
        top = report["skipped"][0]["reason"] if report["skipped"] else "no clips"
        raise DataError(f"--media {media}: no clip extracted ({top}; see {data}/extract.json)")
    return report


def extract_in_run(cfg, status, on_signal, stop_signal) -> None:
    """``train --media``'s extraction, with status ``extracting``. A stop signal ends it at once
    (``on_signal`` records it, then KeyboardInterrupt: ``extract`` keeps every clip file whole,
    and those finished are sent up); ``Stopped`` then ends the run, and the same command
    continues the extraction. A second signal is only logged: it never cuts the final upload
    short (only SIGKILL does). ``stop_signal()`` is the signal that stopped it."""

    stopping = []

    def stop_now(signum, frame):
        if stopping:  # a second signal (a spot stop sends two): the clip files go up first
            log.warning("stop_already_requested", signal=signal.Signals(signum).name,
                        message="the finished clip files are uploaded first")
            return
        stopping.append(signum)
        on_signal(signum, frame)
        raise KeyboardInterrupt

    old = {s: signal.signal(s, stop_now) for s in EXIT_STOPPED}
    try:
        extract_media(cfg.media, cfg.data, cfg.extract_args, cfg.cache_dir, status=status)
    except KeyboardInterrupt:
        raise Stopped(EXIT_STOPPED.get(signal.Signals(stop_signal() or signal.SIGINT), 1),
                      "clip files extracted so far are kept; the same command (no "
                      "--resume: no checkpoint yet) continues the extraction") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
