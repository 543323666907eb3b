"""Running a cross-validation's tasks: one (a Batch child), all in turn, or several at once as
processes; then the aggregate (``trainer.cv.report``).

    python -m trainer cv --data demo-data --out runs/cv --folds 5
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --seeds 0,1,2 --parallel 2
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --resume
    python -m trainer cv --data s3://b/data/ --out s3://b/runs/r1/ --folds 5 --task auto  # Batch
    python -m trainer cv --out s3://b/runs/r1/ --aggregate

Each task is a complete run directory ``R/fold-K/`` (``R/fold-K-seed-S/`` with several seeds)
whose split is the fold's; a task whose ``summary.json`` exists is done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace

import structlog

from trainer import logs
from trainer.cv.plan import Task, parse_folds, parse_seeds, plan, task_from_env
from trainer.cv.report import aggregate
from trainer.data import load_dataset
from trainer.errors import DataError, Stopped
from trainer.store.rundir import RunDir
from trainer.store.uri import has, join, read_json, resolve_data
from trainer.train import train

log = structlog.get_logger()

POLL_SECONDS = 0.5


def state(out: str, task: Task) -> str:
    """done (summary.json), partial (a checkpoint to resume from) or new."""
    where = join(out, task.dir)
    if has(join(where, "summary.json")):
        return "done"
    return "partial" if has(join(where, "checkpoints/last.pt")) else "new"


def run_task(cfg, task: Task, settings: dict) -> dict:
    """Train one task to the end (resuming its own checkpoint if it has one); its summary.

    ``cfg`` is the cv's TrainConfig; the task's run directory, seed and split replace its own.
    """
    out = join(cfg.out, task.dir)
    st = state(cfg.out, task)
    if st == "done":
        return read_json(join(out, "summary.json"))
    # The task's place in the plan, so that an aggregate of the folds alone (Batch) knows it.
    run = RunDir(out)
    run.write_json("cv-task.json", {"fold": task.fold, "seed": task.seed, "index": task.index,
                                    "test_speakers": task.test_speakers, "settings": settings})
    run.close()
    return train(replace(cfg, out=out, seed=task.seed, resume=st == "partial"), split=task.split)


def test_metrics(summary: dict) -> dict:
    """The test accuracy, macro-F1 and UAR of a summary, rounded for a log line."""
    return {k: round(summary["test"][k], 4) for k in ("accuracy", "macro_f1", "uar")}


def _child_command(config_file: str, cfg, args, index: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "cv", "--config", config_file, "--data",
           cfg.data, "--out", cfg.out, "--seeds", args.seeds, "--task", str(index),
           "--threads", str(threads)]
    return cmd + (["--folds", str(args.folds)] if args.folds is not None else [])


def run_parallel(cfg, args, tasks: list[Task], parallel: int) -> list[str]:
    """Run ``tasks`` as subprocesses (``cv --task I``), ``parallel`` at a time, each with
    ``cores / parallel`` torch threads; a line per task start and end. Returns the failures.

    SIGTERM or Ctrl-C is passed on to the running tasks, which save their checkpoints; then
    ``Stopped`` is raised (``--resume`` continues).
    """
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // parallel)
    stop: list[int] = []
    old = {s: signal.signal(s, lambda signum, _: stop.append(signum))
           for s in (signal.SIGTERM, signal.SIGINT)}
    failures, running, pending = [], {}, list(tasks)
    with tempfile.TemporaryDirectory(prefix="cv-") as tmp:
        config_file = os.path.join(tmp, "config.json")
        with open(config_file, "w") as f:  # the resolved settings, flags and file alike
            json.dump({k: v for k, v in asdict(cfg).items()
                       if k not in ("data", "out", "resume", "threads")}, f)
        try:
            while (pending and not stop) or running:
                while pending and len(running) < parallel and not stop:
                    t = pending.pop(0)
                    out_file = open(os.path.join(tmp, f"{t.dir}.log"), "w+b")
                    proc = subprocess.Popen(_child_command(config_file, cfg, args, t.index,
                                                           threads),
                                            stdout=out_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # signals come from us
                    running[t.index] = (t, proc, out_file, time.monotonic())
                    log.info("cv_task_start", task=t.index, dir=t.dir, threads=threads,
                             test_speakers=len(t.test_speakers))
                if stop:
                    for _, proc, _, _ in running.values():
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGTERM)
                time.sleep(POLL_SECONDS)
                for i, (t, proc, out_file, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[i]
                    seconds = round(time.monotonic() - t0, 1)
                    if proc.returncode == 0:
                        log.info("cv_task_end", task=t.index, dir=t.dir, seconds=seconds,
                                 **test_metrics(read_json(join(join(cfg.out, t.dir), "summary.json"))))
                    else:
                        out_file.seek(0)
                        tail = [x for x in out_file.read().decode(errors="replace").splitlines()
                                if x.strip()][-1:] or ["(no output)"]
                        failures.append(f"{t.dir} (exit {proc.returncode}: {tail[0][:200]})")
                        log.error("cv_task_failed", task=t.index, dir=t.dir,
                                  exit_code=proc.returncode, seconds=seconds, last_line=tail[0])
                    out_file.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    if stop:
        raise Stopped(143 if stop[0] == signal.SIGTERM else 130)
    return failures


def run_cv(cfg, args) -> int:
    """The verb: plan, then the tasks (one, all in turn, or in parallel), then the aggregate."""
    logs.setup(None)
    if args.aggregate:
        cv = aggregate(cfg.out)
        s = cv["summary"]
        print(f"cv: {s['tasks_done']} tasks; macro-F1 {s['macro_f1']['mean']:.3f} ± "
              f"{s['macro_f1']['std']:.3f}; {join(cfg.out, 'cv.md')}")
        return 0
    if not cfg.data:
        raise ValueError("cv needs --data (or --aggregate)")
    folds, seeds = parse_folds(args.folds), parse_seeds(args.seeds)
    parallel = args.parallel
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, not {parallel}")
    index = None
    if args.task is not None:
        index = task_from_env() if args.task == "auto" else args.task
        if not re.fullmatch(r"\d+", str(index)):
            raise ValueError(f"--task must be a task index (0, 1, ...) or auto, not {index!r}")
        index = int(index)
    ds = load_dataset(resolve_data(cfg.data, cfg.cache_dir), cfg.audio_fps)
    setting, tasks = plan(ds.clips, folds, seeds, cfg.val_fraction)
    train_flags = {k: v for k, v in asdict(cfg).items()
                   if k not in ("data", "out", "resume", "threads", "cache_dir", "seed", "split",
                                "test_fraction")}
    settings = {"folds": setting, "seeds": seeds, "tasks_total": len(tasks), "data": cfg.data,
                "train": train_flags}
    if index is not None:
        # One task (a Batch child): resumes itself if its directory holds a checkpoint (a retry
        # after a reclaimed spot instance) and writes nothing outside its run directory.
        if index >= len(tasks):
            raise ValueError(f"--task {index} is out of range: this cv has {len(tasks)} tasks "
                             f"(0..{len(tasks) - 1})")
        t = tasks[index]
        log.info("cv_task_start", task=t.index, dir=t.dir, state=state(cfg.out, t))
        summary = run_task(cfg, t, settings)
        logs.setup(None)
        log.info("cv_task_end", task=t.index, dir=t.dir, **test_metrics(summary))
        return 0
    states = {t.index: state(cfg.out, t) for t in tasks}
    started = [t.dir for t in tasks if states[t.index] != "new"]
    if started and not cfg.resume:
        raise DataError(f"{cfg.out} already holds cv tasks ({', '.join(started[:3])}"
                        f"{', ...' if len(started) > 3 else ''}); pass --resume to continue "
                        "them, or choose another --out")
    todo = [t for t in tasks if states[t.index] != "done"]
    log.info("cv_plan", folds=setting, seeds=seeds, tasks=len(tasks), done=len(tasks) - len(todo),
             parallel=parallel, out=cfg.out)
    failures = []
    if parallel == 1:
        for t in todo:
            log.info("cv_task_start", task=t.index, dir=t.dir, state=states[t.index])
            t0 = time.monotonic()
            summary = run_task(cfg, t, settings)
            logs.setup(None)  # the task's run pointed the log at its own train.log
            log.info("cv_task_end", task=t.index, dir=t.dir,
                     seconds=round(time.monotonic() - t0, 1), **test_metrics(summary))
    else:
        failures = run_parallel(cfg, args, todo, parallel)
    cv = aggregate(cfg.out)
    s = cv["summary"]
    print(f"cv: {s['tasks_done']} of {len(tasks)} tasks; test macro-F1 "
          f"{s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}, accuracy "
          f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}, UAR "
          f"{s['uar']['mean']:.3f} ± {s['uar']['std']:.3f}")
    print(f"results: {join(cfg.out, 'cv.json')}, {join(cfg.out, 'cv.md')}, "
          f"{join(cfg.out, 'plots/cv_folds.png')}")
    if failures:
        raise DataError(f"{len(failures)} of {len(todo)} tasks failed: {'; '.join(failures)}; "
                        "fix and rerun with --resume")
    return 0
