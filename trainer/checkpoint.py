"""Reading a checkpoint and rebuilding its model: a dict of state (DESIGN.md section 4), loaded
with ``weights_only=True`` (no pickled module), checked, and turned into a model in eval mode
with the preparation and normalisation its clips need.

Example:
    >>> t = load_trained("runs/demo/checkpoints/best.pt")
    >>> t.labels
    ['ANG', 'DIS', 'FEA', 'HAP', 'NEU', 'SAD']
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch

from trainer.batching import Normalizer
from trainer.data import Clip
from trainer.errors import CheckpointError
from trainer.model import build_model
from trainer.prepare import prepare
from trainer.store.rundir import RunDir

log = structlog.get_logger()


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
    if ckpt.get("sync_weight") is not None:  # chosen after training (trainer.train_sync)
        model.sync_weight.fill_(ckpt["sync_weight"])
    if ckpt.get("linear_head") is not None:  # fitted after training (trainer.train_linear)
        model.linear.load_state_dict(ckpt["linear_head"])
    model.eval()
    modality = ckpt.get("config", {}).get("modality", "both")
    # Checkpoints without "prepare" (the lstm's, from 0.1) read clips as stored, globally scaled.
    settings = ckpt.get("prepare") or {"audio_rate": 0.0, "video_rate": 0.0, "norm": "none"}
    return Trained(model, Normalizer.from_state_dict(ckpt["normalizer"]), list(ckpt["labels"]),
                   modality, ckpt, dict(settings))


class CheckpointPair:
    """A run's ``checkpoints/last.pt`` and ``best.pt``: written in the order a kill between the
    two can be repaired from, and read back on resume.

    Args:
        run: the run directory.
    """

    def __init__(self, run: RunDir):
        self.run = run
        self.depth = 0  # > 0 while a checkpoint is written or the run's uploads are awaited

    @property
    def busy(self) -> bool:
        return self.depth > 0

    @contextlib.contextmanager
    def saving(self):
        """Marks a save (or the upload that ends it) in progress: ``busy`` while inside."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def write(self, name: str, state: dict) -> None:
        with self.saving():  # a second Ctrl-C waits until the file is whole
            self.run.save_torch(name, state)

    def save(self, state: dict, best: bool = False) -> None:
        # last.pt first, then best.pt: a kill between the two leaves last.pt naming a best
        # epoch that best.pt does not hold yet, but only at the end of that improving epoch,
        # when last.pt holds those same weights, so resume can repair best.pt from it
        # (``best_weights``). The other order could not: a kill would leave best.pt ahead of
        # last.pt, having overwritten the weights last.pt calls best. The S3 mirror keeps the
        # order too (its queue is first written, first sent).
        self.write("checkpoints/last.pt", state)
        if best:
            self.write("checkpoints/best.pt", state)

    def amend(self, **extra) -> None:
        """Add ``extra`` to both checkpoints of a finished run, in the order ``save`` keeps
        (one rewrite of each, however many keys; none for no key)."""
        for name in ("checkpoints/last.pt", "checkpoints/best.pt") if extra else ():
            if self.run.exists(name):
                self.write(name, dict(read_checkpoint(self.run.path(name)), **extra))

    def best_weights(self, last: dict) -> dict | None:
        """The best weights, from best.pt, checked against what last.pt says they are.

        last.pt is written before best.pt (``save``), so a kill between the two
        leaves a best.pt one improvement behind (or none), while last.pt, written at the end of
        that very epoch, holds the new best weights themselves: rewrite best.pt from it.
        """
        best = (read_checkpoint(self.run.path("checkpoints/best.pt"))
                if self.run.exists("checkpoints/best.pt") else None)
        if last["best_epoch"] == 0 or (best is not None
                                       and best["epoch"] == last["best_epoch"]):
            return best["model"] if best is not None else None
        if last["epoch"] == last["best_epoch"] and last["step"] == 0:
            log.warning("best_checkpoint_repaired", best_epoch=last["best_epoch"],
                        found_epoch=best["epoch"] if best is not None else None,
                        message="best.pt was one write behind last.pt (a kill between the two)")
            self.write("checkpoints/best.pt", last)
            return last["model"]
        raise CheckpointError(
            f"--resume: {self.run}/checkpoints/best.pt holds epoch "
            f"{best['epoch'] if best is not None else 'none'}, but last.pt says the best is epoch "
            f"{last['best_epoch']}; the pair cannot be repaired")
