"""The operator verbs themselves (flags: ``trainer.ops.cli``): each a short function over the
plain helpers of this package.

    python -m trainer status                                         # make status
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer.ops import OpsError, arrays, batch, runs, views
from trainer.ops.flow import as_ops_error, backend_for, deploy, destroy, host_facts
from trainer.ops.monitor import Monitor
from trainer.ops.report import fetch, fetch_cv
from trainer.ops.settings import load


def run(args) -> int:
    """Run the verb ``args.verb``; a problem the user can act on is one line on stderr and exit
    code 1."""
    try:
        return VERBS[args.verb](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        err = as_ops_error(e, args.verb)
        if err is None or os.environ.get("TRAINER_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1


def settings_for(ns, **overrides):
    return load(ns.settings, backend=ns.backend, stack=ns.stack, **overrides)


def open_run(args):
    """(settings, backend, outputs, run id) for the verbs that read one run."""
    settings = settings_for(args)
    backend = backend_for(settings)
    out = backend.outputs()
    return settings, backend, out, runs.resolve(out["bucket"], getattr(args, "run", None))


def cmd_deploy(args) -> int:
    settings = settings_for(args, data=args.data, args=args.args, folds=args.folds,
                            seeds=args.seeds, media=args.media, extract=args.extract)
    if args.seeds is not None and not str(settings.folds).strip():
        raise OpsError("SEEDS (--seeds) goes with FOLDS (--folds): one run takes its seed in "
                       "ARGS, e.g. ARGS='--seed 1'")
    deploy(settings, replace=args.replace, image=args.image)
    return 0


def cmd_status(args) -> int:
    _, backend, out, run_id = open_run(args)
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
            lines = stored_log(out["bucket"], f"runs/{run_id}/{where}/train.log", where,
                               f"no logs yet for {where} of run {run_id} (Batch: {kid['status']}"
                               "): it has not started; try again in a minute")[-args.tail:]
        for line in lines:
            print(line, flush=True)
    return 0


def stored_log(bucket: str, key: str, what: str, not_yet: str) -> list[str]:
    """The lines of a train.log in the run directory, for a run without a live log; OpsError
    ``not_yet`` when there is none."""
    data = runs.read_bytes(bucket, key)
    if not data:
        raise OpsError(not_yet)
    print(f"(no live log for {what}; its train.log from the run directory)", file=sys.stderr)
    return data.decode(errors="replace").splitlines()


def cmd_logs(args) -> int:
    _, backend, out, run_id = open_run(args)
    record = batch.read_record(out["bucket"], run_id)
    if record is not None:
        return fold_logs(backend, out, run_id, record, args)
    if args.fold is not None:
        raise OpsError(f"run {run_id} is a single run, not a cross-validation array: leave out "
                       "FOLD (--fold)")
    lines = backend.log_lines(out, run_id, tail=args.tail, follow=args.follow,
                              done=lambda: not runs.is_going(runs.status(out["bucket"], run_id)))
    if lines is None:  # no stream or container: the run directory's own log, if there is one
        lines = stored_log(out["bucket"], f"runs/{run_id}/train.log", f"run {run_id}",
                           f"no logs yet for run {run_id}: its container has not started; try "
                           "again in a minute")[-args.tail:]
    for line in lines:
        print(line, flush=True)
    return 0


def cmd_monitor(args) -> int:
    _, backend, out, run_id = open_run(args)
    return Monitor(backend, out, run_id).loop()


def cmd_results(args) -> int:

    settings, backend, out, run_id = open_run(args)
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
    return destroy(settings_for(args), yes=args.yes, keep_runs=args.keep_runs)


VERBS = {"deploy": cmd_deploy, "status": cmd_status, "logs": cmd_logs, "monitor": cmd_monitor,
         "results": cmd_results, "destroy": cmd_destroy}
