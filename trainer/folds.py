"""Speaker k-fold cross-validation splits (DESIGN.md section 8): the first step of ``cv``.

    >>> folds = speaker_folds(clips, k=5, seed=0)        # 5 disjoint groups of speakers
    >>> split = fold_split(clips, folds, fold=0, seed=0)  # clip indices: train / val / test

Every speaker is in exactly one fold's test set. A fold's validation speakers (for early
stopping) come from that fold's training speakers, never from its test speakers. Folds are
balanced by clips and by clips per class: speakers, most clips first, each go to the fold
whose counts they bring closest to an even share (the greedy "longest processing time" rule,
on the class-count vector). ``k="loso"`` is leave-one-speaker-out.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from trainer.data import Clip


def speaker_folds(clips: list[Clip], k: int | str, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint lists of speakers covering every speaker of ``clips``.

    Raises:
        ValueError: fewer than 2 folds, or more folds than speakers.
    """
    speakers = sorted({c.speaker for c in clips})
    if k == "loso":
        k = len(speakers)
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"folds must be an integer of at least 2 or 'loso', not {k!r}")
    if k > len(speakers):
        raise ValueError(f"{k} folds need at least {k} speakers; the data has {len(speakers)}")
    labels = sorted({c.label for c in clips})
    per = {s: Counter() for s in speakers}
    for c in clips:
        per[c.speaker][c.label] += 1
    vec = {s: np.array([per[s][y] for y in labels], dtype=float) for s in speakers}
    total = sum(vec.values())
    target = total / k  # an even share of each class per fold
    # Seeded order among speakers of equal size, so that seeds give different, balanced folds.
    rng = np.random.default_rng([seed, 3])
    tie = dict(zip(speakers, rng.permutation(len(speakers))))
    order = sorted(speakers, key=lambda s: (-vec[s].sum(), tie[s]))
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [np.zeros(len(labels)) for _ in range(k)]
    for s in order:
        # The fold furthest below its share after taking s; empty folds first, so none is empty.
        def cost(i):
            return (len(folds[i]) > 0, float(np.abs(load[i] + vec[s] - target).sum()
                                             - np.abs(load[i] - target).sum()), i)
        best = min(range(k), key=cost)
        folds[best].append(s)
        load[best] += vec[s]
    return [sorted(f) for f in folds]


def fold_split(clips: list[Clip], folds: list[list[str]], fold: int, seed: int = 0,
               val_fraction: float = 0.15, tries: int = 200) -> dict[str, list[int]]:
    """Clip indices per split for fold ``fold`` (0-based): its speakers are the test set; the
    validation speakers are drawn (seeded) from the other folds' speakers, preferring a draw
    that has every class, and the rest train."""
    test = set(folds[fold])
    rest = sorted(s for i, f in enumerate(folds) if i != fold for s in f)
    if len(rest) < 2:
        raise ValueError("a fold needs at least 2 speakers outside its test set "
                         "(training and validation)")
    # val_fraction of all speakers, as in a single split; at least one, and one left to train
    n_val = min(max(1, round(val_fraction * (len(rest) + len(test)))), len(rest) - 1)
    by_speaker: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_speaker.setdefault(c.speaker, []).append(i)
    classes = {c.label for c in clips}
    rng = np.random.default_rng([seed, fold])
    best, best_missing = None, None
    for _ in range(tries):
        order = [rest[i] for i in rng.permutation(len(rest))]
        val = set(order[:n_val])
        split = {"train": sorted(i for s in rest if s not in val for i in by_speaker[s]),
                 "val": sorted(i for s in val for i in by_speaker[s]),
                 "test": sorted(i for s in test for i in by_speaker[s])}
        missing = sum(len(classes - {clips[i].label for i in split[k]}) for k in ("train", "val"))
        if best is None or missing < best_missing:
            best, best_missing = split, missing
        if missing == 0:
            break
    return best
