"""Speaker-independent and random splits."""

import numpy as np
import pytest

from trainer.data import Clip
from trainer.splits import make_split, random_split, speaker_split


def clips(speakers=10, per=12, seed=0):
    rng = np.random.default_rng(seed)
    z = np.zeros((2, 2), np.float32)
    return [Clip(f"{s}-{i}", int(rng.integers(6)), f"ds/{s}", z, z, z[0], z[0])
            for s in range(speakers) for i in range(per)]


def test_no_speaker_in_two_splits_and_every_clip_in_one():
    cs = clips()
    split = speaker_split(cs, seed=3)
    spk = {k: {cs[i].speaker for i in v} for k, v in split.items()}
    assert not (spk["train"] & spk["val"]) and not (spk["train"] & spk["test"])
    assert not (spk["val"] & spk["test"])
    assert sorted(i for v in split.values() for i in v) == list(range(len(cs)))
    assert all(spk[k] for k in spk)


def test_speaker_split_is_seeded_and_puts_every_class_in_every_split():
    cs = clips()
    assert speaker_split(cs, seed=1) == speaker_split(cs, seed=1)
    assert speaker_split(cs, seed=1) != speaker_split(cs, seed=2)
    for idx in speaker_split(cs, seed=1).values():
        assert {cs[i].label for i in idx} == {c.label for c in cs}


def test_too_few_speakers_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 3 speakers.*--split random"):
        speaker_split(clips(speakers=2), seed=0)


def test_random_split_is_stratified_and_mixes_speakers():
    cs = clips()
    split = random_split(cs, seed=0)
    spk = {k: {cs[i].speaker for i in v} for k, v in split.items()}
    assert spk["train"] & spk["test"]  # speakers leak: why it is not the default
    assert sorted(i for v in split.values() for i in v) == list(range(len(cs)))


def test_manifest_split_column_wins_for_speaker_split():
    cs = clips(speakers=3, per=2)
    for c, s in zip(cs, ["train", "train", "val", "val", "test", "test"]):
        c.split = s
    assert make_split(cs, "speaker", 0, 0.15, 0.15) == {"train": [0, 1], "val": [2, 3],
                                                        "test": [4, 5]}


def test_one_bad_manifest_split_value_is_an_error_not_a_computed_split():
    cs = clips(speakers=3, per=2)
    for c, s in zip(cs, ["train", "train", "val", "val", "test", "tset"]):
        c.split = s
    with pytest.raises(ValueError, match="clip 2-1: split 'tset' is not one of train/val/test"):
        make_split(cs, "speaker", 0, 0.15, 0.15)
    cs[5].split = None  # one clip without a split, the others with one
    with pytest.raises(ValueError, match="clip 2-1: split None"):
        make_split(cs, "speaker", 0, 0.15, 0.15)


def test_no_manifest_split_at_all_gives_the_speaker_split():
    cs = clips()
    assert make_split(cs, "speaker", 3, 0.15, 0.15) == speaker_split(cs, seed=3)
