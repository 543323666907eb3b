"""Using a trained model (``trainer.checkpoint`` reads it): score clips, and evaluate it on
held-out data, with a row per clip (``evaluate --out FILE`` writes them to
FILE's stem + ``.predictions.csv``).

A checkpoint carries how its clips were prepared (rates, standardisation), its normalisation
statistics and its label list, so clips are prepared exactly as in training. With per-speaker
standardisation, each speaker's statistics come from the clips being evaluated. ``predict``
(``trainer.predict``) prepares a lone clip the same way from its speaker's enrolment.

Example:
    python -m trainer evaluate --checkpoint runs/demo/checkpoints/best.pt --data held-out/
    python -m trainer evaluate --checkpoint best.pt --data held-out/ --out eval.json
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from trainer.batching import collate, eval_batches
from trainer.checkpoint import load_trained
from trainer.data import Clip, check_widths, data_stats, load_dataset
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


def score_rows(model, ready: list[Clip], labels: list[str], settings: dict, batch_size: int = 32,
               modality: str = "both") -> tuple[dict, list[dict]]:
    """Metrics of ``model`` on prepared clips (classification_report), and a prediction row
    per clip (``prediction_rows``); the ``prepare`` settings say how they were standardised."""
    probs = predict_proba(model, ready, batch_size, modality)
    report = classification_report([c.label for c in ready], probs.argmax(1), labels)
    return report, prediction_rows(ready, probs, labels, norm_of(ready, settings))


def evaluate(checkpoint: str | Path, data: str | Path, batch_size: int = 32) -> dict:
    """Metrics of a trained model on every usable clip under ``data``, what was skipped, and
    ``predictions``: one row per clip evaluated (``prediction_rows``)."""
    t = load_trained(checkpoint)
    ds = load_dataset(data)
    s = t.checkpoint["model_settings"]
    check_widths(ds, s["audio_dim"], s["video_dim"])
    report, rows = score_rows(t.model, t.ready(ds.clips), t.labels, t.prepare, batch_size,
                              t.modality)
    report["data"] = dict(data_stats(ds.clips), skipped=ds.skipped,
                          excluded=dict(ds.excluded))
    report["checkpoint"] = str(checkpoint)
    report["predictions"] = rows
    return report


def norm_of(clips: list[Clip], settings: dict) -> list[str]:
    """How each clip is standardised when ``prepare`` prepares ``clips`` together."""
    norm = settings.get("norm", "none")
    if norm != "speaker":
        return [norm] * len(clips)
    n = Counter(c.speaker for c in clips)
    return [f"speaker ({n[c.speaker]} clips)" for c in clips]


def prediction_rows(clips: list[Clip], probs: np.ndarray, labels: list[str],
                    norms: list[str]) -> list[dict]:
    """Per clip: path, speaker, true and predicted label, each class's probability, norm."""
    return [{"path": c.path, "speaker": c.speaker, "label": labels[c.label],
             "predicted": labels[int(p.argmax())],
             **{f"p_{lab}": round(float(x), 6) for lab, x in zip(labels, p)}, "norm": how}
            for c, p, how in zip(clips, probs, norms)]


def predictions_csv(rows: list[dict]) -> str:
    """``prediction_rows`` as CSV text, a header first."""
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def predictions_path(out: str | Path) -> Path:
    """``evaluate --out FILE``'s per-clip CSV: FILE's stem + ``.predictions.csv``, beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".predictions.csv")
