"""What ``predict`` and ``enroll`` take: clip files, raw media clips or folders of either, read one
at a time for a checkpoint (raw media extracted as its training data were).

A ``.npz`` is a clip file; every other file is media: a video (``trainer.extract.clips``'
``VIDEO_EXTENSIONS``: ``.wmv`` as ``extract`` takes it), or a file whose reason it cannot be
used is reported. A folder gives its clip files and its media, and every other file in it
except a video's own audio (CREMA-D's ``AudioWAV/NAME.wav``) and companions such as
``extract.json`` or a ``manifest.csv``: nothing in it is passed over silently.

    reader = InputReader(load_trained("runs/demo/checkpoints/best.pt"))
    for f in input_files(["clip.npz", "more-clips/", "clip.mp4"]):
        got = reader.read(f)          # a Clip as stored (not yet prepared), or why not
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainer.checkpoint import Trained
from trainer.data import Clip, parse_name, read_clip
from trainer.errors import CheckpointError, MediaError
from trainer.extract.clips import (
    AUDIO_EXTENSIONS,
    IGNORED_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaClip,
    media_clip,
)
from trainer.extract.run import extract_clip
from trainer.extract.settings import ExtractSettings
from trainer.extract.speech import SPEECH_KINDS

CLIP_SUFFIX = ".npz"  # a clip file; any other file is media


def input_files(inputs: list[str]) -> list[Path]:
    """Each input as given, a folder as its clip files and media (``_walk``), sorted."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        files += sorted(_walk(p)) if p.is_dir() else [p]
    return files


def iter_input_files(inputs: list[str]) -> Iterator[Path]:
    """``input_files``' files one at a time, a folder's in the order the file system lists
    them, so that no list of names grows with the folder (``enroll``)."""
    for item in inputs:
        p = Path(item)
        yield from _walk(p) if p.is_dir() else [p]


def _walk(folder: Path) -> Iterator[Path]:
    """The files of ``folder`` that are inputs: all but hidden ones, companions and a video's
    own audio (see the module's docstring)."""
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                yield from _walk(Path(e.path))
                continue
            path, ext = Path(e.path), Path(e.name).suffix.lower()
            if ext == CLIP_SUFFIX or ext in VIDEO_EXTENSIONS:
                yield path
            elif not (ext in IGNORED_EXTENSIONS or ext in AUDIO_EXTENSIONS and _video_of(path)):
                yield path  # read() says why it cannot be used


def _video_of(audio: Path) -> bool:
    """Whether a video has this audio file's name (beside it, or CREMA-D's
    ``VideoFlash/NAME.flv`` for ``AudioWAV/NAME.wav`` and ``AudioMP3/NAME.mp3``)."""
    beside = (audio.with_suffix(ext) for ext in VIDEO_EXTENSIONS)
    return any(p.is_file() for p in beside) or \
        (audio.parent.parent / "VideoFlash" / f"{audio.stem}.flv").is_file()


def speaker_of(f: Path, given: str | None = None) -> str | None:
    """The speaker ``given`` for every input, else the one a CREMA-D or RAVDESS file name tells
    (None: the name tells none, or it is a RAVDESS emotion outside the label set, which
    training never saw and whose clips no speaker's statistics were taken from)."""
    if given:
        return given
    parsed = parse_name(f.stem)
    return parsed[1] if isinstance(parsed, tuple) else None


def extraction_of(t: Trained, what: str, models: dict | None = None) -> ExtractSettings:
    """The ``ExtractSettings`` the checkpoint's training data were extracted with; a pretrained
    encoder's model from ``models`` (``audio_model``, ``face_model``: predict's flags), else
    where the training data's extraction found it, checked against the weights' hash.

    Raises:
        CheckpointError: the training data were not made by ``trainer extract``, or with
            settings that need files of their own (OpenFace CSVs, FaceNet weights), or an
            encoder's model is missing or not the one the training data were extracted with.
    """
    params = t.checkpoint.get("extract")
    if not params:
        raise CheckpointError(
            f"{what} is raw media, but this checkpoint's training data were not made by "
            "`trainer extract` (their clip files carry no extraction params), so the same "
            "features cannot be made from it: extract it as the training data were extracted "
            "and predict on the .npz")
    settings = ExtractSettings.from_params(params["settings"])
    if settings.video == "openface":
        raise CheckpointError(
            f"{what} is raw media, but this checkpoint was trained on OpenFace CSV features, "
            "which OpenFace itself makes: run its FeatureExtraction on the clip, then "
            "`trainer extract --video openface --openface-csv DIR` and predict on the .npz")
    if settings.video == "facenet":
        raise CheckpointError(
            f"{what} is raw media, but this checkpoint was trained on FaceNet features, whose "
            "weights file predict is not given: extract the clip with `trainer extract --video "
            "facenet --face-weights FILE` and predict on the .npz")
    if settings.audio in SPEECH_KINDS or settings.video == "hsemotion":
        settings = _with_models(settings, params, what, models or {})
    return settings


def _with_models(settings: ExtractSettings, params: dict, what: str,
                 models: dict) -> ExtractSettings:
    """``settings`` with the encoders' model files, which must be the training data's."""
    trained = params["settings"]
    found = {}
    for field, flag, kind, info in (("audio_model", "--audio-model DIR", settings.audio,
                                     "audio"),
                                    ("face_model", "--face-model FILE", settings.video,
                                     "video")):
        if f"{field}_sha256" not in trained:
            continue
        path = models.get(field) or (params.get(info) or {}).get("source")
        name, sha = trained[field], trained[f"{field}_sha256"]
        if not path or not Path(path).exists():
            raise CheckpointError(
                f"{what} is raw media, and this checkpoint was trained on {kind} features of "
                f"the model {name} (weights sha256 {sha[:12]}...), "
                + (f"which is no longer at {path}" if path else "whose files predict is not "
                   "given") + f": give them with {flag}")
        found[field] = str(path)
    got = replace(settings, **found)
    try:
        got.check()
        now = got.params()
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{what}: {' '.join(str(e).split())}") from None
    for field, flag in (("audio_model", "--audio-model"), ("face_model", "--face-model")):
        key = f"{field}_sha256"
        if key in trained and now.get(key) != trained[key]:
            raise CheckpointError(
                f"{flag} {found[field]} has weights sha256 {now.get(key, '?')[:12]}..., but this "
                f"checkpoint was trained on features of {trained[field]} with weights "
                f"{trained[key][:12]}...: give the model its training data were extracted with")
    if now != trained:
        raise CheckpointError(f"{what}: the encoders' settings {now} differ from the training "
                              f"data's {trained}")
    return got


def read_media(clip: MediaClip, settings: ExtractSettings) -> tuple[np.ndarray, ...] | str:
    """(audio, video, audio_t, video_t) extracted from one raw clip, or the reason it cannot."""
    try:
        z = extract_clip(clip, settings)
    except MediaError as e:
        return str(e)
    return tuple(np.asarray(z[k], dtype=np.float32) for k in (
        "audio_features", "video_features", "audio_timestamps", "video_timestamps"))


class InputReader:
    """Reads inputs for checkpoint ``t``: a clip file as stored, a raw clip extracted with the
    training data's settings (looked up at the first raw clip, so a checkpoint without them
    fails only when media are given), each checked against the model's feature widths."""

    def __init__(self, t: Trained, models: dict | None = None):
        self.t, self.models = t, models
        s = t.checkpoint["model_settings"]
        self.widths = (s["audio_dim"], s["video_dim"])
        self.settings: ExtractSettings | None = None

    def read(self, f: Path, speaker: str = "") -> Clip | str:
        """Clip ``f`` (label 0: unknown), or the reason it cannot be used."""
        if not f.exists():
            return "file not found"
        if f.suffix.lower() == CLIP_SUFFIX:
            got = read_clip(f)
        else:
            try:  # a video, or the reason this file is none (audio only, unsupported)
                clip = media_clip(f)
            except MediaError as e:
                return str(e)
            if self.settings is None:
                self.settings = extraction_of(self.t, str(f), self.models)
            got = read_media(clip, self.settings)
        if isinstance(got, str):
            return got
        if (got[0].shape[1], got[1].shape[1]) != self.widths:
            return (f"feature widths {got[0].shape[1]}, {got[1].shape[1]}; the model takes "
                    f"{self.widths[0]}, {self.widths[1]}")
        return Clip(str(f), 0, speaker, *got)
