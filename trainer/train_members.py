"""``train --ensemble N``: N whole training runs on the run's split, read as one model
(``trainer.ensemble``: the mean of their probabilities).

    python -m trainer train --data demo-data --out runs/ens --ensemble 3
    # runs/ens/members/0, 1, 2: each a whole run directory (seeds 0, 1, 2), with its own
    # checkpoints, log, metrics and summary; runs/ens/checkpoints/best.pt: the ensemble

Member k is the run one would start with ``--seed SEED+k`` on the ensemble's split: the same
initial weights, batch orders and augmentation draws, so member 0 is the run without
``--ensemble``, to the digit. Each keeps every choice one run makes for itself: its best epoch
(early stopping), its learning-rate schedule, its synchrony head's directions and its weight
in the logits. Why whole runs, and not members side by side in one loop: that loop shared
early stopping and the head's weight, and on the robustness suite the shared choices lost
what the averaging won (a head weight chosen for all three members took each to 0.65 on the
faint raw media; docs/training.md). Whole runs also keep training's memory at one model's.

The ensemble's own ``checkpoints/last.pt`` is written before the first member starts, so a
run begun is resumed with ``--resume`` like any other (by ``cv``, the suite, the instance's
bootstrap). A fault loses no more than one member's epoch: a resumed ensemble re-reads the
members that finished (their end runs again from their checkpoints, in seconds), resumes the
one that was stopped from its ``last.pt``, and starts the rest.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import structlog

from trainer import logs
from trainer.config import TrainConfig
from trainer.ensemble import members
from trainer.errors import EXIT_STOPPED, Stopped
from trainer.store.uri import has, join

log = structlog.get_logger()

FOLDER = "members"  # member k's run directory: OUT/members/k


def member_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """Member k's run: one model, seed ``cfg.seed + k``, in ``OUT/members/k``, reading the
    features the ensemble's run reads (extracted already, if it came from ``--media``);
    resumed if it has a checkpoint."""
    out = join(cfg.out, f"{FOLDER}/{k}")
    return replace(cfg, ensemble=1, seed=cfg.seed + k, out=out, media="", extract_args="",
                   resume=has(join(out, "checkpoints/last.pt")))


def fit_members(training, make_run: Callable) -> list[dict]:
    """Train (or resume, or re-read) each member of ``training``'s ensemble as a whole run,
    ``make_run(member_config, split).run()`` (``split``: clip paths per split, the
    ensemble's), its status updates relayed to the ensemble's, and load each one's best
    weights, its head's weight with them, into the ensemble (what the run's model holds at
    its end, as its ``best.pt`` does). Returns per member what its summary says of it."""
    cfg, run = training.cfg, training.run_dir
    split = {k: [training.dataset.clips[i].path for i in v] for k, v in training.split.items()}
    out = []
    for k, model in enumerate(members(training.model)):
        mcfg = member_config(cfg, k)
        training.status.update(state="training", member=k + 1, members=cfg.ensemble, epoch=0,
                               best=None, best_epoch=None)
        log.info("member", member=k, of=cfg.ensemble, seed=mcfg.seed, out=mcfg.out,
                 resumed=mcfg.resume)
        member = make_run(mcfg, split)
        member.relay = relay(training, k, [m["train_seconds"] for m in out])
        try:
            summary = member.run()
        finally:
            logs.setup(run.path("train.log"))  # the member's run had the log: back to ours
        model.load_state_dict(member.model.state_dict())
        out.append({"seed": mcfg.seed, "out": mcfg.out, "best_epoch":
                    summary["validation"]["best_epoch"], "epochs": summary["epochs"],
                    "sync_weight": summary["sync_weight"], "validation_macro_f1":
                    summary["validation"]["best_macro_f1"],
                    "test_macro_f1": summary["test"]["macro_f1"],
                    "train_seconds": summary["timings"]["train_seconds"]})
        log.info("member_done", member=k, **{key: v for key, v in out[-1].items()
                                              if key not in ("out", "seed")})
        if training.stop_signal is not None:  # a stop between two members: the next resumes
            raise Stopped(EXIT_STOPPED.get(training.stop_signal, 1))
    return out


RELAYED = ("epoch", "best", "best_epoch", "eta_seconds", "eta_early_stop_seconds")


def relay(training, k: int, done: list[float]) -> Callable[[dict], None]:
    """What member k's status updates tell the ensemble's ``status.json``: the member, its
    epoch and best, and the time to go, the later members' included (each as long as the
    finished ones were on average, ``done``; else as this one will be)."""
    start, later = time.monotonic(), training.cfg.ensemble - k - 1

    def tell(kw: dict) -> None:
        shown = {key: kw[key] for key in RELAYED if key in kw}
        if not shown:
            return
        for key in ("eta_seconds", "eta_early_stop_seconds"):
            if shown.get(key) is not None and later:
                each = (sum(done) / len(done) if done
                        else time.monotonic() - start + shown[key])
                shown[key] = round(shown[key] + later * each, 1)
        training.status.update(member=k + 1, members=training.cfg.ensemble, **shown)
    return tell
