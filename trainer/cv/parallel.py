"""``cv --parallel N``: the tasks as child processes (``cv --task I``), N at a time.

    python -m trainer cv --data demo-data --out runs/cv --folds 5 --parallel 2

The children die with their parent: each asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) for
SIGTERM when the parent dies, by SIGKILL too, and then saves its checkpoint at the next batch
as for any SIGTERM. Each leads its own process group (so a terminal's Ctrl-C reaches the parent
alone, which passes it on), and every signal goes to the whole group. A task directory is
locked by the child writing it (``trainer.cv.lock``), so an orphan that is still saving cannot
interleave with the child of a resumed run.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import structlog

from trainer.cv.plan import Task
from trainer.errors import Stopped
from trainer.store.uri import has, join

log = structlog.get_logger()

POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The parent stops on these: each is passed to the running tasks as SIGTERM (a checkpoint).
STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}


def die_with(parent: int):
    """A ``preexec_fn``: SIGTERM to this child when ``parent`` dies (Linux; elsewhere only the
    process group is left to stop it)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def child_command(config_file: str, cfg, args, index: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "cv", "--config", config_file, "--data",
           cfg.data, "--out", cfg.out, "--seeds", args.seeds, "--task", str(index),
           "--threads", str(threads)]
    return cmd + (["--folds", str(args.folds)] if args.folds is not None else [])


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the child's process group (the child and anything it started)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_advice(out: str, stopped: list[Task]) -> str:
    """What a stop leaves, true for each task that was running: a checkpoint to resume from,
    or none yet (a task stopped while loading its data starts over)."""
    saved = [t.dir for t in stopped if has(join(join(out, t.dir), "checkpoints/last.pt"))]
    fresh = [t.dir for t in stopped if t.dir not in saved]
    if not stopped:
        return "no task had started; the same command with --resume runs them"
    if not fresh:
        return (f"checkpoint saved for {', '.join(saved)}; continue with --resume")
    said = (f"checkpoint saved for {', '.join(saved)}; " if saved else "")
    return (f"{said}no checkpoint yet for {', '.join(fresh)} (stopped before its first "
            "batch: it starts over); continue with --resume")


def run_parallel(cfg, args, tasks: list[Task], parallel: int, task_line) -> list[str]:
    """Run ``tasks`` as subprocesses (``cv --task I``), ``parallel`` at a time, each with
    ``cores / parallel`` torch threads; a line per task start and end (``task_line(task,
    seconds)`` logs a finished one). Returns the failures.

    SIGTERM, SIGHUP or Ctrl-C is passed on to the running tasks, which save their checkpoints;
    then ``Stopped`` is raised, saying which tasks have one (``--resume`` continues).
    """
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // parallel)
    stop: list[int] = []
    old = {s: signal.signal(s, lambda signum, _: stop.append(signum)) for s in STOP_SIGNALS}
    failures, running, pending, stopped = [], {}, list(tasks), []
    me = os.getpid()
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
                    proc = subprocess.Popen(child_command(config_file, cfg, args, t.index,
                                                          threads),
                                            stdout=out_file, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with(me))
                    running[t.index] = (t, proc, out_file, time.monotonic())
                    log.info("cv_task_start", task=t.index, dir=t.dir, threads=threads,
                             test_speakers=len(t.test_speakers))
                if stop and not stopped:
                    for t, proc, _, _ in running.values():
                        if proc.poll() is None:
                            signal_group(proc, signal.SIGTERM)
                            stopped.append(t)
                time.sleep(POLL_SECONDS)
                for i, (t, proc, out_file, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[i]
                    seconds = round(time.monotonic() - t0, 1)
                    if proc.returncode == 0:
                        task_line(t, seconds)
                    elif not stop:
                        out_file.seek(0)
                        tail = [x for x in out_file.read().decode(errors="replace").splitlines()
                                if x.strip()][-1:] or ["(no output)"]
                        failures.append(f"{t.dir} (exit {proc.returncode}: {tail[0][:200]})")
                        log.error("cv_task_failed", task=t.index, dir=t.dir,
                                  exit_code=proc.returncode, seconds=seconds, last_line=tail[0])
                    out_file.close()
        finally:
            for t, proc, out_file, _ in running.values():  # an error here: none outlives us
                if proc.poll() is None:
                    signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        signal_group(proc, signal.SIGKILL)
                out_file.close()
            for s, h in old.items():
                signal.signal(s, h)
    if stop:
        raise Stopped(STOP_SIGNALS.get(signal.Signals(stop[0]), 1),
                      stop_advice(cfg.out, stopped))
    return failures
