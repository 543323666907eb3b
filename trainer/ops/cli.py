"""The operator verbs of ``python -m trainer``: deploy, status, logs, monitor, results, destroy,
and tensorboard (local: no stack needed).

    python -m trainer deploy --data demo-data --args="--epochs 30"   # make deploy DATA=... ARGS=...
    python -m trainer deploy --replace                               # make deploy REPLACE=1
    python -m trainer deploy --folds 5 --seeds 0,1,2                 # make deploy FOLDS=5 SEEDS=...
    python -m trainer logs --fold 3                                  # make logs FOLD=3 (an array)
    python -m trainer status                                         # make status
    python -m trainer logs --follow --run RUN_ID                     # make logs FOLLOW=1 RUN=...
    python -m trainer monitor                                        # make monitor
    python -m trainer results --run RUN_ID                           # make results RUN=...
    python -m trainer destroy --keep-runs                            # make destroy KEEP=1
    python -m trainer tensorboard runs/cv                            # make tensorboard RUNS=...
    python -m trainer status --backend local                         # any verb: BACKEND=local

This module holds the flags; it imports only argparse and the standard library, because
trainer/cli.py imports it for every verb, the container's `train` included. The verbs themselves
are ``trainer.ops.verbs``, loaded when one runs.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTIONS = {
    "deploy": ("start a training run on AWS (or BACKEND=local)",
               "Build the image and push it to ECR, upload the data set (only what changed),\n"
               "pulumi up, start the instance, start the run through SSM; prints the run id.\n"
               "With --folds K: speaker K-fold cross-validation as one AWS Batch array job, a\n"
               "child per fold and seed (cv --task auto), in place of the instance.\n\n"
               "Examples:\n  python -m trainer deploy\n  python -m trainer deploy --data "
               "data/crema --args=\"--epochs 30 --model lstm\"\n  python -m trainer deploy "
               "--replace\n  python -m trainer deploy --folds 5 --seeds 0,1,2\n"
               "  python -m trainer deploy --media media/crema   # extracted on the instance\n"
               "  python -m trainer deploy --backend local --data demo-data"),
    "status": ("state, epoch, best metric, ETA, instance and cost of a run",
               "Examples:\n  python -m trainer status\n  python -m trainer status --run RUN_ID"),
    "logs": ("the run's log (CloudWatch Logs, or docker logs locally)",
             "Examples:\n  python -m trainer logs\n  python -m trainer logs --follow\n  "
             "python -m trainer logs --run RUN_ID --tail 200\n  python -m trainer logs --fold 3 "
             " # one fold of a cross-validation array"),
    "monitor": ("an interactive menu: logs, resources, metrics per epoch, time to go",
                "Examples:\n  python -m trainer monitor\n  python -m trainer monitor --run RUN_ID"),
    "results": ("download a run to results/RUN_ID/ with summary.md and plots",
                "Idempotent; works on a run still going.\n\nExamples:\n  python -m trainer "
                "results\n  python -m trainer results --run RUN_ID --out results"),
    "destroy": ("remove the stack (pulumi destroy) after a confirmation",
                "Says what is lost first; --keep-runs downloads every run to results/ before.\n\n"
                "Examples:\n  python -m trainer destroy\n  python -m trainer destroy --keep-runs"
                "\n  python -m trainer destroy --backend local --yes"),
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("aws", "local"), default=None,
                   help="aws (the Pulumi stack) or local (Docker + moto) (default: deploy.yaml's "
                   "backend, else aws)")
    p.add_argument("--stack", default=None, help="Pulumi stack (default: deploy.yaml's, else dev)")
    p.add_argument("--settings", metavar="FILE", default=None,
                   help="settings file (default: $AVE_SETTINGS, else ./deploy.yaml)")


def _run_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="RUN_ID", default=None, help="run id (default: the newest)")


def add_ops_commands(sub, commands: dict) -> None:
    """Add the operator verbs to ``sub`` (argparse subparsers), their functions to ``commands``."""
    fmt = argparse.RawDescriptionHelpFormatter
    parsers = {}
    for verb, (brief, text) in DESCRIPTIONS.items():
        parsers[verb] = p = sub.add_parser(verb, help=brief, description=text, formatter_class=fmt)
        _common(p)
    p = parsers["deploy"]
    p.add_argument("--data", default=None, help="folder of clip files, or an s3:// prefix in the "
                   "stack's bucket (default: deploy.yaml's data, else demo-data)")
    p.add_argument("--args", default=None, metavar="'FLAGS'", help="trainer train flags, one "
                   "string: --args=\"--epochs 30\" (default: deploy.yaml's args, else none)")
    p.add_argument("--media", default=None, metavar="FOLDER", help="raw media (CREMA-D, "
                   "RAVDESS, videos): uploaded once, extracted on the instance into "
                   "s3://BUCKET/features/ (reused by later runs), then trained on; replaces "
                   "--data; extract flags go in --extract (default: deploy.yaml's media, else "
                   "none)")
    p.add_argument("--extract", default=None, metavar="'FLAGS'", help="extract flags for --media,"
                   " one string: --extract='--audio wavlm --audio-model models/wavlm-base-plus'; "
                   "a local --audio-model or --face-model is uploaded once to "
                   "s3://BUCKET/models/NAME-HASH/ (default: deploy.yaml's extract, else none)")
    p.add_argument("--replace", action="store_true", help="stop the run going (after its "
                   "checkpoint; its artifacts stay) and start this one (default: refuse)")
    p.add_argument("--image", default=None, metavar="TAG", help="use this local image instead of "
                   "building one (default: build)")
    p.add_argument("--folds", default=None, metavar="K", help="K-fold speaker cross-validation as "
                   "one AWS Batch array job (default: deploy.yaml's folds, else none: one run)")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="with --folds: seeds per fold "
                   "(default: deploy.yaml's seeds, else 0)")
    for verb in ("status", "logs", "monitor", "results"):
        _run_flag(parsers[verb])
    parsers["logs"].add_argument("--follow", action="store_true",
                                 help="keep printing new lines until the run ends (default: off)")
    parsers["logs"].add_argument("--tail", type=int, default=100, help="lines (default: 100)")
    parsers["logs"].add_argument("--fold", type=int, default=None, metavar="K", help="an array "
                                 "run's fold K, 1-based (default: none; an array needs one)")
    parsers["results"].add_argument("--out", default=None, metavar="DIR",
                                    help="folder for RUN_ID/ (default: results)")
    parsers["destroy"].add_argument("--yes", action="store_true",
                                    help="do not ask (default: ask)")
    parsers["destroy"].add_argument("--keep-runs", action="store_true", help="download every run "
                                    "to results/ before destroying (default: off)")
    commands.update({verb: run_verb for verb in DESCRIPTIONS})


def add_tensorboard_command(sub, commands: dict) -> None:
    """``tensorboard [PATH...]``: TensorBoard over run folders (``trainer.ops.board``)."""
    p = sub.add_parser("tensorboard", help="serve run folders' TensorBoard events on localhost",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
                           "Every run writes TensorBoard events in RUN/tb/: a folder of runs (a "
                           "cross-validation,\nan ablation, results/) shows one run per run "
                           "directory. Serves on a free port of\n127.0.0.1 and prints the "
                           "address; Ctrl-C stops it.\n\nExamples:\n  python -m trainer "
                           "tensorboard\n  python -m trainer tensorboard runs/cv "
                           "runs/ablation\n  make tensorboard RUNS=runs/cv"))
    p.add_argument("paths", nargs="*", metavar="PATH", help="folders of runs (default: results, "
                   "where `make results` downloads runs)")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free "
                   "one)")
    commands["tensorboard"] = run_tensorboard


def run_tensorboard(args) -> int:
    """Serve ``args.paths`` until Ctrl-C; a problem is one line on stderr and exit code 1."""
    from trainer.ops import OpsError, board  # no boto3, docker or pulumi: only tensorboard

    try:
        return board.serve(args.paths, args.port)
    except OpsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_verb(args) -> int:
    """Run the operator verb ``args.verb`` (``trainer.ops.verbs``)."""
    from trainer.ops import verbs  # boto3, docker, pulumi: loaded when an operator verb runs

    return verbs.run(args)


