"""Train / validation / test splits.

Speaker-independent by default: every speaker's clips go to exactly one split, because emotion
results on random splits are 20 to 45 points too high when actors leak between them. The split
is seeded; among a number of seeded shuffles of the speakers, the first one that puts every
class in every split is taken (when the data allow it).
"""

from __future__ import annotations

import numpy as np

from trainer.data import Clip

SPLITS = ("train", "val", "test")


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many units go to val and test: at least one each when there are three or more."""
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def speaker_split(clips: list[Clip], seed: int, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, tries: int = 200) -> dict[str, list[int]]:
    """Clip indices per split, no speaker in more than one split.

    Args:
        clips: the data set's clips.
        seed: the split's seed; the same seed gives the same split.
        val_fraction, test_fraction: shares of *speakers* for validation and test.
        tries: seeded shuffles to try for one that has every class in every split.

    Raises:
        ValueError: fewer than three speakers (no speaker-independent split exists).
    """
    speakers = sorted({c.speaker for c in clips})
    if len(speakers) < 3:
        raise ValueError(f"a speaker-independent split needs at least 3 speakers, the data "
                         f"has {len(speakers)}; use --split random (optimistic results)")
    n_tr, n_va, _ = _counts(len(speakers), val_fraction, test_fraction)
    by_speaker: dict[str, list[int]] = {s: [] for s in speakers}
    for i, c in enumerate(clips):
        by_speaker[c.speaker].append(i)
    classes = {c.label for c in clips}
    rng = np.random.default_rng(seed)
    best, best_missing = None, None
    for _ in range(tries):
        order = [speakers[i] for i in rng.permutation(len(speakers))]
        groups = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va],
                  "test": order[n_tr + n_va:]}
        split = {k: sorted(i for s in v for i in by_speaker[s]) for k, v in groups.items()}
        missing = sum(len(classes - {clips[i].label for i in idx}) for idx in split.values())
        if best is None or missing < best_missing:
            best, best_missing = split, missing
        if missing == 0:
            break
    return best


def random_split(clips: list[Clip], seed: int, val_fraction: float = 0.15,
                 test_fraction: float = 0.15) -> dict[str, list[int]]:
    """Clip indices per split, stratified by class, ignoring speakers (optimistic results)."""
    rng = np.random.default_rng(seed)
    out = {k: [] for k in SPLITS}
    labels = np.array([c.label for c in clips])
    for y in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == y)).tolist()
        n_tr, n_va, _ = _counts(len(idx), val_fraction, test_fraction)
        out["train"] += idx[:n_tr]
        out["val"] += idx[n_tr:n_tr + n_va]
        out["test"] += idx[n_tr + n_va:]
    return {k: sorted(v) for k, v in out.items()}


def manifest_split(clips: list[Clip]) -> dict[str, list[int]] | None:
    """The manifest's own split column; None when no clip has one (the split is then computed).

    Raises:
        ValueError: some clips have a split and others none, or one is not train/val/test: a
            partial or misspelt column never silently becomes a computed split.
    """
    if not any(c.split for c in clips):
        return None
    for c in clips:
        if c.split not in SPLITS:
            raise ValueError(f"clip {c.path}: split {c.split!r} is not one of "
                             f"{'/'.join(SPLITS)}; give every clip one, or none of them")
    return {k: [i for i, c in enumerate(clips) if c.split == k] for k in SPLITS}


def make_split(clips: list[Clip], kind: str, seed: int, val_fraction: float,
               test_fraction: float) -> dict[str, list[int]]:
    """The split a run uses: the manifest's, else speaker-independent, else random."""
    if kind == "speaker":
        return manifest_split(clips) or speaker_split(clips, seed, val_fraction, test_fraction)
    if kind == "random":
        return random_split(clips, seed, val_fraction, test_fraction)
    raise ValueError(f"unknown split {kind!r}: use speaker or random")
