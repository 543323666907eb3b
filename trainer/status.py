"""status.json, the run's heartbeat (DESIGN.md section 4): the state the training loop reports,
rewritten by a thread of its own at least every ``HEARTBEAT_SECONDS``, with the process's
resource use; the same thread publishes the run's log now and then.

Example:
    >>> status = Status(RunDir("runs/demo"), epochs_max=50)
    >>> status.start(); status.update(state="training", epoch=1); status.stop()
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Callable

import numpy as np
import psutil
import structlog
import torch

from trainer import __version__, logs
from trainer.store.rundir import RunDir

log = structlog.get_logger()

HEARTBEAT_SECONDS = 15  # status.json is rewritten at least this often (contract: 30 s)
LOG_PUBLISH_SECONDS = 60


class Status:
    """status.json: the state the loop reports, rewritten by a heartbeat thread.

    Each document is built and written under one lock, so a heartbeat's write can never land
    after a newer state's; ``stop`` joins the thread, so nothing it writes comes after the
    final state (done, stopped, failed) that the loop writes next.
    """

    def __init__(self, run: RunDir, epochs_max: int,
                 relay: Callable[[dict], None] | None = None):
        self.run, self.lock, self.relay = run, threading.RLock(), relay  # relay: each update
        self.state = {"state": "starting", "epoch": 0, "epochs_max": epochs_max, "best": None,
                      "eta_seconds": None, "eta_early_stop_seconds": None, "pid": os.getpid()}
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._last_log_publish = time.monotonic()

    def update(self, **kw) -> None:
        with self.lock:
            self.state.update(kw)
            self.write()
        if self.relay is not None:  # an ensemble's member tells the ensemble's status
            self.relay(kw)

    def resources(self) -> dict:
        mem = self.proc.memory_info()
        disk = psutil.disk_usage(str(self.run.local))
        return {"cpu_percent": self.proc.cpu_percent(None), "rss_mb": round(mem.rss / 2**20, 1),
                "system_memory_percent": psutil.virtual_memory().percent,
                "disk_free_gb": round(disk.free / 2**30, 2), "threads": torch.get_num_threads()}

    def write(self) -> None:
        # Under the lock through the write: a local file and a queued upload, never a wait on S3.
        with self.lock:
            doc = dict(self.state, updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       resources=self.resources())
            try:
                self.run.write_json("status.json", doc)
            except Exception as e:  # a heartbeat must never kill the run
                log.warning("status_write_failed", error=str(e)[:200])

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.write()
            if time.monotonic() - self._last_log_publish >= LOG_PUBLISH_SECONDS:
                self._last_log_publish = time.monotonic()
                logs.flush()
                try:
                    self.run.publish("train.log")
                except Exception as e:
                    log.warning("log_publish_failed", error=str(e)[:200])

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End the heartbeat and wait for it, so its last write is behind us."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("heartbeat_not_stopped", waited_seconds=timeout)


def eta(epoch_seconds: list[float], epochs_left: int, patience_left: int) -> dict:
    """Seconds to the epoch cap, and to the earliest early stop, from the last 5 epoch times."""
    per_epoch = float(np.mean(epoch_seconds[-5:] or [0.0]))
    return {"eta_seconds": round(per_epoch * epochs_left, 1),
            "eta_early_stop_seconds": round(per_epoch * min(epochs_left, patience_left), 1)}


def timings(t0: float, history: list[dict], members: list[dict]) -> dict:
    """summary.json's ``timings``: since ``t0``, in training (a run's epochs, an ensemble's
    members'; trainer.train_members), and per epoch (an ensemble's: 0, it has none itself)."""
    seconds = [h["epoch_seconds"] for h in history]
    return {"total_seconds": round(time.time() - t0, 2),
            "train_seconds": round(sum(seconds) + sum(m["train_seconds"] for m in members), 2),
            "mean_epoch_seconds": round(float(np.mean(seconds or [0.0])), 3)}


def versions() -> dict:
    return {"trainer": __version__, "python": platform.python_version(),
            "torch": str(torch.__version__), "numpy": str(np.__version__),
            "machine": platform.machine(), "cpus": os.cpu_count()}
