"""Using a trained model: load a checkpoint, score clips, evaluate on held-out data, predict.

A checkpoint carries how its clips were prepared (rates, standardisation), its normalisation
statistics and its label list, so clips are prepared exactly as in training. With per-speaker
standardisation, each speaker's statistics come from the clips being evaluated; ``predict``
groups its clips by the speaker their file names give, and a clip alone (or of no known
speaker) is standardised with its own statistics.

Example:
    python -m trainer evaluate --checkpoint runs/demo/checkpoints/best.pt --data held-out/
    python -m trainer predict --checkpoint runs/demo/checkpoints/best.pt clip1.npz clip2.npz
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.batching import Normalizer, collate, eval_batches
from trainer.data import (Clip, DataError, check_widths, data_stats, load_dataset, parse_name,
                          read_clip)
from trainer.errors import CheckpointError
from trainer.metrics import classification_report
from trainer.model import build_model
from trainer.prepare import prepare


@dataclass
class Trained:
    model: torch.nn.Module
    normalizer: Normalizer
    labels: list[str]
    modality: str
    checkpoint: dict
    prepare: dict  # trainer.prepare settings: audio_rate, video_rate, norm

    def ready(self, clips: list[Clip]) -> list[Clip]:
        """Clips as read from files -> as the model was trained on (one speaker group each)."""
        return [self.normalizer(c) for c in prepare(clips, self.prepare)]


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict, loaded without unpickling arbitrary objects."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None
    need = {"model", "model_name", "model_settings", "normalizer", "labels"}
    if not isinstance(ckpt, dict) or need - set(ckpt):
        raise CheckpointError(f"{path} is not a trainer checkpoint (missing "
                              f"{', '.join(sorted(need - set(ckpt or {})))})")
    return ckpt


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """The checkpoint's weights into ``model``, or one clear line if they do not fit it (a
    checkpoint written by an earlier version of the model code)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines() or [""]  # torch: a heading line, then what does not fit
        what = lines[min(1, len(lines) - 1)].strip()[:200]
        raise CheckpointError(f"checkpoint {path} does not fit this version of the "
                              f"{type(model).__name__}: {what} "
                              "(retrain, or use the trainer version that wrote it)") from None


def load_trained(path: str | Path) -> Trained:
    ckpt = read_checkpoint(path)
    if {"audio_stride", "video_stride"} & set(ckpt["model_settings"]):
        raise CheckpointError(f"checkpoint {path} was written by trainer 0.1, whose hybrid pooled "
                              "frames by --audio-stride/--video-stride; this version pools to "
                              "rates in seconds (--audio-rate/--video-rate): retrain it")
    try:
        model = build_model(ckpt["model_name"], **ckpt["model_settings"])
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} has model settings this version does not "
                              f"know: {e}") from None
    load_weights(model, ckpt["model"], path)
    model.eval()
    modality = ckpt.get("config", {}).get("modality", "both")
    # Checkpoints without "prepare" (the lstm's, from 0.1) read clips as stored, globally scaled.
    settings = ckpt.get("prepare") or {"audio_rate": 0.0, "video_rate": 0.0, "norm": "none"}
    return Trained(model, Normalizer.from_state_dict(ckpt["normalizer"]), list(ckpt["labels"]),
                   modality, ckpt, dict(settings))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, clips: list[Clip], batch_size: int = 32,
                   modality: str = "both") -> torch.Tensor:
    """Logits (N, C) for already normalised clips, in the clips' order; length-sorted batches."""
    model.eval()
    lengths = [c.audio.shape[0] for c in clips]
    batches = eval_batches(lengths, batch_size)
    parts = [model(**collate([clips[i] for i in idx], modality)) for idx in batches]
    out = torch.empty((len(clips), parts[0].shape[1]))
    for idx, logits in zip(batches, parts):
        out[idx] = logits
    return out


def predict_proba(model: torch.nn.Module, clips: list[Clip], batch_size: int = 32,
                  modality: str = "both") -> np.ndarray:
    """Class probabilities (N, C) for already normalised clips, in the clips' order."""
    return torch.softmax(predict_logits(model, clips, batch_size, modality), -1).numpy()


def score(model, clips: list[Clip], labels: list[str], batch_size: int = 32,
          modality: str = "both") -> dict:
    """Metrics of ``model`` on normalised ``clips`` (classification_report)."""
    probs = predict_proba(model, clips, batch_size, modality)
    return classification_report([c.label for c in clips], probs.argmax(1), labels)


def evaluate(checkpoint: str | Path, data: str | Path, batch_size: int = 32) -> dict:
    """Metrics of a trained model on every usable clip under ``data``, and what was skipped."""
    t = load_trained(checkpoint)
    ds = load_dataset(data)
    s = t.checkpoint["model_settings"]
    check_widths(ds, s["audio_dim"], s["video_dim"])
    report = score(t.model, t.ready(ds.clips), t.labels, batch_size, t.modality)
    report["data"] = dict(data_stats(ds.clips), skipped=ds.skipped,
                          excluded=dict(ds.excluded))
    report["checkpoint"] = str(checkpoint)
    return report


# Raw media ``predict`` extracts itself (a CREMA-D .flv brings its .wav: trainer.extract.clips).
MEDIA_SUFFIXES = (".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def extraction_of(t: Trained, what: str):
    """The ``ExtractSettings`` the checkpoint's training data were extracted with.

    Raises:
        CheckpointError: the training data were not made by ``trainer extract``, or with
            settings that need files of their own (OpenFace CSVs, FaceNet weights).
    """
    params = t.checkpoint.get("extract")
    if not params:
        raise CheckpointError(
            f"{what} is raw media, but this checkpoint's training data were not made by "
            "`trainer extract` (their clip files carry no extraction params), so the same "
            "features cannot be made from it: extract it as the training data were extracted "
            "and predict on the .npz")
    from trainer.extract.run import ExtractSettings

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
    return settings


def read_media(path: Path, settings) -> tuple[np.ndarray, ...] | str:
    """(audio, video, audio_t, video_t) extracted from one raw clip, or the reason it cannot."""
    from trainer.errors import MediaError
    from trainer.extract.clips import media_clip
    from trainer.extract.run import extract_clip

    try:
        z = extract_clip(media_clip(path), settings)
    except MediaError as e:
        return str(e)
    return tuple(np.asarray(z[k], dtype=np.float32) for k in (
        "audio_features", "video_features", "audio_timestamps", "video_timestamps"))


def predict(checkpoint: str | Path, inputs: list[str]) -> list[dict]:
    """Per clip: path, predicted label and probabilities, or the reason it could not be read.

    An input may be a clip file (.npz), a folder of them, or a raw media clip (.mp4, or a
    CREMA-D .flv with its .wav), which is extracted with the settings the checkpoint's
    training data were extracted with."""
    t = load_trained(checkpoint)
    s = t.checkpoint["model_settings"]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        files += sorted(p.rglob("*.npz")) if p.is_dir() else [p]
    if not files:
        raise DataError("no clip files given")
    media = [f for f in files if f.suffix.lower() in MEDIA_SUFFIXES]
    settings = extraction_of(t, str(media[0])) if media else None
    results, clips, where = [], [], []
    for f in files:
        if not f.exists():
            got = "file not found"
        elif f.suffix.lower() in MEDIA_SUFFIXES:
            got = read_media(f, settings)
        else:
            got = read_clip(f)
        if not isinstance(got, str) and (got[0].shape[1], got[1].shape[1]) != (
                s["audio_dim"], s["video_dim"]):
            got = f"feature widths {got[0].shape[1]}, {got[1].shape[1]}; the model takes " \
                  f"{s['audio_dim']}, {s['video_dim']}"
        if isinstance(got, str):
            results.append({"path": str(f), "error": got})
            continue
        where.append(len(results))
        results.append({"path": str(f)})
        parsed = parse_name(f.stem)
        speaker = parsed[1] if isinstance(parsed, tuple) else f"clip:{f}"
        clips.append(Clip(str(f), 0, speaker, *got))
    if clips:
        if t.prepare.get("norm") == "speaker":
            # A speaker's statistics from its clips given here; a clip alone (or of no speaker
            # its name tells) is a group of one, standardised with its own statistics.
            n = Counter(c.speaker for c in clips)
            for i, c in zip(where, clips):
                results[i]["norm"] = (f"speaker ({n[c.speaker]} clips)" if n[c.speaker] > 1
                                      else "clip (no other clip of its speaker given)")
        probs = predict_proba(t.model, t.ready(clips), modality=t.modality)
        for i, p in zip(where, probs):
            results[i]["label"] = t.labels[int(p.argmax())]
            results[i]["probabilities"] = {lab: round(float(x), 6) for lab, x in zip(t.labels, p)}
    return results
