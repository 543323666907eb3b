"""Where a run's files live: a local folder, optionally mirrored to an ``s3://`` prefix.

The trainer always writes into a local folder (for an ``s3://`` run directory, a staging
folder), atomically: a temp file in the same folder, then ``os.replace``. After each write the
file is *published*, which for a local run directory is nothing and for an S3 one queues an
upload of the whole file (sent by the mirror's own thread: a slow or hanging S3 never holds up
the caller), so a reader never sees half a file in either place.

Example:
    >>> run = RunDir("runs/demo")
    >>> run.write_json("config.json", {"epochs": 50})
    >>> run.append_line("metrics.jsonl", '{"epoch": 1}')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainer.store.files import atomic_write_bytes, torch_bytes
from trainer.store.uri import is_s3


class RunDir:
    """A run directory (DESIGN.md section 4) at a local path or an ``s3://`` prefix.

    Args:
        uri: a folder, or ``s3://bucket/prefix``.
        staging: local folder that mirrors an S3 run directory (default: a temp folder).
    """

    def __init__(self, uri: str | os.PathLike, staging: str | os.PathLike | None = None):
        self.uri = str(uri)
        self.remote = None
        self.temp: str | None = None
        if is_s3(self.uri):
            from trainer.store.mirror import (
                S3Mirror,  # boto3: loaded only where S3 is used
            )

            if staging is None:  # a folder of its own, removed by close once all is on S3
                staging = self.temp = tempfile.mkdtemp(prefix="run-staging-")
            self.local = Path(staging)
            self.remote = S3Mirror(self.uri, self.local)
        else:
            self.local = Path(self.uri)
        self.local.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return self.uri

    def path(self, name: str) -> Path:
        return self.local / name

    def exists(self, name: str) -> bool:
        """True if the file exists here, fetching it from the remote first if there is one."""
        if self.remote is not None and not self.path(name).exists():
            self.remote.fetch(name)
        return self.path(name).exists()

    def publish(self, name: str) -> None:
        """Queue a finished local file for the remote, if any; returns at once."""
        if self.remote is not None:
            self.remote.upload(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path(name), data)
        self.publish(name)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())

    def save_torch(self, name: str, obj: Any) -> None:
        self.write_bytes(name, torch_bytes(obj))

    def append_line(self, name: str, line: str) -> None:
        """Append one line; the file is rewritten whole so readers never see a partial line."""
        p = self.path(name)
        old = p.read_bytes() if p.exists() else b""
        self.write_bytes(name, old + line.rstrip("\n").encode("utf-8") + b"\n")

    def close(self, timeout: float = 300.0) -> None:
        """Publish whatever is still pending (the log, plots), waiting at most ``timeout``
        seconds for S3; raises ``S3Error`` naming what is still pending then. Then removes the
        temp staging folder of an S3 run directory, since all of it is on S3: every run to
        ``s3://`` from a workstation left its checkpoints in /tmp. A folder whose upload failed
        stays: it holds what S3 lacks."""
        if self.remote is not None:
            self.remote.flush(timeout)
            if self.temp is not None:
                detach_file_logs(Path(self.temp))
                shutil.rmtree(self.temp, ignore_errors=True)


def detach_file_logs(folder: Path) -> None:
    """Close the logging file handlers that write into ``folder``, which is about to go: a closed
    handler left on the root logger opens its file again at the next record, in a folder that
    no longer exists (a process that trains twice, or a test suite)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        name = getattr(h, "baseFilename", None)
        if name and Path(name).is_relative_to(folder):
            root.removeHandler(h)
            h.close()
