"""Speaker k-fold cross-validation: ``python -m trainer cv`` (DESIGN.md section 8).

    python -m trainer cv --data demo-data --out runs/cv --folds 5
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --seeds 0,1,2 --parallel 2
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --resume
    python -m trainer cv --data s3://b/data/ --out s3://b/runs/r1/ --folds 5 --task auto  # Batch
    python -m trainer cv --out s3://b/runs/r1/ --aggregate

The plan: tasks are (fold, seed) pairs, fold-major (task i = (fold - 1) * len(seeds) + seed
position). The folds come from the data and K alone (``trainer.folds.speaker_folds`` with seed
0, or the manifest's split column naming ``fold1``..``foldK``), so separate processes, such as
the children of a Batch array job, compute the same plan without talking to each other. Each
task is a complete run directory ``R/fold-K/`` (``R/fold-K-seed-S/`` with several seeds) whose
split is the fold's; a task whose ``summary.json`` exists is done. At the end the parent writes
the aggregate (``trainer.cv_report``).

This module imports only the standard library at the top: trainer/cli.py imports it for every
verb.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import structlog

# The contract's Python API (``trainer.cv.aggregate``); cv_report too imports only the standard
# library at the top.
from trainer.cv_report import aggregate, aggregate_dict  # noqa: F401, E402

log = structlog.get_logger()

# Train flags that mean nothing here or that cv sets itself, with why.
NOT_FOR_CV = {"seed": "cv takes --seeds (a list), not --seed",
              "test_fraction": "cv's test sets are its folds; --test-fraction does not apply"}
POLL_SECONDS = 0.5


def task_dir(fold: int, seed: int, n_seeds: int) -> str:
    """The task's run directory name under the cv run: ``fold-3``, or ``fold-3-seed-1``.

    Example:
        >>> task_dir(3, 1, n_seeds=3)
        'fold-3-seed-1'
    """
    return f"fold-{fold}" if n_seeds == 1 else f"fold-{fold}-seed-{seed}"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else is a one-line ValueError."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"--seeds must be non-negative integers separated by commas, e.g. "
                         f"0,1,2, not {text!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds names a seed twice: {text!r}")
    return seeds


def parse_folds(text: str | None) -> int | str | None:
    """``"5"`` -> 5, ``"loso"`` -> ``"loso"``, None -> None (the manifest's folds)."""
    if text is None or text == "loso":
        return text
    if not re.fullmatch(r"\d+", str(text)) or int(text) < 2:
        raise ValueError(f"--folds must be an integer of at least 2 or 'loso', not {text!r}")
    return int(text)


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
    from trainer.folds import fold_split, manifest_folds, speaker_folds

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


def state(out: str, task: Task) -> str:
    """done (summary.json), partial (a checkpoint to resume from) or new."""
    from trainer.cv_report import has, join

    where = join(out, task.dir)
    if has(join(where, "summary.json")):
        return "done"
    return "partial" if has(join(where, "checkpoints/last.pt")) else "new"


def run_task(cfg, task: Task, settings: dict) -> dict:
    """Train one task to the end (resuming its own checkpoint if it has one); its summary.

    ``cfg`` is the cv's TrainConfig; the task's run directory, seed and split replace its own.
    """
    from trainer.cv_report import join, read_json
    from trainer.storage import RunDir
    from trainer.train import train

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


def _brief(summary: dict) -> dict:
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
    from trainer.cv_report import join, read_json
    from trainer.errors import Stopped

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
                                 **_brief(read_json(join(join(cfg.out, t.dir), "summary.json"))))
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
    from trainer import logs
    from trainer.cv_report import join
    from trainer.data import load_dataset
    from trainer.errors import DataError
    from trainer.train import resolve_data

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
        log.info("cv_task_end", task=t.index, dir=t.dir, **_brief(summary))
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
                     seconds=round(time.monotonic() - t0, 1), **_brief(summary))
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


def cmd_cv(args) -> int:
    from dataclasses import fields

    from trainer.config import TrainConfig, resolve

    for name, why in NOT_FOR_CV.items():
        if getattr(args, name) is not None:
            raise ValueError(why)
    if args.split == "random":
        raise ValueError("cv splits by speaker; --split random does not apply")
    cfg = resolve(args.config, **{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if not cfg.out:
        raise ValueError("cv needs --out")
    return run_cv(cfg, args)


DESCRIPTION = """\
Speaker k-fold cross-validation: speakers split into K groups balanced by clips and classes;
each group is one fold's test set, validation speakers come from the fold's training speakers.
Every task (fold, seed) is a complete run directory R/fold-K/ (R/fold-K-seed-S/ with several
seeds); R/cv.json, R/cv.md and R/plots/cv_folds.png hold the aggregate. A manifest's split
column may name the folds instead (fold1..foldK on every row; then --folds may be left out).

Examples:
  python -m trainer cv --data demo-data --out runs/cv --folds 5
  python -m trainer cv --data demo-data --out runs/cv --folds loso --epochs 20
  python -m trainer cv --data demo-data --out runs/cv --folds 5 --seeds 0,1,2 --parallel 2
  python -m trainer cv --data demo-data --out runs/cv --folds 5 --resume
  python -m trainer cv --data s3://b/data/ --out s3://b/runs/r1/ --folds 5 --task auto
  python -m trainer cv --out s3://b/runs/r1/ --aggregate"""


def add_cv_command(sub, commands: dict) -> None:
    """Add the ``cv`` verb to ``sub`` (argparse subparsers) and its function to ``commands``."""
    from trainer.cli import _add_train_flags

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
    _add_train_flags(p)
    commands["cv"] = cmd_cv
