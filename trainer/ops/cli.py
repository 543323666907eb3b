"""The operator verbs of ``python -m trainer``: deploy, status, logs, monitor, results, destroy.

    python -m trainer deploy --data demo-data --args="--epochs 30"   # make deploy DATA=... ARGS=...
    python -m trainer deploy --replace                               # make deploy REPLACE=1
    python -m trainer deploy --folds 5 --seeds 0,1,2                 # make deploy FOLDS=5 SEEDS=...
    python -m trainer logs --fold 3                                  # make logs FOLD=3 (an array)
    python -m trainer status                                         # make status
    python -m trainer logs --follow --run RUN_ID                     # make logs FOLLOW=1 RUN=...
    python -m trainer monitor                                        # make monitor
    python -m trainer results --run RUN_ID                           # make results RUN=...
    python -m trainer destroy --keep-runs                            # make destroy KEEP=1
    python -m trainer status --backend local                         # any verb: BACKEND=local

This module imports only argparse and the standard library, because trainer/cli.py imports it
for every verb, the container's `train` included; each verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
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
                   "--data; extract flags go in --args=\"--extract-args '--video opencv'\" "
                   "(default: deploy.yaml's media, else none)")
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
    verbs = {"deploy": cmd_deploy, "status": cmd_status, "logs": cmd_logs,
             "monitor": cmd_monitor, "results": cmd_results, "destroy": cmd_destroy}
    commands.update({verb: _verb(fn) for verb, fn in verbs.items()})


def _verb(fn):
    """Run a verb; a problem the user can act on is one line on stderr and exit code 1."""

    def run(args) -> int:
        from trainer.ops.flow import as_ops_error

        try:
            return fn(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            err = as_ops_error(e, args.verb)
            if err is None or os.environ.get("TRAINER_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 1

    return run


def _settings(ns, **overrides):
    from trainer.ops.settings import load

    return load(ns.settings, backend=ns.backend, stack=ns.stack, **overrides)


def _open(args):
    """(settings, backend, outputs, run id) for the verbs that read one run."""
    from trainer.ops import runs
    from trainer.ops.flow import backend_for

    settings = _settings(args)
    backend = backend_for(settings)
    out = backend.outputs()
    return settings, backend, out, runs.resolve(out["bucket"], getattr(args, "run", None))


def cmd_deploy(args) -> int:
    from trainer.ops.flow import deploy

    settings = _settings(args, data=args.data, args=args.args, folds=args.folds,
                         seeds=args.seeds, media=args.media)
    if args.seeds is not None and not str(settings.folds).strip():
        from trainer.ops import OpsError

        raise OpsError("SEEDS (--seeds) goes with FOLDS (--folds): one run takes its seed in "
                       "ARGS, e.g. ARGS='--seed 1'")
    deploy(settings, replace=args.replace, image=args.image)
    return 0


def cmd_status(args) -> int:
    from trainer.ops import arrays, batch, runs, views
    from trainer.ops.flow import host_facts

    _, backend, out, run_id = _open(args)
    record = batch.read_record(out["bucket"], run_id)
    if record is not None:  # an array: each fold, and the array as a whole
        rows = arrays.fold_rows(out["bucket"], run_id, record,
                                batch.children(batch.client(out), record))
        print("\n".join(views.array_lines(run_id, record, rows, arrays.overall_eta(rows))))
        return 0
    host = host_facts(backend, out, run_id, say=lambda s: print(s, file=sys.stderr))
    print("\n".join(views.status_lines(run_id, runs.status(out["bucket"], run_id), host)))
    return 0


def fold_logs(backend, out: dict, run_id: str, record: dict, args) -> int:
    """``logs --fold K`` of an array: each seed's child of fold K (its CloudWatch stream, or its
    container's output locally), else its run directory's train.log."""
    from trainer.ops import OpsError, batch, runs

    if args.fold is None or not 1 <= args.fold <= record["folds"]:
        given = "" if args.fold is None else f" (not {args.fold})"
        raise OpsError(f"run {run_id} is a cross-validation array of {record['folds']} folds: "
                       f"give FOLD=1..{record['folds']}{given}, e.g. make logs FOLD=1")
    client = batch.client(out)
    kids = [k for k in batch.children(client, record)
            if batch.task_of(k["index"], record["folds"], record["seeds"])[0] == args.fold]
    for kid in kids:
        where = batch.task_dir(kid["index"], record["folds"], record["seeds"])
        if len(kids) > 1:
            print(f"== {where} (Batch {kid['status']}) ==", flush=True)

        def done(kid=kid):
            return batch.children(client, record)[kid["index"]]["status"] in batch.FINAL

        lines = backend.child_log_lines(out, record, kid, tail=args.tail, follow=args.follow,
                                        done=done)
        if lines is None:
            data = runs.read_bytes(out["bucket"], f"runs/{run_id}/{where}/train.log")
            if not data:
                raise OpsError(f"no logs yet for {where} of run {run_id} (Batch: "
                               f"{kid['status']}): it has not started; try again in a minute")
            print(f"(no live log for {where}; its train.log from the run directory)",
                  file=sys.stderr)
            lines = data.decode(errors="replace").splitlines()[-args.tail:]
        for line in lines:
            print(line, flush=True)
    return 0


def cmd_logs(args) -> int:
    from trainer.ops import OpsError, batch, runs

    _, backend, out, run_id = _open(args)
    record = batch.read_record(out["bucket"], run_id)
    if record is not None:
        return fold_logs(backend, out, run_id, record, args)
    if args.fold is not None:
        raise OpsError(f"run {run_id} is a single run, not a cross-validation array: leave out "
                       "FOLD (--fold)")
    lines = backend.log_lines(out, run_id, tail=args.tail, follow=args.follow,
                              done=lambda: not runs.is_going(runs.status(out["bucket"], run_id)))
    if lines is None:  # no stream or container: the run directory's own log, if there is one
        data = runs.read_bytes(out["bucket"], f"runs/{run_id}/train.log")
        if not data:
            raise OpsError(f"no logs yet for run {run_id}: its container has not started; try "
                           "again in a minute")
        print(f"(no live log for run {run_id}; its train.log from the run directory)",
              file=sys.stderr)
        lines = data.decode(errors="replace").splitlines()[-args.tail:]
    for line in lines:
        print(line, flush=True)
    return 0


def cmd_monitor(args) -> int:
    from trainer.ops.monitor import Monitor

    _, backend, out, run_id = _open(args)
    return Monitor(backend, out, run_id).loop()


def cmd_results(args) -> int:
    from pathlib import Path

    from trainer.ops import batch
    from trainer.ops.flow import host_facts
    from trainer.ops.report import fetch, fetch_cv

    settings, backend, out, run_id = _open(args)
    if batch.read_record(out["bucket"], run_id) is not None:  # an array: every fold, aggregated
        dest = fetch_cv(out["bucket"], run_id, Path(args.out or settings.results_dir))
        print(f"{dest}/summary.md")
        return 0
    host = host_facts(backend, out, run_id, say=lambda s: print(s, file=sys.stderr))
    dest = fetch(out["bucket"], run_id, Path(args.out or settings.results_dir),
                 host["price"] if host else None)
    print(f"{dest}/summary.md")
    return 0


def cmd_destroy(args) -> int:
    from trainer.ops.flow import destroy

    return destroy(_settings(args), yes=args.yes, keep_runs=args.keep_runs)
