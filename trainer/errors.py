"""The exceptions the command line turns into one line and an exit code.

Kept free of heavy imports, so that verbs which never touch torch (the operator's) start fast.
Also the two argparse parsers whose errors are such one-liners.
"""

import argparse
import signal
import sys


class DataError(Exception):
    """Nothing usable to train or evaluate on; the message is one line for the user."""


class CheckpointError(Exception):
    """A checkpoint that cannot be read or is not one of ours; one line for the user."""


EXIT_STOPPED = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number


class Stopped(Exception):
    """A run stopped by a signal after saving its checkpoint; carries the exit code."""

    def __init__(self, code: int, advice: str = "checkpoint saved; continue with --resume"):
        super().__init__(f"stopped by signal, exit code {code}")
        self.code, self.advice = code, advice


def exit_now(signum: int):
    """Leave at once on a second Ctrl-C, wherever the main thread is.

    The signal can land inside any constructor (``np.load`` half-way through opening a
    clip's zip file, say); that object's ``__del__`` then fails on the way out, and Python
    would print its traceback as an "Exception ignored" report. Nothing is lost by leaving
    here (the checkpoint is not being written, or this is not called), so such reports are
    dropped for the rest of this process.
    """
    sys.unraisablehook = lambda unraisable: None
    raise SystemExit(EXIT_STOPPED[signal.Signals(signum)])


class MediaError(Exception):
    """A media file (or OpenFace CSV) that cannot be turned into features; the message is the
    reason ``extract`` lists for the skipped clip (one line)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class RaisingParser(argparse.ArgumentParser):
    """argparse for flags checked ahead of time (a deploy's training or extract args): a bad
    flag raises a one-line ``ValueError`` beginning with ``what`` instead of exiting."""

    def __init__(self, what: str, **kw):
        super().__init__(add_help=False, **kw)
        self.what = what

    def error(self, message):
        raise ValueError(f"{self.what}: {message}")
