"""Running a cross-validation's tasks: one (a Batch child), all in turn, or several at once as
processes; then the aggregate (``trainer.cv.report``).

    python -m trainer cv --data demo-data --out runs/cv --folds 5
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --seeds 0,1,2 --parallel 2
    python -m trainer cv --data demo-data --out runs/cv --folds 5 --resume
    python -m trainer cv --data s3://b/data/ --out s3://b/runs/r1/ --folds 5 --task auto  # Batch
    python -m trainer cv --out s3://b/runs/r1/ --aggregate

Each task is a complete run directory ``R/fold-K/`` (``R/fold-K-seed-S/`` with several seeds)
whose split is the fold's; a task whose ``summary.json`` exists is done. Its ``cv-task.json``
records the plan, the settings and a fingerprint of the data it was started with: a resume (or
a Batch retry) with other ones is refused, and a folder of another plan is never counted. One
process at a time writes a task (``trainer.cv.lock``). With ``--media``, the media are
extracted once, before the plan (``trainer.train_media``); the tasks then read the clips.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, replace

import structlog

from trainer import logs
from trainer.cv.lock import task_lock
from trainer.cv.parallel import run_parallel
from trainer.cv.plan import (
    Task,
    data_fingerprint,
    parse_folds,
    parse_seeds,
    plan,
    record_differences,
    task_from_env,
    task_record,
)
from trainer.cv.report import aggregate, task_files
from trainer.data import load_dataset
from trainer.errors import DataError
from trainer.store.rundir import RunDir
from trainer.store.uri import has, join, read_json, resolve_data
from trainer.train import train
from trainer.train_media import extract_media

log = structlog.get_logger()


def state(out: str, task: Task) -> str:
    """done (summary.json), partial (a checkpoint to resume from) or new."""
    where = join(out, task.dir)
    if has(join(where, "summary.json")):
        return "done"
    return "partial" if has(join(where, "checkpoints/last.pt")) else "new"


def check_record(out: str, task: Task, record: dict, stored: dict | None) -> None:
    """Refuse, in one line, a task directory started with another plan, settings or data."""
    diff = record_differences(stored, record)
    if diff:
        raise DataError(f"{join(out, task.dir)} was started with another plan, other settings "
                        f"or other data ({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''})"
                        "; rerun with the settings it was made with, or choose another --out")


def run_task(cfg, task: Task, settings: dict) -> dict:
    """Train one task to the end (resuming its own checkpoint if it has one); its summary.

    ``cfg`` is the cv's TrainConfig; the task's run directory, seed and split replace its own.
    The task directory is held by this process alone meanwhile, and one started with another
    plan, other settings or other data is refused.
    """
    out = join(cfg.out, task.dir)
    record = task_record(task, settings)
    stored = join(out, "cv-task.json")
    if state(cfg.out, task) == "done":  # nothing to write: no lock
        check_record(cfg.out, task, record, read_json(stored) if has(stored) else None)
        return read_json(join(out, "summary.json"))
    with task_lock(out):
        if has(stored):
            check_record(cfg.out, task, record, read_json(stored))
        st = state(cfg.out, task)
        if st == "done":  # the writer we waited for finished it
            return read_json(join(out, "summary.json"))
        if st == "partial" and not has(stored):
            check_record(cfg.out, task, record, None)
        # The task's place in the plan, so that an aggregate of the folds alone (Batch) knows it.
        run = RunDir(out)
        run.write_json("cv-task.json", record)
        run.close()
        return train(replace(cfg, out=out, seed=task.seed, resume=st == "partial"),
                     split=task.split)


def test_metrics(summary: dict) -> dict:
    """The test accuracy, macro-F1 and UAR of a summary, rounded for a log line."""
    return {k: round(summary["test"][k], 4) for k in ("accuracy", "macro_f1", "uar")}


def check_out(out: str, tasks: list[Task], records: dict[str, dict], resume: bool) -> dict:
    """The states of the plan's tasks in ``out``; DataError, one line, when ``out`` holds task
    folders and no --resume was asked, or a folder of another plan, settings or data."""
    files = task_files(out)
    if files and not resume:
        started = sorted(files)
        raise DataError(f"{out} already holds cv tasks ({', '.join(started[:3])}"
                        f"{', ...' if len(started) > 3 else ''}); pass --resume to continue "
                        "them, or choose another --out")
    stale = sorted(d for d in files if d not in records)
    if stale:
        raise DataError(f"--resume: {out} holds {', '.join(stale[:3])}"
                        f"{', ...' if len(stale) > 3 else ''}, which this plan does not have "
                        f"({len(tasks)} tasks: {tasks[0].dir} to {tasks[-1].dir}); rerun with "
                        "the settings they were made with, or choose another --out")
    for t in tasks:
        if t.dir in files:
            got = files[t.dir]
            check_record(out, t, records[t.dir],
                         read_json(got["cv-task.json"]) if "cv-task.json" in got else None)
    return {t.index: ("done" if "summary.json" in files.get(t.dir, {}) else "partial"
                      if "checkpoints/last.pt" in files.get(t.dir, {}) else "new")
            for t in tasks}


def run_cv(cfg, args) -> int:
    """The verb: (extract,) plan, then the tasks (one, all in turn, or in parallel), then the
    aggregate."""
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
        if cfg.media:
            raise ValueError("--task with --media: every task would extract the same media; "
                             "extract them once (python -m trainer extract, or cv --media without "
                             "--task), then give the clips as --data")
        index = task_from_env() if args.task == "auto" else args.task
        if not re.fullmatch(r"\d+", str(index)):
            raise ValueError(f"--task must be a task index (0, 1, ...) or auto, not {index!r}")
        index = int(index)
    if cfg.media:  # once, here, before the plan: the folds are made from every extracted clip
        extract_media(cfg.media, cfg.data, cfg.extract_args, cfg.cache_dir)
        cfg = replace(cfg, media="", extract_args="")
    ds = load_dataset(resolve_data(cfg.data, cfg.cache_dir), cfg.audio_fps)
    setting, tasks = plan(ds.clips, folds, seeds, cfg.val_fraction)
    train_flags = {k: v for k, v in asdict(cfg).items()
                   if k not in ("data", "out", "resume", "threads", "cache_dir", "seed", "split",
                                "test_fraction", "media", "extract_args")}
    settings = {"folds": setting, "seeds": seeds, "tasks_total": len(tasks), "data": cfg.data,
                "data_sha256": data_fingerprint(ds.clips), "train": train_flags}
    del ds  # each task loads its own copy
    records = {t.dir: task_record(t, settings) for t in tasks}
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
    states = check_out(cfg.out, tasks, records, cfg.resume)
    todo = [t for t in tasks if states[t.index] != "done"]
    log.info("cv_plan", folds=setting, seeds=seeds, tasks=len(tasks), done=len(tasks) - len(todo),
             parallel=parallel, out=cfg.out)

    def task_line(t: Task, seconds: float) -> None:
        log.info("cv_task_end", task=t.index, dir=t.dir, seconds=seconds,
                 **test_metrics(read_json(join(join(cfg.out, t.dir), "summary.json"))))

    failures = []
    if parallel == 1:
        for t in todo:
            log.info("cv_task_start", task=t.index, dir=t.dir, state=states[t.index])
            t0 = time.monotonic()
            run_task(cfg, t, settings)
            logs.setup(None)  # the task's run pointed the log at its own train.log
            task_line(t, round(time.monotonic() - t0, 1))
    else:
        failures = run_parallel(cfg, args, todo, parallel, task_line)
    cv = aggregate(cfg.out, records)
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
