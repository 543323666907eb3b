"""Files written whole: a temp file in the same folder, then ``os.replace``, so a reader never
sees half a file. The leaf of ``trainer.store``: the standard library only (torch loaded when a
checkpoint is serialised, so extract's worker processes write files without it).

Example:
    >>> atomic_write_text(Path("runs/demo/config.json"), "{}")
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def torch_bytes(obj: Any) -> bytes:
    import torch  # here, not at the top: extract's worker processes write files without torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
