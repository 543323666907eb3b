"""Fitting the hybrid's linear head after training (``trainer.linear_head``): the regression
on the training clips, then its weight in the model's output on the validation speakers."""

from __future__ import annotations

import structlog
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.batching import collate, eval_batches
from trainer.data import LABELS, Clip
from trainer.evaluate import predict_logits
from trainer.linear_head import LinearHead
from trainer.metrics import classification_report
from trainer.prepare import STD_FLOOR
from trainer.train_sync import choose_sync_weight

log = structlog.get_logger()

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty on the summed squared weight
MIXES = tuple(i / 10 for i in range(11))  # the head's weight against the rest of the model


def fit_regression(x: torch.Tensor, y: torch.Tensor, l2: float, n_classes: int) -> nn.Linear:
    """Multinomial logistic regression, class-balanced, fitted by full-batch L-BFGS."""
    counts = torch.bincount(y, minlength=n_classes).clamp(min=1).double()
    weight = len(y) / (n_classes * counts)  # inverse frequency: every class weighs the same
    model = nn.Linear(x.shape[1], n_classes).double()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=300, history_size=20,
                            tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, weight=weight) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


@torch.no_grad()
def clip_summaries(head: LinearHead, clips: list[Clip], batch_size: int,
                   modality: str) -> torch.Tensor:
    """``head.features`` of prepared clips, in their order: (N, 3 (F_a + F_v)), float64."""
    out = torch.empty((len(clips), head.mu.numel()), dtype=torch.float64)
    for idx in eval_batches([c.audio.shape[0] for c in clips], batch_size):
        b = collate([clips[i] for i in idx], modality)
        out[idx] = head.features(b["audio"], b["audio_mask"], b["video"],
                                 b["video_mask"]).double()
    return out


def fit_linear_head(model: nn.Module, clips: dict[str, list[Clip]], cfg) -> dict | None:
    """Fit ``model.linear`` (the regression, then its weight ``mix``) on the prepared clips of
    ``clips["train"]`` and ``clips["val"]``; None for a model without one. Call it last, with
    the model's final weights: ``mix`` is chosen against what the rest says on validation."""
    head = getattr(model, "linear", None)
    if head is None:
        return None
    train, val, batch_size, modality = clips["train"], clips["val"], cfg.batch_size, cfg.modality
    head.mix.zero_()
    x = {"train": clip_summaries(head, train, batch_size, modality),
         "val": clip_summaries(head, val, batch_size, modality)}
    mu, sd = x["train"].mean(0), x["train"].std(0, unbiased=False).clamp_min(STD_FLOOR)
    z = {k: (v - mu) / sd for k, v in x.items()}
    y = {k: torch.tensor([c.label for c in v]) for k, v in (("train", train), ("val", val))}
    k = head.weight.shape[0]
    fits = []
    with torch.enable_grad():
        for l2 in L2_GRID:
            reg = fit_regression(z["train"], y["train"], l2, k)
            with torch.no_grad():
                f1 = classification_report(y["val"].tolist(), reg(z["val"]).argmax(1).tolist(),
                                           LABELS[:k])["macro_f1"]
            fits.append((f1, l2, reg))
    f1, l2, reg = max(fits, key=lambda f: (f[0], f[1]))  # a tie: the stronger penalty
    head.mu.copy_(mu.float())
    head.sd.copy_(sd.float())
    head.weight.copy_(reg.weight.float())
    head.bias.copy_(reg.bias.float())
    rest = F.log_softmax(predict_logits(model, val, batch_size, modality).double(), -1)
    with torch.no_grad():
        lin = F.log_softmax(reg(z["val"]), -1)
        losses = {w: float(F.cross_entropy((1 - w) * rest + w * lin, y["val"])) for w in MIXES}
    mix = min(MIXES, key=lambda w: losses[w])  # a tie: the smaller weight
    head.mix.fill_(mix)
    model_f1 = classification_report(y["val"].tolist(), ((1 - mix) * rest + mix * lin).argmax(1)
                                     .tolist(), LABELS[:k])["macro_f1"]
    log.info("linear_head", mix=mix, l2=l2, regression_val_macro_f1=round(f1, 4),
             val_macro_f1=round(model_f1, 4),
             val_log_loss={str(w): round(v, 4) for w, v in losses.items()})
    return {"mix": mix, "l2": l2, "validation_macro_f1": model_f1,  # the model's, mixed
            "regression_validation_macro_f1": f1,
            "validation_log_loss": {str(w): v for w, v in losses.items()}}


def fit_after_training(model: nn.Module, clips: dict[str, list[Clip]], cfg) -> tuple[dict,
                                                                                   dict | None]:
    """What is chosen once the weights are final: the synchrony head's weight in the logits
    (``trainer.train_sync``), then the linear head, which reads what the rest then says."""
    sync = choose_sync_weight(model, clips["val"], cfg) or {"weight": None}
    return sync, fit_linear_head(model, clips, cfg)
