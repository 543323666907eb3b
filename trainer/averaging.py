"""An exponential moving average of a model's weights (``--ema DECAY``; Polyak and Juditsky
1992, as in Tarvainen and Valpola 2017's mean teacher): after each optimiser step,

    avg = DECAY * avg + (1 - DECAY) * weights

from the weights after the first step. Validation, ``best.pt`` and the test read the average;
training continues on the weights themselves. A model that is memorising its training clips
moves a little along every batch's noise at each step: the average keeps what the steps agree
on. The robustness suite (docs/training.md) measured it at 0.99, about 3 epochs of ~850 clips.

    ema = WeightAverage(model, 0.99)    # 0: off (every call below then leaves the model be)
    ... opt.step(); ema.update()
    with ema.applied():       # the model holds the average inside, its weights again after
        validate(model)
    state = ema.state_dict()  # the model's state dict with the averaged parameters
"""

from __future__ import annotations

import contextlib

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from trainer.checkpoint import load_weights


class WeightAverage:
    """The moving average of ``model``'s parameters (its buffers are the model's own); with
    ``decay`` 0, none: the model's own weights are the ones judged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), not {decay}")
        self.model, self.decay = model, decay
        self.names = [name for name, _ in model.named_parameters()]
        self.avg: list[torch.Tensor] | None = None  # None until the first step
        self._lerp = get_ema_multi_avg_fn(decay)

    @property
    def on(self) -> bool:
        return self.decay > 0

    def params(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.model.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights in (after an optimiser step)."""
        if not self.on:
            return
        if self.avg is None:
            self.avg = [p.clone() for p in self.params()]
        else:
            self._lerp(self.avg, self.params(), None)

    @torch.no_grad()
    def _swap(self) -> None:
        for p, a in zip(self.params(), self.avg or []):
            held = p.clone()
            p.copy_(a)
            a.copy_(held)

    @contextlib.contextmanager
    def applied(self):
        """The model holds the average inside the block (its own weights before any step)."""
        self._swap()
        try:
            yield self.model
        finally:
            self._swap()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a run is judged by, a copy of the model's state dict with the averaged
        parameters in place of its own (its own while there is no average: off, or no step)."""
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        for name, a in zip(self.names, self.avg or []):
            state[name] = a.clone()
        return state

    @torch.no_grad()
    def load(self, averaged: dict[str, torch.Tensor] | None) -> None:
        """Back from ``state_dict``'s output (a resumed run); None: no step taken yet."""
        self.avg = None if averaged is None else [averaged[n].clone() for n in self.names]


def checkpoint_weights(ema: WeightAverage) -> dict:
    """A checkpoint's weights: ``model`` is what evaluate, predict and export read (with
    --ema, the average); ``train_weights`` what a resumed run trains on from there."""
    if not ema.on:
        return {"model": ema.model.state_dict()}
    return {"model": ema.state_dict(), "train_weights": ema.model.state_dict(),
            "averaged": ema.avg is not None}


def restore_weights(ema: WeightAverage, ckpt: dict, path) -> None:
    """``checkpoint_weights``' inverse, for ``--resume``: into ``ema.model`` and ``ema``."""
    load_weights(ema.model, ckpt.get("train_weights", ckpt["model"]), path)
    if ema.on:
        ema.load(ckpt["model"] if ckpt.get("averaged") else None)
