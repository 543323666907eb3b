"""The ``cv`` verb's flags and entry: ``python -m trainer cv`` (DESIGN.md section 8).

    python -m trainer cv --data demo-data --out runs/cv --folds 5
    python -m trainer cv --out s3://b/runs/r1/ --aggregate
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from trainer.config import TrainConfig, resolve
from trainer.cv.plan import NOT_FOR_CV
from trainer.flags import add_train_flags


def cmd_cv(args) -> int:
    for name, why in NOT_FOR_CV.items():
        if getattr(args, name) is not None:
            raise ValueError(why)
    if args.split == "random":
        raise ValueError("cv splits by speaker; --split random does not apply")
    cfg = resolve(args.config, **{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if not cfg.out:
        raise ValueError("cv needs --out")
    from trainer.cv.run import run_cv  # torch: loaded only when a cv runs

    return run_cv(cfg, args)


DESCRIPTION = """\
Speaker k-fold cross-validation: speakers split into K groups balanced by clips and classes;
each group is one fold's test set, validation speakers come from the fold's training speakers.
Every task (fold, seed) is a complete run directory R/fold-K/ (R/fold-K-seed-S/ with several
seeds); R/cv.json, R/cv.md and R/plots/cv_folds.png hold the aggregate. A manifest's split
column may name the folds instead (fold1..foldK on every row; then --folds may be left out).
--resume refuses task folders made with another plan, other settings or other data. With
--media, the media are extracted into --data once, before the folds are planned.

Examples:
  python -m trainer cv --data demo-data --out runs/cv --folds 5
  python -m trainer cv --data demo-data --out runs/cv --folds loso --epochs 20
  python -m trainer cv --data demo-data --out runs/cv --folds 5 --seeds 0,1,2 --parallel 2
  python -m trainer cv --data demo-data --out runs/cv --folds 5 --resume
  python -m trainer cv --media media/crema --data data/crema --out runs/cv --folds 5
  python -m trainer cv --data s3://b/data/ --out s3://b/runs/r1/ --folds 5 --task auto
  python -m trainer cv --out s3://b/runs/r1/ --aggregate"""


def add_cv_command(sub, commands: dict) -> None:
    """Add the ``cv`` verb to ``sub`` (argparse subparsers) and its function to ``commands``."""
    p = sub.add_parser("cv", help="speaker k-fold cross-validation", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", default=None, metavar="K|loso", help="folds, or loso (leave one "
                   "speaker out) (default: the manifest's fold1..foldK; else required)")
    p.add_argument("--seeds", default="0", metavar="S,S", help="seeds per fold: weights, batch "
                   "order and the validation speakers (default: 0)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="tasks at once, as "
                   "processes sharing the cores (default: 1: one after another, in this process)")
    p.add_argument("--task", default=None, metavar="I|auto", help="run only task I (fold-major: "
                   "(fold-1)*len(seeds)+seed position), or auto: from AWS Batch's environment; "
                   "resumes the task if it has a checkpoint (default: all tasks)")
    p.add_argument("--aggregate", action="store_true", help="only (re)write cv.json, cv.md and "
                   "the plot from the task directories under --out (default: off)")
    add_train_flags(p)
    commands["cv"] = cmd_cv
