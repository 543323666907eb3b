"""What writing TensorBoard events costs a training epoch (issue 19: at most 1 % of epoch time).

    >>> tracking_cost("quick")["tracking_overhead"]     # e.g. 0.0004
    >>> python -m trainer.bench.tracking_cost --preset quick

The same epochs of the benchmark's workload (the hybrid on CREMA-D-shaped clips, train.py's data
path and step), in pairs: one epoch alone, one followed by what train.py does with the writer at
an epoch's end (``Tracker.epochs``: the epoch's scalars, a flush to disk, the event file queued
for the run directory's mirror), the order alternating from pair to pair. The writer's cost is
the time of that call (the writer has no thread working outside it: it writes only on flush),
over the epoch's; the paired difference of whole epochs, with and without, is reported beside it
as a check, though an epoch's own spread is larger than the writer's cost. Opening the writer
(importing tensorboard, creating the file) happens once per run, before the first epoch's events;
it is timed on its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from trainer.batching import bucket_batches
from trainer.bench.verdict import spread
from trainer.bench.workload import (
    PRESETS,
    build,
    loader,
    pooled,
    training_step,
    workload,
)
from trainer.config import TrainConfig
from trainer.store.rundir import RunDir
from trainer.tracking import Tracker

PAIRS = {"full": 4, "quick": 2, "smoke": 1}  # quick: CI's bench budget is about a minute
TARGET = 0.01


def tracking_cost(preset: str = "quick", seed: int = 0, threads: int = 0) -> dict:
    """``{"tracking": figures, "tracking_overhead": the writer's median share of an epoch}``."""
    p, old_threads = PRESETS[preset], torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    cfg = TrainConfig(batch_size=p["batch_size"])
    clips = pooled("hybrid", workload(p["clips"], seed, p.get("short", False)))
    model = build("hybrid").train()
    step, load = training_step(model, cfg), loader(clips, cfg, seed)
    lengths = [c.audio.shape[0] for c in clips]

    def epoch(e: int) -> float:
        t0 = time.perf_counter()
        for b, idx in enumerate(bucket_batches(lengths, cfg.batch_size, seed, e, True)):
            step(load(idx, b))
        return time.perf_counter() - t0

    try:
        with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
            tracker, history = Tracker(RunDir(tmp)), []

            def write(e: int, seconds: float) -> float:
                history.append({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e,
                                "val_accuracy": 0.5, "val_macro_f1": 0.4, "val_uar": 0.45,
                                "lr": cfg.lr, "epoch_seconds": seconds,
                                "samples_per_second": len(clips) / seconds,
                                "padding_efficiency": 0.95})
                t0 = time.perf_counter()
                tracker.epochs(history)
                return time.perf_counter() - t0

            first = epoch(0)  # untimed warm-up; the writer opens after it, as in a run
            open_seconds = write(1, first)
            alone, with_writer, writes = [], [], []
            for i in range(PAIRS[preset]):
                for with_it in ((False, True) if i % 2 == 0 else (True, False)):
                    seconds = epoch(len(history) + 1)
                    if with_it:
                        w = write(len(history) + 1, seconds)
                        writes.append((w, seconds))
                        with_writer.append(seconds + w)
                    else:
                        alone.append(seconds)
            tracker.close()
            available = any((Path(tmp) / "tb").glob("events.*"))
    finally:
        torch.set_num_threads(old_threads)
    fractions = [w / s for w, s in writes]
    paired = [(a_w - a) / a for a_w, a in zip(with_writer, alone)]
    out = {
        "tensorboard": bool(available),
        "pairs": len(writes), "epoch_seconds": spread(alone),
        "write_ms": spread([w * 1000 for w, _ in writes]),
        "fraction": spread(fractions), "paired_difference": spread(paired),
        "open_seconds": open_seconds, "target": f"<= {TARGET:.0%}",
        "method": "pairs of the same workload's epochs, one alone, one followed by the "
                  "writer's epoch-end call (Tracker.epochs: scalars, flush, publish), order "
                  "alternating; fraction: that call's time over its epoch's; "
                  "paired_difference: (epoch + call - the other epoch) / the other epoch, "
                  "noisier than the call it measures; open_seconds: the writer's creation, "
                  "once per run",
    }
    return {"tracking": out, "tracking_overhead": out["fraction"]["median"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="TensorBoard's share of a training epoch")
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(tracking_cost(a.preset, threads=a.threads), indent=2))
