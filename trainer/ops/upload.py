"""The data set and the raw media in the stack's bucket: what deploy checks about DATA and MEDIA
before anything is built, and their content-addressed uploads (``data/NAME-HASH/``,
``media/NAME-HASH/``, extracted features under ``features/``, the pretrained encoders' model
files under ``models/NAME-HASH/``).

    >>> upload_data(bucket, "demo-data")        # 's3://BUCKET/data/demo-data-0123456789ab/'
    >>> upload_media(bucket, "media/crema")     # 's3://BUCKET/media/crema-.../'
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from pathlib import Path

from trainer.data import DataError
from trainer.data import check_data as check_clips
from trainer.extract.cli import settings_key
from trainer.extract.clips import VIDEO_EXTENSIONS
from trainer.ops import OpsError
from trainer.store.s3 import (
    as_folder,
    client,
    list_objects,
    local_etag,
    parse_s3_uri,
    retry,
    sync_up,
)
from trainer.store.files import listing_digest, walk_files
from trainer.store.uri import is_s3


def check_data(data: str) -> None:
    """What deploy can tell about DATA before it builds or uploads anything: not empty (never
    "the current folder", which would upload the whole checkout, .venv and .ave included), and
    a folder that exists, with a well-formed manifest.csv if it has one, or a well-formed s3://
    prefix (its bucket is checked at the upload)."""

    if not data.strip():
        raise OpsError("DATA is empty (deploy.yaml's data, or --data): give a folder of clip "
                       "files or an s3:// prefix in the stack's bucket, e.g. data: demo-data")
    if is_s3(data):
        try:
            parse_s3_uri(data)
        except ValueError as e:
            raise OpsError(f"DATA: {e}") from None
    elif not Path(data).expanduser().is_dir():
        raise OpsError(f"DATA={data} is not a folder of clip files: make the demo set with "
                       f"`python -m trainer demo-data --out {data}`, or give DATA=path/to/clips")
    else:  # its manifest.csv, if any: a bad row would otherwise fail only on the instance
        try:
            check_clips(Path(data).expanduser())
        except DataError as e:
            raise OpsError(f"DATA={data}: {e}") from None


def check_media(media: str) -> None:
    """What deploy can tell about MEDIA before it builds or uploads anything: a folder that
    exists and holds media files (by their extensions; extract reports the bad ones on the
    instance), or a well-formed s3:// prefix."""

    if is_s3(media):
        try:
            parse_s3_uri(media)
        except ValueError as e:
            raise OpsError(f"MEDIA: {e}") from None
        return
    folder = Path(media).expanduser()
    if not folder.is_dir():
        raise OpsError(f"MEDIA={media} is not a folder of media files (CREMA-D's VideoFlash/ "
                       "and AudioWAV/, RAVDESS's Actor_NN/, or videos)")
    if not any(p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() for p in folder.rglob("*")):
        raise OpsError(f"MEDIA={media} holds no media files (no "
                       f"{', '.join(sorted(VIDEO_EXTENSIONS))} under it)")


def _manifest(folder: Path) -> dict[str, tuple[int, str]]:
    """The files ``sync_up`` sends, as ``{relative path: (size, S3 ETag)}``."""

    return {rel: (path.stat().st_size, local_etag(path))
            for rel, path in walk_files(folder).items()}


def data_prefix(folder: Path, manifest: dict | None = None, kind: str = "data") -> str:
    """``data/NAME-HASH/`` (``KIND/NAME-HASH/``: ``media/`` for raw media): NAME is the
    folder's name, HASH (12 hex digits) is over every file's path, size and MD5 (``_manifest``). Other content is another prefix, so an upload never
    rewrites a data set that a run (going, or resumable later) reads, and two folders with the
    same name but other files never share one."""
    digest = listing_digest(manifest or _manifest(folder))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "data"
    return f"{kind}/{name}-{digest[:12]}/"


def _copy_unchanged(s3, bucket: str, prefix: str, manifest: dict) -> int:
    """Copy, inside S3, each file of ``manifest`` that an earlier upload of the same folder name
    (``data/NAME-*/``, or ``media/NAME-*/``) already holds with the same size and ETag: a
    changed data set sends only what changed. The count copied."""

    family = prefix.rsplit("-", 1)[0] + "-"
    there = list_objects(s3, bucket, prefix)
    earlier: dict[tuple[str, int, str], str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=family):
        for obj in page.get("Contents", []):
            _, sep, rel = obj["Key"][len(family):].partition("/")
            if sep and rel and not obj["Key"].startswith(prefix):
                earlier[(rel, obj["Size"], obj["ETag"].strip('"'))] = obj["Key"]
    copied = 0
    for rel, (size, etag) in manifest.items():
        source = earlier.get((rel, size, etag))
        if source and there.get(rel) != (size, etag):
            s3.copy_object(Bucket=bucket, Key=prefix + rel,
                           CopySource={"Bucket": bucket, "Key": source})
            copied += 1
    return copied


def upload_data(bucket: str, data: str, echo=print) -> str:
    """The data set as an s3:// prefix in the stack's bucket; a local folder goes to its own
    content-addressed ``data/NAME-HASH/`` (``data_prefix``): the same files again send nothing,
    files an earlier upload of the folder holds are copied inside S3, and nothing already in
    the bucket is changed or removed."""

    if is_s3(data):
        other, prefix = parse_s3_uri(data)
        if other != bucket:
            raise OpsError(f"DATA {data} is outside the stack's bucket, which is all the instance "
                           f"may read: give a local folder, or copy it first (aws s3 sync {data} "
                           f"s3://{bucket}/data/NAME/)")
        return f"s3://{bucket}/{as_folder(prefix)}"
    check_data(data)
    return _upload_folder(bucket, Path(data).expanduser(), "data", echo)


def _upload_folder(bucket: str, folder: Path, kind: str, echo=print) -> str:
    manifest = _manifest(folder)
    prefix = data_prefix(folder, manifest, kind)
    copied = _copy_unchanged(client(), bucket, prefix, manifest)
    counts = sync_up(folder, f"s3://{bucket}/{prefix}")
    echo(f"    s3://{bucket}/{prefix}: {counts['uploaded']} uploaded, {copied} copied from an "
         f"earlier upload, {counts['skipped'] - copied} already there")
    return f"s3://{bucket}/{prefix}"


def upload_media(bucket: str, media: str, echo=print) -> str:
    """Raw media as an s3:// prefix in the stack's bucket: a local folder goes to its own
    content-addressed ``media/NAME-HASH/``, as ``upload_data`` does for clip files (the same
    files again send nothing; a changed folder sends only what changed)."""

    if is_s3(media):
        other, prefix = parse_s3_uri(media)
        if other != bucket:
            raise OpsError(f"MEDIA {media} is outside the stack's bucket, which is all the "
                           f"instance may read: give a local folder")
        return f"s3://{bucket}/{as_folder(prefix)}"
    check_media(media)
    return _upload_folder(bucket, Path(media).expanduser(), "media", echo)


def features_uri(bucket: str, media_uri: str, extract_args: str) -> str:
    """Where the run extracts ``media_uri`` to: ``features/NAME-DIGEST-SETTINGS/``, named by
    the media's content (``listing_digest`` of their keys, sizes and ETags) and the extract
    settings (``trainer.extract.cli.settings_key``), so a later run with both the same finds
    the features there and skips extraction, and media changed in place get new features. An
    uploaded folder's ``media/NAME-HASH/`` already ends in that digest and is not named twice.
    """
    media_bucket, prefix = parse_s3_uri(media_uri)
    listing = retry(lambda: list_objects(client(), media_bucket, as_folder(prefix)),
                    f"list {media_uri}")
    if not listing:
        raise OpsError(f"MEDIA {media_uri} holds no objects: give a folder of media files, or "
                       "the s3:// prefix they were uploaded to")
    digest = listing_digest(listing)[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix.strip("/").split("/")[-1]).strip("-.")
    name = name if name.endswith(f"-{digest}") else f"{name or 'media'}-{digest}"
    return f"s3://{bucket}/features/{name}-{settings_key(extract_args)}/"


MODEL_FLAGS = ("--audio-model", "--face-model")  # extract flags naming a model's files


def upload_model(bucket: str, path: str, echo=print) -> str:
    """A local model as an s3:// URI in the stack's bucket: a folder (a speech encoder) under its
    own content-addressed ``models/NAME-HASH/``, a file (an ONNX face model) as
    ``models/STEM-HASH/FILE``; the same files again send nothing. An s3:// one is kept, if in
    the bucket."""
    if is_s3(path):
        other, _ = parse_s3_uri(path)
        if other != bucket:
            raise OpsError(f"model {path} is outside the stack's bucket, which is all the "
                           "instance may read: give a local folder or file")
        return path
    local = Path(path).expanduser()
    if local.is_dir():
        return _upload_folder(bucket, local, "models", echo)
    if not local.is_file():
        raise OpsError(f"model {path}: no such folder or file")
    with tempfile.TemporaryDirectory(prefix="ave-model-") as tmp:  # the file alone, named as is
        folder = Path(tmp) / local.stem
        folder.mkdir()
        shutil.copy2(local, folder / local.name)
        return _upload_folder(bucket, folder, "models", echo) + local.name


def upload_models(bucket: str, extract_args: str, echo=print) -> str:
    """``extract_args`` with each local ``--audio-model`` / ``--face-model`` uploaded
    (``upload_model``) and replaced by its s3:// URI, which the instance reads (its role reads
    the bucket; the image carries no weights)."""
    argv = shlex.split(extract_args or "")
    hub = "--allow-download" in argv  # a hub id then goes as is: the instance downloads it

    def up(value: str) -> str:
        if hub and not Path(value).expanduser().exists() and value.count("/") == 1:
            return value
        return upload_model(bucket, value, echo)

    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in MODEL_FLAGS:
            continue
        if eq:
            argv[i] = f"{flag}={up(value)}"
        elif i + 1 < len(argv):
            argv[i + 1] = up(argv[i + 1])
    return shlex.join(argv)
