"""Clips as a model takes them: pooled to a rate in time, standardised per speaker or per clip,
and masked in time and frequency while training (SpecAugment).

    clips = pool_clips(ds.clips, audio_rate=25.0, video_rate=15.0)   # once, at load time
    clips = standardise(clips, "speaker")      # each speaker's statistics from its own clips
    batch = augment(collate(clips[:24]), rng, time_mask=0.1, feature_mask=0.1)  # training only

Pooling is set in seconds, not frames: a frame falls in the bin ``floor((t - t0) * rate)`` of
its own time ``t`` (``t0``: the clip's first frame), and a bin is the mean of its frames at the
mean of their times. 100 and 50 frames/s audio, or 30 and 15 frames/s video, come out at the
same rate, and a clip with dropped frames (no face found) keeps every frame's true time.

Per-speaker standardisation (the usual speaker normalisation of emotion recognition) removes
what is constant for a speaker: their voice's spectral envelope, their face's identity, which
is most of a face embedding's variance. The statistics of a speaker always come from that
speaker's own clips within the set being prepared (the training split while training, the
clips being evaluated at evaluation time), never from another speaker's or another split's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.batching import FeatureSums
from trainer.data import Clip

NORMS = ("speaker", "clip", "none")
BIN_EPS = 1e-3  # guards floor() at bin edges against float error in timestamps like k / fps
STD_FLOOR = 1e-3  # a feature (nearly) constant over a clip or speaker is not blown up


def pool_to_rate(x: np.ndarray, t: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the frames in each 1/rate-second bin: (T, F), (T,) -> (T', F), (T',).

    Bins without frames are left out (their time gap stays in the times). ``rate`` 0: as is.
    """
    if not rate or x.shape[0] == 0:
        return x, t
    order = np.argsort(t, kind="stable")
    x, t = x[order], t[order]
    bins = np.floor((t - t[0]) * rate + BIN_EPS).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])  # first frame of each bin
    counts = np.diff(np.r_[starts, len(t)]).astype(np.float64)
    xp = np.add.reduceat(x.astype(np.float64), starts, axis=0) / counts[:, None]
    tp = np.add.reduceat(t.astype(np.float64), starts) / counts
    return xp.astype(np.float32), tp.astype(np.float32)


def pool_clip(c: Clip, settings: dict) -> Clip:
    """One clip pooled to the rates of a checkpoint's ``prepare`` settings."""
    a, at = pool_to_rate(c.audio, c.audio_t, settings.get("audio_rate", 0.0))
    v, vt = pool_to_rate(c.video, c.video_t, settings.get("video_rate", 0.0))
    return Clip(c.path, c.label, c.speaker, a, v, at, vt, c.split)


def pool_clips(clips: list[Clip], audio_rate: float, video_rate: float) -> list[Clip]:
    settings = {"audio_rate": audio_rate, "video_rate": video_rate}
    return [pool_clip(c, settings) for c in clips]


@dataclass
class SpeakerSums:
    """Running sums of a speaker's (pooled) clips, both streams, and how many clips: what
    per-speaker standardisation needs, gathered one clip at a time (``trainer.enroll``)."""

    audio: FeatureSums = field(default_factory=FeatureSums)
    video: FeatureSums = field(default_factory=FeatureSums)
    clips: int = 0

    def add(self, c: Clip) -> None:
        self.audio.add(c.audio)
        self.video.add(c.video)
        self.clips += 1

    def merged(self, other: "SpeakerSums") -> "SpeakerSums":
        return SpeakerSums(self.audio.merged(other.audio), self.video.merged(other.video),
                           self.clips + other.clips)

    def stats(self) -> tuple[np.ndarray, ...]:
        """(audio mean, audio std, video mean, video std), as ``speaker_stats`` gives them."""
        return (*self.audio.stats(STD_FLOOR), *self.video.stats(STD_FLOOR))


def speaker_stats(clips: list[Clip]) -> dict[str, tuple[np.ndarray, ...]]:
    """Per speaker: (audio mean, audio std, video mean, video std) from that speaker's clips."""
    sums: dict[str, SpeakerSums] = defaultdict(SpeakerSums)
    for c in clips:
        sums[c.speaker].add(c)
    return {s: acc.stats() for s, acc in sums.items()}


def clip_stats(c: Clip) -> tuple[np.ndarray, ...]:
    """A clip's own statistics (``--norm clip``), in ``speaker_stats``' form."""
    acc = SpeakerSums()
    acc.add(c)
    return acc.stats()


def standardise_clip(c: Clip, stats: tuple[np.ndarray, ...]) -> Clip:
    """``c`` standardised per feature with (audio mean, audio std, video mean, video std)."""
    am, asd, vm, vsd = stats
    return Clip(c.path, c.label, c.speaker, ((c.audio - am) / asd).astype(np.float32),
                ((c.video - vm) / vsd).astype(np.float32), c.audio_t, c.video_t, c.split)


def standardise(clips: list[Clip], norm: str) -> list[Clip]:
    """Each clip standardised per feature with its speaker's statistics (``speaker``, taken
    from ``clips`` alone), its own (``clip``), or not at all (``none``)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    if norm == "none":
        return list(clips)
    if norm == "clip":
        return [standardise_clip(c, clip_stats(c)) for c in clips]
    stats = speaker_stats(clips)
    return [standardise_clip(c, stats[c.speaker]) for c in clips]


def prepare(clips: list[Clip], settings: dict) -> list[Clip]:
    """Pooling then standardisation, as a checkpoint's ``prepare`` settings say."""
    return standardise([pool_clip(c, settings) for c in clips], settings.get("norm", "none"))


def augment(batch: dict, rng: np.random.Generator, time_mask: float, feature_mask: float,
            masks: int = 2, noise: float = 0.0) -> dict:
    """SpecAugment (Park et al. 2019) on both streams of a training batch, in place.

    Each clip gets ``masks`` time masks of up to ``time_mask`` seconds (a span of its frames set
    to 0, the mean after standardisation) and ``masks`` feature masks of up to ``feature_mask``
    of its features, per stream. Spans are drawn from ``rng`` alone, so a resumed run draws the
    same masks. ``noise``: Gaussian noise of that std on every real frame, from ``rng`` too.
    """
    for key in ("audio", "video"):
        x, t, m = batch[key], batch[f"{key}_t"], batch[f"{key}_mask"]  # (B, T, F), (B, T)
        B, T, F = x.shape
        if noise > 0:
            e = torch.from_numpy(rng.standard_normal((B, T, F), dtype=np.float32))
            x.add_(e.mul_(noise).mul_(m[:, :, None].to(x.dtype)))  # (B, T, F), padding stays 0
        if time_mask > 0:
            tt = t.numpy()  # (B, T); the last real frame's time bounds where a mask starts
            end = np.where(m.numpy(), tt, 0).max(1, keepdims=True)  # (B, 1)
            start = rng.uniform(0, 1, (B, masks)) * end
            width = rng.uniform(0, time_mask, (B, masks))
            hit = np.zeros((B, T), dtype=bool)
            for k in range(masks):
                hit |= (tt >= start[:, k:k + 1]) & (tt < start[:, k:k + 1] + width[:, k:k + 1])
            x.mul_(torch.from_numpy(~hit).to(x.dtype)[:, :, None])  # (B, T, 1)
        if feature_mask > 0:
            width = (rng.uniform(0, feature_mask, (B, masks)) * F).astype(np.int64)
            start = (rng.uniform(0, 1, (B, masks)) * (F - width)).astype(np.int64)
            keep = np.ones((B, F), dtype=np.float32)
            for b in range(B):
                for k in range(masks):
                    keep[b, start[b, k]:start[b, k] + width[b, k]] = 0.0
            x.mul_(torch.from_numpy(keep)[:, None, :])  # (B, 1, F)
    return batch


def mix(batch: dict, rng: np.random.Generator, alpha: float) -> tuple[torch.Tensor, float]:
    """mixup (Zhang et al. 2018) inside a training batch, in place: each clip plus another clip
    of the batch, ``lam * x + (1 - lam) * x_other`` with ``lam ~ Beta(alpha, alpha)`` kept at
    0.5 or more, so each clip stays the larger part of its mix. Frames count as real where
    either clip's are, at the longer clip's times (length buckets keep the two near in length).

    Returns the partners' labels and ``lam``: the loss is ``lam`` of the clip's own label's
    and ``1 - lam`` of the partner's. A model that meets the training loss by memorising each
    clip's background cannot do it for mixes it never saw twice.
    """
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(batch["label"].shape[0]))
    for key in ("audio", "video"):
        x, m, t = batch[key], batch[f"{key}_mask"], batch[f"{key}_t"]
        batch[key] = x * lam + x[perm] * (1.0 - lam)  # padded frames are 0 in both
        batch[f"{key}_t"] = torch.where(m, t, t[perm])
        batch[f"{key}_mask"] = m | m[perm]
    return batch["label"][perm], lam


def training_views(batch: dict, key: list[int], time_mask: float, feature_mask: float,
                   noise: float, mixup: float) -> tuple[torch.Tensor | None, float]:
    """Every training-time change of a batch, in place: SpecAugment and noise (``augment``),
    then mixup (``mix``), each from a generator seeded by ``key`` (seed, epoch, batch) alone,
    so a resumed run draws the same. Returns mix's partners' labels and lam (None and 1.0
    without mixup)."""
    if time_mask or feature_mask or noise:
        augment(batch, np.random.default_rng([*key, 1]), time_mask, feature_mask, noise=noise)
    return mix(batch, np.random.default_rng([*key, 2]), mixup) if mixup else (None, 1.0)
