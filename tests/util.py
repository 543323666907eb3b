"""Small helpers the tests share: tiny clip files and tiny data sets they make themselves."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np

from trainer.demo import make_demo_data


def write_clip(path: Path, t_a: int = 40, t_v: int = 12, f_a: int = 8, f_v: int = 6,
               seed: int = 0, dtype=np.float32, **extra) -> Path:
    """One valid clip file (extra keys override or add arrays)."""
    rng = np.random.default_rng(seed)
    arrays = {"audio_features": rng.normal(size=(t_a, f_a)).astype(dtype),
              "video_features": rng.normal(size=(t_v, f_v)).astype(dtype)}
    arrays.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def tiny_demo(out: Path, speakers: int = 8, clips_per_speaker: int = 12, seed: int = 0) -> Path:
    make_demo_data(out, seed=seed, speakers=speakers, clips_per_speaker=clips_per_speaker)
    return out


def ctrl_c_default() -> None:
    """A ``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): SIGINT at its default.

    A test run started as a background job of a non-interactive shell (``nohup make test &``)
    ignores SIGINT, and an ignored signal is inherited: without this, such a child would ignore
    the test's Ctrl-C and the test would time out for a reason that is not the product's.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# Settings that keep a test training run to a few seconds on two cores.
FAST = ["--d-model", "32", "--heads", "2", "--batch-size", "16", "--threads", "1"]


# metrics.jsonl's keys and the TensorBoard tags a run writes them under (docs/tracking.md).
EPOCH_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "val/accuracy",
    "val_macro_f1": "val/macro_f1", "val_uar": "val/uar", "lr": "train/lr",
    "samples_per_second": "speed/clips_per_second",
    "padding_efficiency": "speed/padding_efficiency", "epoch_seconds": "speed/epoch_seconds",
}


def tb_events(folder: Path):
    """TensorBoard's own reader (``EventAccumulator``) over the event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def assert_events_match_metrics(folder: Path, metrics: list[dict]) -> None:
    """One value per epoch for each of metrics.jsonl's keys, equal to its (as float32)."""
    import pytest

    acc = tb_events(folder)
    for key, tag in EPOCH_TAGS.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in metrics], tag
