"""``make tensorboard``: TensorBoard over run folders, on this machine's loopback only.

    python -m trainer tensorboard                         # results/ (what `make results` fetches)
    python -m trainer tensorboard runs/cv runs/ablation   # local run folders, side by side
    make tensorboard RUNS='runs/cv runs/robustness'

Every run writes its events in ``RUN/tb/`` (trainer/tracking.py), so a folder of runs (a
cross-validation's ``fold-K/``, an ablation's ``VARIANT-seed-S/``, the robustness suite's
``PROFILE/VARIANT-seed-S/``) shows one TensorBoard run per run directory, named by its path.
TensorBoard runs as a child process in a session of its own, on a free port of 127.0.0.1: Ctrl-C
stops it (through us) and leaves no server behind. The monitor's menu uses ``Board`` directly.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from trainer.ops import OpsError

DEFAULT = "results"
START_SECONDS = 90.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logdir_args(paths: list[Path]) -> list[str]:
    """TensorBoard's flags for ``paths``: one folder as ``--logdir``; several as ``--logdir_spec``
    with each named by its folder (``cv:runs/cv,ablation:runs/ablation``)."""
    if len(paths) == 1:
        return ["--logdir", str(paths[0])]
    names: dict[str, Path] = {}
    for p in paths:
        name, n = p.resolve().name or "root", 2
        while name in names:
            name, n = f"{p.resolve().name}-{n}", n + 1
        names[name] = p
    return ["--logdir_spec", ",".join(f"{k}:{v}" for k, v in names.items())]


def check_paths(paths: list[str]) -> list[Path]:
    """The folders to serve (default: results/); an ``OpsError`` if one is missing or there is
    no tensorboard to serve them with."""
    if importlib.util.find_spec("tensorboard") is None:
        raise OpsError("tensorboard is not installed: pip install -e '.[tracking]' (make setup "
                       "installs it)")
    folders = [Path(p) for p in (paths or [DEFAULT])]
    for p in folders:
        if not p.is_dir():
            hint = (": `make results` downloads runs there; or name run folders, e.g. "
                    "python -m trainer tensorboard runs/cv") if not paths else ""
            raise OpsError(f"no such folder: {p}{hint}")
    return folders


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


class Board:
    """One TensorBoard process serving ``folders`` on ``127.0.0.1:port``.

    Example:
        >>> b = Board([Path("runs/cv")]); url = b.start()   # http://127.0.0.1:PORT/
        >>> b.stop()
    """

    def __init__(self, folders: list[Path], port: int | None = None):
        self.folders, self.port = folders, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # its stderr: quoted if it fails to start

    def start(self, timeout: float = START_SECONDS) -> str:
        """Start TensorBoard and wait until its data API answers; its address."""
        cmd = [sys.executable, "-m", "tensorboard.main", *logdir_args(self.folders),
               "--host", "127.0.0.1", "--port", str(self.port), "--load_fast", "false",
               "--reload_interval", "5"]
        # A session of its own: a terminal's Ctrl-C reaches us, and we stop it in order.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace").strip().splitlines()[-1:]
                raise OpsError(f"tensorboard exited at start ({self.proc.returncode}): "
                               f"{tail[0] if tail else 'no output'}")
            try:
                with urllib.request.urlopen(self.url + "data/runs", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise OpsError(f"tensorboard did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def wait(self) -> int | None:
        """Until Ctrl-C (None) or TensorBoard's own end (its exit code); then stops it."""
        try:
            return self.proc.wait()
        except KeyboardInterrupt:
            return None
        finally:
            self.stop()


def serve(paths: list[str], port: int | None = None, say=print) -> int:
    """Serve ``paths`` until Ctrl-C; 0 then."""
    folders = check_paths(paths)
    for f in folders:
        if not event_files(f):
            say(f"warning: no TensorBoard event files under {f} (a run writes them in RUN/tb/; "
                "runs made before tracking have none)")
    board = Board(folders, port)

    def interrupt(signum, frame):  # SIGTERM, SIGHUP: stop TensorBoard too, as Ctrl-C does
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return watch(board, folders, say)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def watch(board: Board, folders: list[Path], say) -> int:
    try:
        url = board.start()
    except KeyboardInterrupt:
        board.stop()
        return 0
    say(f"TensorBoard on {url} serving {', '.join(map(str, folders))} (Ctrl-C: stop)")
    sys.stdout.flush()
    code = board.wait()
    if code is not None:
        raise OpsError(f"tensorboard ended by itself (exit {code})")
    say("tensorboard stopped")
    return 0
