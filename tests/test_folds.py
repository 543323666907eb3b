"""Speaker k-fold splits: every speaker tested exactly once, never trained or validated on in
its own fold, folds balanced by clips and classes."""

from collections import Counter

import numpy as np
import pytest

from trainer.data import Clip
from trainer.cv.folds import fold_split, manifest_folds, speaker_folds


def dataset(speakers=10, seed=0):
    """Speakers with 6 to 20 clips each, of 6 classes in unequal shares."""
    rng = np.random.default_rng(seed)
    clips = []
    for s in range(speakers):
        for _ in range(int(rng.integers(6, 21))):
            label = int(rng.choice(6, p=[0.3, 0.1, 0.1, 0.2, 0.2, 0.1]))
            clips.append(Clip(f"s{s}-{len(clips)}", label, f"spk/{s:02d}", np.zeros((1, 1)),
                              np.zeros((1, 1)), np.zeros(1), np.zeros(1)))
    return clips


def test_ten_speakers_five_folds_every_speaker_tested_once_and_never_in_its_own_training():
    clips = dataset(10)
    folds = speaker_folds(clips, 5, seed=0)
    speakers = sorted({c.speaker for c in clips})
    assert sorted(s for f in folds for s in f) == speakers  # each exactly once
    assert all(len(f) == 2 for f in folds)
    for i, f in enumerate(folds):
        split = fold_split(clips, folds, i, seed=0)
        who = {k: {clips[j].speaker for j in v} for k, v in split.items()}
        assert who["test"] == set(f)
        assert not who["test"] & (who["train"] | who["val"])
        assert who["val"] and not who["val"] & who["train"]
        assert sorted(j for v in split.values() for j in v) == list(range(len(clips)))


def test_folds_are_balanced_by_clips_and_classes():
    clips = dataset(20, seed=1)
    folds = speaker_folds(clips, 5, seed=0)
    of = {s: i for i, f in enumerate(folds) for s in f}
    sizes = Counter(of[c.speaker] for c in clips)
    mean = len(clips) / 5
    assert max(abs(n - mean) for n in sizes.values()) <= 0.15 * mean
    for y in range(6):  # every class in every fold's test set
        assert all(any(c.label == y and of[c.speaker] == i for c in clips) for i in range(5))


def test_loso_and_bad_fold_counts():
    clips = dataset(4)
    assert [len(f) for f in speaker_folds(clips, "loso")] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least 5 speakers"):
        speaker_folds(clips, 5)
    with pytest.raises(ValueError, match="at least 2 or 'loso'"):
        speaker_folds(clips, 1)


def test_the_same_seed_gives_the_same_folds_and_split():
    clips = dataset(12)
    assert speaker_folds(clips, 3, seed=4) == speaker_folds(clips, 3, seed=4)
    assert fold_split(clips, speaker_folds(clips, 3), 1, seed=2) == \
        fold_split(clips, speaker_folds(clips, 3), 1, seed=2)


def test_a_manifests_folds_are_read_and_checked():
    clips = dataset(6)
    for c in clips:
        c.split = f"fold{1 + int(c.speaker[-2:]) % 3}"
    assert manifest_folds(clips) == [["spk/00", "spk/03"], ["spk/01", "spk/04"],
                                     ["spk/02", "spk/05"]]
    assert manifest_folds(dataset(4)) is None  # no split column
    clips[0].split = "fold2" if clips[0].split != "fold2" else "fold3"
    with pytest.raises(ValueError, match="is in fold.* and fold"):
        manifest_folds(clips)
    for c in clips:
        c.split = "fold1" if c.speaker < "spk/03" else "fold3"
    with pytest.raises(ValueError, match="number them fold1..foldK"):
        manifest_folds(clips)
