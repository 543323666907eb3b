"""From clips to padded batches: normalisation, dynamic padding with masks, bucketed batches.

A batch is padded to its own longest clip (no truncation), and carries boolean masks that are
True on real frames. The sampler groups clips of similar length so that little is padding.

Example:
    >>> norm = Normalizer.fit([c for c in train_clips])
    >>> batches = bucket_batches(lengths, batch_size=24, seed=0, epoch=3)
    >>> batch = collate([norm(train_clips[i]) for i in batches[0]])
    >>> batch["audio"].shape  # (B, T_a_max, F_a)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.data import Clip


@dataclass
class FeatureSums:
    """Running sums of arrays [T_i, F]: frames, and per feature the sum and the sum of squares,
    in float64 so long data sets do not lose precision. Arrays added one at a time give the
    same statistics, to the bit, as ``feature_stats`` of them all at once.

    Example:
        >>> acc = FeatureSums()
        >>> for x in clips_audio: acc.add(x)       # one clip in memory at a time
        >>> mean, std = acc.stats(1e-3)
    """

    n: int = 0
    s: np.ndarray | float = 0.0  # (F,) once an array is added
    ss: np.ndarray | float = 0.0  # (F,)

    def add(self, x: np.ndarray) -> None:
        self.n += x.shape[0]
        self.s = self.s + x.sum(0, dtype=np.float64)
        self.ss = self.ss + (x.astype(np.float64) ** 2).sum(0)

    def merged(self, other: "FeatureSums") -> "FeatureSums":
        return FeatureSums(self.n + other.n, self.s + other.s, self.ss + other.ss)

    def stats(self, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame-weighted mean and standard deviation per feature; the deviation at least
        ``floor``."""
        mean = self.s / self.n
        return mean, np.maximum(np.sqrt(np.maximum(self.ss / self.n - mean ** 2, 0.0)), floor)


def feature_stats(xs: list[np.ndarray], floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame-weighted mean and standard deviation per feature over arrays [T_i, F] (float64;
    the deviation is at least ``floor``)."""
    acc = FeatureSums()
    for x in xs:
        acc.add(x)
    return acc.stats(floor)


@dataclass
class Normalizer:
    """Per-feature mean and standard deviation, from the training split only."""

    audio_mean: np.ndarray
    audio_std: np.ndarray
    video_mean: np.ndarray
    video_std: np.ndarray

    @classmethod
    def fit(cls, clips: list[Clip]) -> "Normalizer":
        def stats(xs):
            mean, std = feature_stats(xs, 1e-5)
            return mean.astype(np.float32), std.astype(np.float32)

        am, asd = stats([c.audio for c in clips])
        vm, vsd = stats([c.video for c in clips])
        return cls(am, asd, vm, vsd)

    def state_dict(self) -> dict:
        return {k: torch.from_numpy(getattr(self, k)) for k in
                ("audio_mean", "audio_std", "video_mean", "video_std")}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Normalizer":
        return cls(**{k: np.asarray(v, dtype=np.float32) for k, v in d.items()})

    def __call__(self, clip: Clip) -> Clip:
        return Clip(clip.path, clip.label, clip.speaker,
                    (clip.audio - self.audio_mean) / self.audio_std,
                    (clip.video - self.video_mean) / self.video_std,
                    clip.audio_t, clip.video_t, clip.split)


def _pad(xs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [T_i, ...] arrays into (B, T_max, ...) with zeros, and a (B, T_max) mask."""
    t_max = max(x.shape[0] for x in xs)
    out = np.zeros((len(xs), t_max) + xs[0].shape[1:], dtype=np.float32)
    mask = np.zeros((len(xs), t_max), dtype=bool)
    for i, x in enumerate(xs):
        out[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def collate(clips: list[Clip], modality: str = "both") -> dict[str, torch.Tensor]:
    """Pad a list of (normalised) clips into one batch.

    Args:
        clips: the batch's clips.
        modality: ``both``, or ``audio`` / ``video`` to zero the *other* modality (ablation).

    Returns:
        ``audio`` (B, T_a, F_a), ``audio_mask`` (B, T_a), ``audio_t`` (B, T_a), the same for
        ``video``, and ``label`` (B,).
    """
    audio, audio_mask = _pad([c.audio for c in clips])
    video, video_mask = _pad([c.video for c in clips])
    audio_t, _ = _pad([c.audio_t for c in clips])
    video_t, _ = _pad([c.video_t for c in clips])
    if modality == "audio":
        video.zero_()
    elif modality == "video":
        audio.zero_()
    return {
        "audio": audio, "audio_mask": audio_mask, "audio_t": audio_t,
        "video": video, "video_mask": video_mask, "video_t": video_t,
        "label": torch.tensor([c.label for c in clips], dtype=torch.long),
    }


def bucket_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                   bucket: bool = True, pool: int = 50) -> list[list[int]]:
    """Index batches for one epoch; the same (seed, epoch) always gives the same batches.

    With ``bucket``, indices are shuffled, cut into pools of ``pool`` batches, sorted by length
    inside each pool and cut into batches, and the batches shuffled: clips of like length share
    a batch, yet every epoch differs. Without it, plain shuffled batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if bucket:
        lengths_arr = np.asarray(lengths)
        size = batch_size * pool
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        order = np.concatenate([c[np.argsort(lengths_arr[c], kind="stable")] for c in chunks])
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches for evaluation, sorted by length (least padding)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def padding_efficiency(batches: list[list[int]], lengths: list[int]) -> float:
    """Real frames over padded frames across a list of batches."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return real / padded
