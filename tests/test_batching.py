"""Normalisation, padded batches with masks, and the length-bucketed batch order."""

import numpy as np
import torch

from trainer.batching import (
    FeatureSums,
    Normalizer,
    bucket_batches,
    collate,
    feature_stats,
    padding_efficiency,
)
from trainer.data import Clip


def clip(t_a, t_v, value=1.0, label=0):
    return Clip("x", label, "s", np.full((t_a, 3), value, np.float32),
                np.full((t_v, 2), value, np.float32), np.arange(t_a, dtype=np.float32),
                np.arange(t_v, dtype=np.float32))


def test_collate_pads_to_the_longest_clip_with_masks():
    b = collate([clip(5, 2, label=1), clip(3, 4, label=4)])
    assert b["audio"].shape == (2, 5, 3) and b["video"].shape == (2, 4, 2)
    assert b["audio_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["video_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert b["audio"][1, 3:].abs().sum() == 0  # padding is zeros
    assert b["label"].tolist() == [1, 4]


def test_collate_zeroes_the_other_modality_for_ablations():
    assert collate([clip(5, 2)], modality="audio")["video"].abs().sum() == 0
    assert collate([clip(5, 2)], modality="video")["audio"].abs().sum() == 0
    assert collate([clip(5, 2)], modality="audio")["audio"].abs().sum() > 0


def test_normalizer_uses_frame_statistics_and_round_trips():
    train = [clip(2, 1, 1.0), clip(6, 3, 3.0)]
    norm = Normalizer.fit(train)
    np.testing.assert_allclose(norm.audio_mean, 2.5)  # (2 * 1 + 6 * 3) / 8 frames
    again = Normalizer.from_state_dict(norm.state_dict())
    np.testing.assert_allclose(again(train[1]).audio, norm(train[1]).audio)
    assert np.all(np.isfinite(Normalizer.fit([clip(4, 2)]).audio_std))  # constant feature


def test_bucket_batches_cover_every_clip_once_and_are_seeded_per_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 500, size=1000).tolist()
    b = bucket_batches(lengths, 24, seed=0, epoch=0)
    assert sorted(i for batch in b for i in batch) == list(range(1000))
    assert b == bucket_batches(lengths, 24, seed=0, epoch=0)
    assert b != bucket_batches(lengths, 24, seed=0, epoch=1)


def test_bucketing_wastes_less_padding_than_shuffled_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(150, 500, size=2000).tolist()
    bucketed = padding_efficiency(bucket_batches(lengths, 24, 0, 0), lengths)
    shuffled = padding_efficiency(bucket_batches(lengths, 24, 0, 0, bucket=False), lengths)
    assert bucketed > 0.95 and shuffled < 0.8


def test_collate_returns_float32_tensors():
    b = collate([clip(2, 2)])
    assert b["audio"].dtype == torch.float32 and b["audio_mask"].dtype == torch.bool


def test_running_sums_give_the_statistics_of_all_arrays_at_once_to_the_bit():
    """Enrolment adds clips one at a time (trainer.enroll): the same mean and deviation as
    feature_stats of the whole list, which training and evaluate use."""
    rng = np.random.default_rng(3)
    xs = [(rng.normal(size=(int(rng.integers(3, 60)), 5)) * 4 + 2).astype(np.float32)
          for _ in range(40)]
    acc = FeatureSums()
    for x in xs:
        acc.add(x)
    halves = FeatureSums()
    for x in xs[:20]:
        halves.add(x)
    rest = FeatureSums()
    for x in xs[20:]:
        rest.add(x)
    mean, std = feature_stats(xs, 1e-3)
    np.testing.assert_array_equal(acc.stats(1e-3)[0], mean)
    np.testing.assert_array_equal(acc.stats(1e-3)[1], std)
    merged = halves.merged(rest).stats(1e-3)  # sums added in another order: the last bits
    np.testing.assert_allclose(merged[0], mean, rtol=1e-12)
    np.testing.assert_allclose(merged[1], std, rtol=1e-12)
    assert acc.n == sum(x.shape[0] for x in xs)
