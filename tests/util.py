"""Small helpers the tests share: tiny clip files and tiny data sets they make themselves."""

from __future__ import annotations

import json
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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# Settings that keep a test training run to a few seconds on two cores.
FAST = ["--d-model", "32", "--heads", "2", "--batch-size", "16", "--threads", "1"]
