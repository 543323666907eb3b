"""The hybrid's synchrony head around training (``trainer.synchrony``): its directions and
scale fitted on the training clips before the first step, and its weight in the logits chosen
on the validation speakers after the last.

The weight: the head's own loss trains it to predict alone, and the rest of the model, once it
fits its training clips, is more confident on held-out clips than it is right; summed at
weight 1 it drowned the head's timing evidence (the suite's ``small-cue``, seed 0: timing 0.67
at 1, 0.80 to 0.83 at 3 to 5). Which weight is right depends on how far the rest memorised,
so it is chosen per run on the validation speakers, from a grid that includes 0 (the head off)."""

from __future__ import annotations

import numpy as np
import structlog
import torch

from trainer.batching import collate
from trainer.data import LABELS, Clip
from trainer.evaluate import predict_logits
from trainer.metrics import classification_report

log = structlog.get_logger()

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
BATCH = 64  # clips per forward pass while fitting the scale


def has_sync(model: torch.nn.Module) -> bool:
    return getattr(model, "sync", None) is not None


def within_cov(streams: list[np.ndarray]) -> torch.Tensor:
    """The frames' covariance (D, D) around each clip's own mean, over all clips' frames."""
    total, frames = 0.0, 0
    for x in streams:
        c = torch.from_numpy(x - x.mean(0)).double()
        total, frames = total + c.T @ c, frames + len(x)
    return (total / max(1, frames)).float()


@torch.no_grad()
def fit_sync(model: torch.nn.Module, clips: list[Clip]) -> None:
    """Directions and scale of ``model``'s synchrony head from the (prepared) training clips;
    nothing for a model without one."""
    if not has_sync(model):
        return
    covs = ((within_cov([c.audio for c in clips]), within_cov([c.video for c in clips]))
            if model.sync.pcs else (None, None))  # D x D per clip: only when read
    model.sync.fit(torch.from_numpy(np.stack([c.audio.mean(0) for c in clips])),
                   torch.from_numpy(np.stack([c.video.mean(0) for c in clips])),
                   torch.tensor([c.label for c in clips]), *covs)
    feats = []
    for i in range(0, len(clips), BATCH):
        b = collate(clips[i:i + BATCH])
        feats.append(model.sync(b["audio"], b["audio_mask"], b["audio_t"], b["video"],
                                b["video_mask"], b["video_t"]))
    model.sync.set_scale(torch.cat(feats))


@torch.no_grad()
def choose_sync_weight(model: torch.nn.Module, clips: list[Clip], cfg) -> dict | None:
    """Set the head's weight to the one of ``WEIGHTS`` with the best macro-F1 on ``clips`` (the
    validation speakers, prepared as ``cfg`` says; a tie goes to the weight nearest 1, the one
    it trained at). Returns the weight and the validation macro-F1 of each (the chosen one's is
    the finished model's); None for a model without a head."""
    if not has_sync(model):
        return None
    truth = [c.label for c in clips]
    scores = {}
    for w in WEIGHTS:
        model.sync_weight.fill_(w)
        pred = predict_logits(model, clips, cfg.batch_size, cfg.modality).argmax(1).tolist()
        scores[w] = classification_report(truth, pred, LABELS)["macro_f1"]
    best = max(WEIGHTS, key=lambda w: (scores[w], -abs(w - 1.0)))
    model.sync_weight.fill_(best)
    log.info("sync_weight", chosen=best, val_macro_f1={str(w): round(s, 4)
                                                       for w, s in scores.items()})
    return {"weight": best, "validation_macro_f1": {str(w): s for w, s in scores.items()}}
