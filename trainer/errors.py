"""The exceptions the command line turns into one line and an exit code.

Kept free of heavy imports, so that verbs which never touch torch (the operator's) start fast.
"""


class DataError(Exception):
    """Nothing usable to train or evaluate on; the message is one line for the user."""


class CheckpointError(Exception):
    """A checkpoint that cannot be read or is not one of ours; one line for the user."""


class Stopped(Exception):
    """A run stopped by a signal after saving its checkpoint; carries the exit code."""

    def __init__(self, code: int, advice: str = "checkpoint saved; continue with --resume"):
        super().__init__(f"stopped by signal, exit code {code}")
        self.code, self.advice = code, advice


class MediaError(Exception):
    """A media file (or OpenFace CSV) that cannot be turned into features; the message is the
    reason ``extract`` lists for the skipped clip (one line)."""
