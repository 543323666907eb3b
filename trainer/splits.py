"""Train / validation / test splits.

Speaker-independent by default: every speaker's clips go to exactly one split, because emotion
results on random splits are 20 to 45 points too high when actors leak between them. The split
is seeded; among a number of seeded shuffles of the speakers, the first one that puts every
class in every split is taken (when the data allow it).
"""

from __future__ import annotations

import numpy as np
import structlog

from trainer.data import Clip, Dataset, data_stats

log = structlog.get_logger()

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
    return best_of_shuffles(clips, speakers, np.random.default_rng(seed), tries, lambda order: {
        "train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]})


def best_of_shuffles(clips: list[Clip], speakers: list[str], rng: np.random.Generator,
                     tries: int, groups_of, fixed: dict[str, list[str]] | None = None
                     ) -> dict[str, list[int]]:
    """Clip indices per split from the best of ``tries`` seeded shuffles of ``speakers``.

    ``groups_of(order)`` turns one shuffled order into speakers per split; the first draw that
    puts every class in each of those splits is taken, else the one missing the fewest.
    ``fixed`` splits (a fold's test speakers) are added as they are and not scored.

    Example:
        >>> best_of_shuffles(clips, ["a", "b", "c"], np.random.default_rng(0), 200,
        ...                  lambda o: {"train": o[:2], "val": o[2:]})
    """
    by_speaker: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_speaker.setdefault(c.speaker, []).append(i)
    classes = {c.label for c in clips}
    best, best_missing = None, None
    for _ in range(tries):
        groups = groups_of([speakers[i] for i in rng.permutation(len(speakers))])
        split = {k: sorted(i for s in v for i in by_speaker.get(s, [])) for k, v in groups.items()}
        missing = sum(len(classes - {clips[i].label for i in idx}) for idx in split.values())
        if best is None or missing < best_missing:
            best, best_missing = split, missing
        if missing == 0:
            break
    return {**best, **{k: sorted(i for s in v for i in by_speaker.get(s, []))
                       for k, v in (fixed or {}).items()}}


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
    if all(c.split and c.split.startswith("fold") for c in clips):
        raise ValueError(f"the manifest's split column names folds ({clips[0].split}, ...): "
                         "run `python -m trainer cv` on it, or give train/val/test for train")
    for c in clips:
        if c.split not in SPLITS:
            raise ValueError(f"clip {c.path}: split {c.split!r} is not one of "
                             f"{'/'.join(SPLITS)}; give every clip one, or none of them")
    return {k: [i for i, c in enumerate(clips) if c.split == k] for k in SPLITS}


def given_split(clips: list[Clip], paths: dict[str, list[str]]) -> dict[str, list[int]]:
    """Clip indices per split from clip paths per split, chosen outside (``cv``'s folds).

    Raises:
        ValueError: a split other than train/val/test, a path that is not a usable clip of the
            data, or a clip in two splits.

    Example:
        >>> given_split(clips, {"train": ["a.npz"], "val": ["b.npz"], "test": ["c.npz"]})
        {'train': [0], 'val': [1], 'test': [2]}
    """
    index = {c.path: i for i, c in enumerate(clips)}
    out, seen = {}, set()
    for k in SPLITS:
        for p in paths.get(k, []):
            if p not in index:
                raise ValueError(f"the given split names {p}, which is not a usable clip of the "
                                 "data (a changed data set?)")
            if p in seen:
                raise ValueError(f"the given split puts {p} in two splits")
            seen.add(p)
        out[k] = sorted(index[p] for p in paths.get(k, []))
    if set(paths) - set(SPLITS):
        raise ValueError(f"the given split has {sorted(set(paths) - set(SPLITS))}; only "
                         f"{'/'.join(SPLITS)}")
    return out


def make_split(clips: list[Clip], kind: str, seed: int, val_fraction: float,
               test_fraction: float) -> dict[str, list[int]]:
    """The split a run uses: the manifest's, else speaker-independent, else random."""
    if kind == "speaker":
        return manifest_split(clips) or speaker_split(clips, seed, val_fraction, test_fraction)
    if kind == "random":
        log.warning("random_split", message="speakers leak between splits: results will be "
                    "optimistic (typically 20 to 45 points); use --split speaker for real figures")
        return random_split(clips, seed, val_fraction, test_fraction)
    raise ValueError(f"unknown split {kind!r}: use speaker or random")


def data_summary(ds: Dataset, split: dict[str, list[int]], source: str, kind: str) -> dict:
    """summary.json's ``data``: where from, each split's clips per class and speakers, what was
    skipped or excluded, the widths, and how the features were extracted."""
    return {"source": source, "split": kind,
            **{k: data_stats([ds.clips[i] for i in v]) for k, v in split.items()},
            "skipped": ds.skipped, "excluded": dict(ds.excluded), "audio_dim": ds.audio_dim,
            "video_dim": ds.video_dim, "extraction": ds.extraction}
