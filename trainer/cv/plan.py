"""The plan of a cross-validation: its tasks, (fold, seed) pairs, fold-major (task i = (fold - 1)
* len(seeds) + seed position). The folds come from the data and K alone
(``trainer.cv.folds.speaker_folds`` with seed 0, or the manifest's split column naming
``fold1``..``foldK``), so separate processes, such as the children of a Batch array job,
compute the same plan without talking to each other.

Example:
    >>> setting, tasks = plan(load_dataset("demo-data").clips, 5, [0, 1])
    >>> tasks[3].dir
    'fold-2-seed-1'
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from trainer.cv.folds import fold_split, manifest_folds, speaker_folds

# Train flags that mean nothing here or that cv sets itself, with why.
NOT_FOR_CV = {"seed": "cv takes --seeds (a list), not --seed",
              "test_fraction": "cv's test sets are its folds; --test-fraction does not apply"}

def task_dir(fold: int, seed: int, n_seeds: int) -> str:
    """The task's run directory name under the cv run: ``fold-3``, or ``fold-3-seed-1``.

    Example:
        >>> task_dir(3, 1, n_seeds=3)
        'fold-3-seed-1'
    """
    return f"fold-{fold}" if n_seeds == 1 else f"fold-{fold}-seed-{seed}"


def parse_seeds(text: str, name: str = "--seeds", example: str = "--seeds 0,1,2") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct seeds of 0 or more, in the order given; anything
    else is a one-line ValueError naming ``name`` (the flag, or ``SEEDS`` for make).

    Example:
        >>> parse_seeds("0, 1,2")
        [0, 1, 2]
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"{name} {text!r} is not a list of whole numbers: give e.g. {example}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name} {text!r}: seeds must be distinct, e.g. {example}")
    return seeds


def parse_folds(text: str | None, name: str = "--folds", loso: bool = True) -> int | str | None:
    """``"5"`` -> 5, ``"loso"`` -> ``"loso"`` (where ``loso`` allows it), None -> None (the
    manifest's folds); anything else is a one-line ValueError naming ``name``.

    Example:
        >>> parse_folds("5")
        5
    """
    if text is None or (loso and text == "loso"):
        return text
    value = str(text).strip()
    if not re.fullmatch(r"\d+", value):
        raise ValueError(f"{name} {value!r} is not a number of folds: give an integer of at "
                         f"least 2{' or loso' if loso else ''}")
    if int(value) < 2:
        raise ValueError(f"{name} {value}: cross-validation needs 2 folds or more")
    return int(value)


def task_from_env(env: dict | None = None) -> int:
    """``--task auto``: AWS_BATCH_JOB_ARRAY_INDEX, else the INDEX of AWS_BATCH_JOB_ID's
    ``PARENT:INDEX`` form (moto's Batch sets only that one)."""
    env = os.environ if env is None else env
    index = env.get("AWS_BATCH_JOB_ARRAY_INDEX", "").strip()
    if re.fullmatch(r"\d+", index):
        return int(index)
    m = re.fullmatch(r".+:(\d+)", env.get("AWS_BATCH_JOB_ID", "").strip())
    if m:
        return int(m.group(1))
    raise ValueError("--task auto: neither AWS_BATCH_JOB_ARRAY_INDEX nor an AWS_BATCH_JOB_ID "
                     "of the form PARENT:INDEX is set; give --task I")


@dataclass
class Task:
    index: int
    fold: int  # 1-based
    seed: int
    dir: str
    split: dict[str, list[str]]  # clip paths per split: train, val, test
    test_speakers: list[str]


def plan(clips: list, folds: int | str | None, seeds: list[int],
         val_fraction: float = 0.15) -> tuple[str | int, list[Task]]:
    """The tasks, fold-major, and the folds setting (K, "loso" or "manifest (K)").

    Raises:
        ValueError: bad fold count for the data, or a manifest's folds that disagree with K.
    """
    named = manifest_folds(clips)
    if named is not None:
        if folds is not None and folds != len(named):
            raise ValueError(f"the manifest names {len(named)} folds, not --folds {folds}; "
                             "leave --folds out to use the manifest's")
        groups, setting = named, f"manifest ({len(named)})"
    elif folds is None:
        raise ValueError("cv needs --folds K or loso (the manifest's split column names no "
                         "folds)")
    else:
        groups, setting = speaker_folds(clips, folds, seed=0), folds
    tasks = []
    for f, group in enumerate(groups):
        for seed in seeds:
            split = fold_split(clips, groups, f, seed=seed, val_fraction=val_fraction)
            tasks.append(Task(len(tasks), f + 1, seed, task_dir(f + 1, seed, len(seeds)),
                              {k: [clips[i].path for i in v] for k, v in split.items()},
                              list(group)))
    return setting, tasks


def data_fingerprint(clips: list) -> str:
    """A hash of the data a plan is made from: every clip's path, label, speaker, split and
    feature arrays (values and times), so that a resume on other or changed data is refused.

    Example:
        >>> data_fingerprint(load_dataset("demo-data").clips)[:12]
        '3f9a0c2b7d1e'
    """
    h = hashlib.sha256()
    for c in sorted(clips, key=lambda c: c.path):
        h.update(f"{c.path}\0{c.label}\0{c.speaker}\0{c.split}\0".encode())
        for a in (c.audio, c.video, c.audio_t, c.video_t):
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def task_record(task: Task, settings: dict) -> dict:
    """What ``cv-task.json`` holds: the task's place in the plan, its split and the plan's
    settings; a resume compares it with the record the task was started with."""
    split = hashlib.sha256(repr(sorted(task.split.items())).encode()).hexdigest()
    return {"fold": task.fold, "seed": task.seed, "index": task.index,
            "test_speakers": task.test_speakers, "split_sha256": split, "settings": settings}


def record_differences(old: dict | None, new: dict) -> list[str]:
    """What differs between a task's stored record and the current plan's, in words (empty:
    the same). The data's URI may differ (a copy of the same data); its fingerprint may not.

    Example:
        >>> record_differences(old, new)
        ['folds 4, now 2', 'train.model hybrid, now lstm']
    """
    if old is None:
        return ["no cv-task.json (not a task of a cv run)"]
    out = []
    flat_old, flat_new = _flat(old), _flat(new)
    for k in sorted(set(flat_old) | set(flat_new)):
        if k == "settings.data":
            continue
        a, b = flat_old.get(k, "(none)"), flat_new.get(k, "(none)")
        if a != b:
            name = k.removeprefix("settings.")
            if name == "data_sha256":
                out.append("the data (its clips or their features) changed")
            elif name == "split_sha256":
                out.append("the task's split changed")
            else:
                out.append(f"{name} {_short(a)}, now {_short(b)}")
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."
