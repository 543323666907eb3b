"""Using a trained model (``trainer.checkpoint`` reads it): score clips, evaluate on held-out
data, predict.

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
from pathlib import Path

import numpy as np
import torch

from trainer.batching import collate, eval_batches
from trainer.checkpoint import Trained, load_trained
from trainer.data import (
    Clip,
    check_widths,
    data_stats,
    load_dataset,
    parse_name,
    read_clip,
)
from trainer.errors import CheckpointError, DataError, MediaError
from trainer.extract.clips import media_clip
from trainer.extract.run import ExtractSettings, extract_clip
from trainer.metrics import classification_report


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
