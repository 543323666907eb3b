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
from trainer.splits import best_of_shuffles


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
    return best_of_shuffles(clips, rest, np.random.default_rng([seed, fold]), tries,
                            lambda order: {"train": order[n_val:], "val": order[:n_val]},
                            fixed={"test": sorted(test)})


def manifest_folds(clips: list[Clip]) -> list[list[str]] | None:
    """The folds a manifest's split column names (``fold1`` ... ``foldK``), or None if it
    names none (``trainer.data`` has checked the column is all folds or all train/val/test).

    Raises:
        ValueError: folds not numbered 1..K with K >= 2, or a speaker in two folds (the
            folds would not be speaker-independent).

    Example:
        >>> manifest_folds(clips)   # rows with split fold1, fold2, fold3
        [['crema-d/1001', 'crema-d/1004'], ['crema-d/1002'], ['crema-d/1003']]
    """
    if not clips or not all(c.split and c.split.startswith("fold") for c in clips):
        return None
    of: dict[str, int] = {}
    for c in clips:
        n = int(c.split[len("fold"):])
        if of.setdefault(c.speaker, n) != n:
            raise ValueError(f"manifest: speaker {c.speaker} is in fold{of[c.speaker]} and "
                             f"fold{n} ({c.path}); a speaker's clips must share one fold")
    k = max(of.values())
    absent = sorted(set(range(1, k + 1)) - set(of.values()))
    if k < 2 or absent:
        raise ValueError(f"manifest: the split column names folds {sorted(set(of.values()))}; "
                         f"number them fold1..foldK with K >= 2 and none empty")
    return [sorted(s for s, n in of.items() if n == i) for i in range(1, k + 1)]
