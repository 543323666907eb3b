"""Clips as the model takes them: pooling set in seconds, standardisation per speaker or per clip
(never from another split's clips), and the training masks."""

import numpy as np
import pytest
import torch

from trainer.batching import collate, feature_stats
from trainer.data import Clip
from trainer.prepare import (
    STD_FLOOR,
    SpeakerSums,
    augment,
    mix,
    pool_clips,
    pool_to_rate,
    speaker_stats,
    standardise,
)


def clip(speaker, fps_a=100.0, fps_v=30.0, seconds=2.0, seed=0, offset=0.0, f_a=5, f_v=4):
    rng = np.random.default_rng(seed)
    ta = ((np.arange(int(seconds * fps_a)) + 0.5) / fps_a).astype(np.float32)
    tv = ((np.arange(int(seconds * fps_v)) + 0.5) / fps_v).astype(np.float32)
    return Clip(f"{speaker}-{seed}", 0, speaker,
                (rng.normal(size=(ta.size, f_a)) + offset).astype(np.float32),
                (rng.normal(size=(tv.size, f_v)) + offset).astype(np.float32), ta, tv)


@pytest.mark.parametrize("fps,rate,per_bin", [(100, 25, 4), (50, 25, 2), (30, 15, 2),
                                               (15, 15, 1), (25, 25, 1)])
def test_pooling_is_set_in_seconds_whatever_the_frame_rate(fps, rate, per_bin):
    t = ((np.arange(3 * fps) + 0.5) / fps).astype(np.float32)
    x = np.arange(t.size, dtype=np.float32)[:, None].repeat(3, 1)
    xp, tp = pool_to_rate(x, t, rate)
    assert xp.shape == (3 * rate, 3)  # 3 s at ``rate`` frames per second, whatever ``fps``
    np.testing.assert_allclose(np.diff(tp), 1 / rate, atol=1e-5)
    np.testing.assert_allclose(xp[:, 0], x[:per_bin * 3 * rate:per_bin, 0] + (per_bin - 1) / 2)


def test_pooling_keeps_true_times_across_dropped_frames():
    """Frames without a face are absent, not zeros: the bins left keep their own times."""
    t = np.array([0.0, 1 / 15, 2 / 15, 1.0, 1 + 1 / 15], dtype=np.float32)
    x = np.ones((5, 2), dtype=np.float32)
    xp, tp = pool_to_rate(x, t, 15.0)
    assert xp.shape == (5, 2)
    np.testing.assert_allclose(tp, t, atol=1e-6)
    assert pool_to_rate(x, t, 0.0)[0] is x  # rate 0: as stored


def test_speaker_statistics_come_from_that_speakers_clips_only():
    a = [clip("s1", seed=i, offset=5.0) for i in range(3)]
    b = [clip("s2", seed=10 + i, offset=-3.0) for i in range(2)]
    out = standardise(a + b, "speaker")
    for group in (out[:3], out[3:]):
        frames = np.concatenate([c.audio for c in group])
        np.testing.assert_allclose(frames.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(frames.std(0), 1, atol=1e-4)
    # Changing speaker 2's clips leaves speaker 1's standardised clips exactly as they were.
    again = standardise(a + [clip("s2", seed=99, offset=40.0)], "speaker")
    for x, y in zip(out[:3], again[:3]):
        np.testing.assert_array_equal(x.audio, y.audio)
        np.testing.assert_array_equal(x.video, y.video)
    assert set(speaker_stats(a + b)) == {"s1", "s2"}


def test_clip_standardisation_uses_the_clip_alone():
    c = clip("s1", offset=7.0)
    (alone,), (with_others,) = standardise([c], "clip"), standardise([c, clip("s1", seed=3)],
                                                                      "clip")[:1]
    np.testing.assert_array_equal(alone.audio, with_others.audio)
    np.testing.assert_allclose(alone.video.mean(0), 0, atol=1e-5)
    assert standardise([c], "none")[0] is c
    with pytest.raises(ValueError, match="norm must be one of"):
        standardise([c], "global")


def test_masks_are_drawn_from_the_rng_alone_and_spare_padding():
    clips = pool_clips([clip("s", seconds=s, seed=i) for i, s in enumerate((1.0, 2.5))], 25, 15)
    a = augment(collate(clips), np.random.default_rng(7), 0.2, 0.3)
    b = augment(collate(clips), np.random.default_rng(7), 0.2, 0.3)
    for k in ("audio", "video"):
        torch.testing.assert_close(a[k], b[k])
        assert (a[k][~a[f"{k}_mask"]] == 0).all()  # padding stays zero
    base = collate(clips)
    zeroed = (a["audio"] == 0) & (base["audio"] != 0)
    assert zeroed.any() and not zeroed.all()
    off = augment(collate(clips), np.random.default_rng(7), 0.0, 0.0)
    torch.testing.assert_close(off["audio"], base["audio"])


def test_noise_is_drawn_from_the_rng_alone_and_spares_padding():
    clips = [clip("a", seconds=0.5), clip("a", seconds=0.2, seed=1)]
    a = augment(collate(clips), np.random.default_rng(3), 0.0, 0.0, noise=0.5)
    b = augment(collate(clips), np.random.default_rng(3), 0.0, 0.0, noise=0.5)
    plain = collate(clips)
    torch.testing.assert_close(a["audio"], b["audio"])  # the same draws: resume stays exact
    diff = (a["audio"] - plain["audio"])[1]  # the shorter clip: 20 real frames, then padding
    assert a["audio"].shape[1] == 50
    assert diff[20:].abs().max() == 0
    assert 0.4 < float(diff[:20].std()) < 0.6


def test_mixup_mixes_each_clip_with_a_partner_and_keeps_it_the_larger_part():
    clips = [clip("a", seconds=s, seed=i) for i, s in enumerate((1.0, 0.6, 1.0, 0.9))]
    for i, c in enumerate(clips):
        c.label = i
    plain = collate(clips)
    batch = collate(clips)
    other, lam = mix(batch, np.random.default_rng(5), alpha=0.4)
    again = collate(clips)
    assert mix(again, np.random.default_rng(5), alpha=0.4)[1] == lam  # the rng's draws alone
    torch.testing.assert_close(again["video"], batch["video"])
    assert 0.5 <= lam < 1.0
    perm = other.tolist()  # partners' labels are their indices here
    assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
    for k in ("audio", "video"):
        want = lam * plain[k] + (1 - lam) * plain[k][perm]
        torch.testing.assert_close(batch[k], want)
        torch.testing.assert_close(batch[f"{k}_mask"], plain[f"{k}_mask"] | plain[f"{k}_mask"][perm])
        assert (batch[k][~batch[f"{k}_mask"]] == 0).all()  # padding of both stays zero
        real = batch[f"{k}_mask"]
        torch.testing.assert_close(batch[f"{k}_t"][real], torch.where(
            plain[f"{k}_mask"], plain[f"{k}_t"], plain[f"{k}_t"][perm])[real])


def test_speaker_sums_one_clip_at_a_time_give_speaker_stats():
    """What enrolment keeps (SpeakerSums, one clip at a time) and prepare's speaker norm give
    the statistics of all the speaker's frames at once (feature_stats), to the bit."""
    clips = [clip(s, seconds=1.0 + i / 3, seed=i) for i, s in enumerate("aabab")]
    by_speaker = speaker_stats(clips)
    for who in "ab":
        mine = [c for c in clips if c.speaker == who]
        want = (*feature_stats([c.audio for c in mine], STD_FLOOR),
                *feature_stats([c.video for c in mine], STD_FLOOR))
        acc = SpeakerSums()
        for c in mine:
            acc.add(c)
        for got, via, ref in zip(acc.stats(), by_speaker[who], want):
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(via, ref)
        assert acc.clips == len(mine)
