"""The pooled linear baseline: the honest floor of the robustness suite.

    python -m trainer.bench.linear --data runs/robustness/data/base-seed-0

Each clip becomes per-dimension statistics of each stream over time (mean, standard deviation
and maximum), optionally standardised by its speaker's statistics (the mean and deviation of
those vectors over the speaker's clips in the same split, as emotion recognition usually
does), then standardised with the training split's statistics. A multinomial logistic
regression with an L2 penalty and class-balanced weights is fitted on the training split by
full-batch L-BFGS in torch (scikit-learn is present only as librosa's dependency, in the
optional ``extract`` extra, so the floor does not lean on it); the speaker standardisation
(on or off) and the penalty are chosen on validation macro-F1. A model that cannot beat this has
learned nothing a linear model on pooled features could not. It cannot tell the timing pairs
(ANG/DIS, FEA/HAP) apart by construction: pooling over time discards when events happen.

The data come through ``trainer.data.load_dataset``, so it sees exactly the trainer's clips,
and the split from the manifest's split column.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from trainer.bench.measure import torch_threads
from trainer.data import LABELS, Clip, load_dataset
from trainer.metrics import classification_report
from trainer.prepare import STD_FLOOR
from trainer.train_linear import L2_GRID, fit_regression

NORMS = ("speaker", "none")


def clip_features(c: Clip) -> np.ndarray:
    """Mean, std and max over time of every dimension of both streams: (3 (F_a + F_v),)."""
    return np.concatenate([f(x, axis=0) for x in (c.audio, c.video)
                           for f in (np.mean, np.std, np.max)]).astype(np.float64)


def by_speaker(x: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Each row standardised by the mean and deviation of its speaker's rows."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        groups[s].append(i)
    out = np.empty_like(x)
    for idx in groups.values():
        g = x[idx]
        out[idx] = (g - g.mean(0)) / np.maximum(g.std(0), STD_FLOOR)
    return out


def linear_baseline(data: str, l2_grid=L2_GRID, norms=NORMS, threads: int = 1) -> dict:
    """Test metrics of the best (norm, penalty) on validation; ``summary.json``-like.

    ``threads``: torch threads for the fits, restored after. One is right for so small a
    problem: on a busy two-core machine, two threads made a 10-second fit take 100 seconds.
    """
    with torch_threads(threads):
        return _fit_all(data, l2_grid, norms)


def _fit_all(data: str, l2_grid, norms) -> dict:
    ds = load_dataset(data)
    splits = {k: [c for c in ds.clips if c.split == k] for k in ("train", "val", "test")}
    if not all(splits.values()):
        raise ValueError(f"{data}: the linear baseline needs a manifest with train, val and test "
                         "in its split column")
    raw = {k: np.stack([clip_features(c) for c in v]) for k, v in splits.items()}
    y = {k: torch.tensor([c.label for c in v]) for k, v in splits.items()}
    n = len(LABELS)
    grid = []
    for norm in norms:
        xs = {k: by_speaker(raw[k], [c.speaker for c in splits[k]]) if norm == "speaker"
              else raw[k] for k in raw}
        mean, std = xs["train"].mean(0), np.maximum(xs["train"].std(0), STD_FLOOR)
        xt = {k: torch.from_numpy((v - mean) / std) for k, v in xs.items()}
        for l2 in l2_grid:
            model = fit_regression(xt["train"], y["train"], l2, n)
            with torch.no_grad():
                pred = {k: model(v).argmax(1).numpy() for k, v in xt.items()}
            scores = {k: classification_report(y[k].numpy(), pred[k], LABELS[:n]) for k in pred}
            grid.append({"norm": norm, "l2": l2, **scores})
    # the best validation macro-F1; a tie goes to the stronger penalty (the simpler model)
    best = max(grid, key=lambda g: (g["val"]["macro_f1"], g["l2"]))
    return {"test": best["test"], "train": {k: best["train"][k] for k in ("accuracy", "macro_f1")},
            "validation": {"best_macro_f1": best["val"]["macro_f1"], "norm": best["norm"],
                           "l2": best["l2"],
                           "grid": [{"norm": g["norm"], "l2": g["l2"],
                                     "macro_f1": g["val"]["macro_f1"]} for g in grid]},
            "data": {k: {"clips": len(v), "speakers": sorted({c.speaker for c in v})}
                     for k, v in splits.items()},
            "features": int(raw["train"].shape[1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench.linear", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="clip files with a manifest split column")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = p.parse_args(argv)
    r = linear_baseline(args.data, threads=args.threads)
    print(json.dumps({k: r[k] for k in ("test", "validation")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
