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
``features/MEDIA-SETTINGS/`` by the media's content and the extract settings, so a later run
with the same media and settings finds ``extract.json`` there and skips extraction entirely.

While it extracts, finished clip files are uploaded every ``UPLOAD_SECONDS``
(trainer.extract.staging.Uploader), so a spot interruption loses at most the clips of the last
interval; ``status.json`` says ``extracting`` with the clips done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
from pathlib import Path

import structlog

from trainer.errors import DataError
from trainer.extract.staging import Uploader

log = structlog.get_logger()

# Extract flags that name a place on this machine: a deployed run could not read them.
LOCAL_FLAGS = ("--media", "--out", "--cache-dir", "--manifest", "--openface-csv",
               "--face-weights")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(f"extract args: {message}")


def parse_extract_args(text: str):
    """``--extract-args`` text to (ExtractSettings, workers); one-line ``ValueError`` if bad.

    The same flags and checks as ``python -m trainer extract``, minus the ones that name local
    paths (``LOCAL_FLAGS``): the media and the output are ``--media`` and ``--data``.

    Example:
        >>> parse_extract_args("--video opencv --workers 2")[0].video
        'opencv'
    """
    from trainer.extract.cli import add_extract_command
    from trainer.extract.run import ExtractSettings

    try:
        argv = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"extract args {text!r} cannot be split into flags: {e}") from None
    local = [a for a in argv if a.split("=", 1)[0] in LOCAL_FLAGS]
    if local:
        raise ValueError(f"extract args: {local[0].split('=', 1)[0]} is not allowed here (the "
                         "media are --media, the clip files go to --data)")
    parser = _Parser(prog="extract args", add_help=False)
    add_extract_command(parser.add_subparsers(dest="verb"), {})
    args = parser.parse_args(["extract", "--media", "-", "--out", "-", *argv])
    if args.workers < 0:
        raise ValueError("extract args: --workers must be 0 (all cores) or more")
    s = ExtractSettings(audio=args.audio, video=args.video, video_rate=args.video_rate,
                        n_mels=args.n_mels, min_face_frames=args.min_face_frames)
    try:
        s.check()
    except ValueError as e:
        raise ValueError(f"extract args: {e}") from None
    return s, args.workers


def settings_key(text: str) -> str:
    """12 hex digits naming what the extract args make: the features' params and which clips
    are kept (``min_face_frames``); other args (``--workers``) give the same key."""
    s, _ = parse_extract_args(text)
    doc = json.dumps({"params": s.params(), "min_face_frames": s.min_face_frames},
                     sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def _read_report(data: str) -> dict | None:
    """``DATA/extract.json`` (written only when an extraction ends), or None."""
    if not data.startswith("s3://"):
        path = Path(data) / "extract.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except ValueError:
            return None
    from botocore.exceptions import ClientError

    from trainer.s3 import _folder, client, parse_s3_uri, retry

    bucket, prefix = parse_s3_uri(data)
    try:
        body = retry(lambda: client().get_object(Bucket=bucket,
                                                 Key=_folder(prefix) + "extract.json"),
                     "get extract.json")["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    try:
        return json.loads(body)
    except ValueError:
        return None


def _media_files(media: str) -> int:
    """How many video files the media hold (the progress line's total; an estimate, since a
    bad file is reported rather than extracted)."""
    from trainer.extract.clips import VIDEO_EXTENSIONS

    if not media.startswith("s3://"):
        return sum(1 for p in Path(media).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    from trainer.s3 import _folder, _list, client, parse_s3_uri

    bucket, prefix = parse_s3_uri(media)
    return sum(1 for rel in _list(client(), bucket, _folder(prefix))
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
    from trainer.extract.run import extract

    settings, workers = parse_extract_args(extract_args)
    report = _read_report(data)
    if (report is not None and report.get("media") == media
            and report.get("settings") == settings.params()
            and report.get("min_face_frames") == settings.min_face_frames):
        log.info("extract.reused", data=data, written=len(report.get("written", [])) +
                 len(report.get("already_done", [])))
        return None
    cache = Path(cache_dir or Path.home() / ".cache" / "av-emotion").expanduser()
    total = _media_files(media)
    say = status or (lambda **kw: None)
    say(state="extracting", extract={"clips_done": 0, "media_files": total, "uploaded": 0})

    def progress(done: int, uploaded: int) -> None:
        say(state="extracting", extract={"clips_done": done, "media_files": total,
                                         "uploaded": uploaded})
        log.info("extract.progress", clips_done=done, media_files=total, uploaded=uploaded)

    if data.startswith("s3://"):
        from trainer.s3 import S3Error, parse_s3_uri, sync_down

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
    with Uploader(local, data if data.startswith("s3://") else "", every, progress):
        report = extract(media, local, settings, workers, cache_dir=cache)
    if data.startswith("s3://"):  # the report and manifest.csv, after every clip file
        from trainer.s3 import sync_up

        sync_up(local, data)
    c = report["counts"]
    if c["written"] + c["already_done"] == 0:
        top = report["skipped"][0]["reason"] if report["skipped"] else "no clips"
        raise DataError(f"--media {media}: no clip extracted ({top}; see {data}/extract.json)")
    return report
