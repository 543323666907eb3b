"""The benchmark's workload: synthetic CREMA-D-shaped clips (1.5 to 5 s, audio at 100 frames/s
of 88 features, video at 30 frames/s of 512), the models at train.py's defaults for it, and
train.py's data path and step, shared by the benchmark (``trainer.bench.run``) and its DDP
measurement (``trainer.bench.ddp``).

Example:
    >>> clips = pooled("hybrid", workload(8))
    >>> step = training_step(build("hybrid").train(), TrainConfig())
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.batching import collate
from trainer.config import TrainConfig, model_settings, prepare_settings
from trainer.data import LABELS, Clip
from trainer.losses import training_loss
from trainer.model import build_model
from trainer.prepare import augment, pool_clips

AUDIO_FPS, AUDIO_DIM, VIDEO_FPS, VIDEO_DIM = 100, 88, 30, 512
CREMA_D_CLIPS = 7442
# clips: training workload; rounds: timed epochs of each model, batch by batch in turn (9: the
# 2nd smallest to the 2nd largest ratio is a 96 % interval of its median); memory_rounds: memory
# readings of each, in turn, each the peak over memory_steps identical steps; loader_repeats:
# A/B pairs of the data path; mm_pairs: (matmul rate, epoch) pairs; latency_runs: single-clip
# calls per model, in latency_blocks blocks taken in turn; mm: square matmul size. Each
# figure's spread is over its repeats (trainer.bench.verdict).
PRESETS = {
    "full": dict(clips=288, batch_size=24, rounds=9, memory_rounds=5, memory_steps=4,
                 loader_repeats=7, mm_pairs=5, latency_runs=360, latency_blocks=9, mm=4096,
                 mm_repeats=5),
    "quick": dict(clips=8, batch_size=4, rounds=5, memory_rounds=3, memory_steps=2,
                  loader_repeats=5, mm_pairs=3, latency_runs=30, latency_blocks=3, mm=2048,
                  mm_repeats=3),
    "smoke": dict(clips=4, batch_size=2, rounds=3, memory_rounds=3, memory_steps=2,
                  loader_repeats=3, mm_pairs=3, latency_runs=6, latency_blocks=3, mm=256,
                  mm_repeats=2, short=True),  # tests: figures meaningless, shapes exercised
}


def durations(n: int, seed: int, short: bool = False) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    return rng.uniform(0.3, 0.6, n) if short else rng.uniform(1.5, 5.0, n)


def workload(n: int, seed: int = 0, short: bool = False) -> list[Clip]:
    """``n`` CREMA-D-shaped clips (already normal, as after Normalizer), labels at random."""
    rng = np.random.default_rng([seed, 2])
    clips = []
    for i, d in enumerate(durations(n, seed, short)):
        t_a, t_v = int(d * AUDIO_FPS), int(d * VIDEO_FPS)
        clips.append(Clip(f"bench-{i}", int(rng.integers(len(LABELS))), "bench",
                          rng.standard_normal((t_a, AUDIO_DIM), dtype=np.float32),
                          rng.standard_normal((t_v, VIDEO_DIM), dtype=np.float32),
                          ((np.arange(t_a) + 0.5) / AUDIO_FPS).astype(np.float32),
                          ((np.arange(t_v) + 0.5) / VIDEO_FPS).astype(np.float32)))
    return clips


# Full mode also times the hybrid with each of these settings changed (throughput only): what
# cross-modal attention costs, what twice the time resolution would, and what the video at
# its own 30 frames/s would (brief video events: docs/training.md's tried table).
VARIANTS = {"late_fusion": {"fusion": "late"}, "rates_50_30": {"audio_rate": 50.0,
                                                               "video_rate": 30.0},
            "video_30": {"video_rate": 30.0}, "no_sync_head": {"sync_head": False}}


def build(name: str, **overrides) -> torch.nn.Module:
    """A model at the defaults train.py would use for this workload."""
    cfg = TrainConfig(model=name, **overrides)
    return build_model(name, **model_settings(cfg, AUDIO_DIM, VIDEO_DIM, len(LABELS)))


def pooled(name: str, clips: list[Clip], **overrides) -> list[Clip]:
    """The workload as train.py feeds ``name``: pooled to its rates once, at load time."""
    s = prepare_settings(TrainConfig(model=name, **overrides))
    return pool_clips(clips, s["audio_rate"], s["video_rate"])


def loader(clips: list[Clip], cfg, seed: int, rank: int = 0):
    """train.py's data path: ``load(idx, b)`` collates clips ``idx`` (batch ``b``), then applies
    the training masks. ``rank``: a DDP process's own mask draws (trainer.bench.ddp)."""
    def load(idx, b):
        batch = collate([clips[i] for i in idx])
        return augment(batch, np.random.default_rng([seed, rank, b, 1]), cfg.time_mask,
                       cfg.feature_mask) if cfg.time_mask or cfg.feature_mask else batch
    return load


def training_step(model: torch.nn.Module, cfg):
    """train.py's step for ``model`` (also a DistributedDataParallel wrapper): focal loss,
    backward, clipping, fused AdamW. ``step(batch)`` returns the loss, detached."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)  # as train.py

    def step(batch):
        loss = training_loss(model, batch, batch["label"], 1.0, None, 2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    return step


class Tiny(torch.nn.Module):
    """A model of one weight, for the warm-up step that sets the memory baseline."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(len(LABELS)))

    def forward(self, audio, **_):
        return audio.mean((1, 2))[:, None] * self.w
