"""Files written whole: a temp file in the same folder, then ``os.replace``, so a reader never
sees half a file. The leaf of ``trainer.store``: the standard library only (torch loaded when a
checkpoint is serialised, so extract's worker processes write files without it).

Example:
    >>> atomic_write_text(Path("runs/demo/config.json"), "{}")
"""

from __future__ import annotations

import hashlib
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


SYNC_INDEX = ".s3-sync-index.json"  # trainer.store.s3's sidecar in a folder synced from S3


def is_temp_name(name: str) -> bool:
    """A file being written (``atomic_write_bytes``'s, or a download's), not a file yet."""
    return name.startswith(".") and name.endswith((".tmp", ".part"))


def walk_files(folder: Path) -> dict[str, Path]:
    """The files under ``folder`` by relative path (``/``-separated), sorted, without files
    still being written and without the S3 sync index."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != SYNC_INDEX and not is_temp_name(p.name)}


def listing_digest(files: dict[str, tuple[int, str]]) -> str:
    """SHA-256 (hex) over ``{relative path: (size, tag)}`` sorted by path: the content of a
    folder or an S3 prefix in one string. With the S3 ETag as the tag (``s3.local_etag`` for a
    local file) a folder and its upload have the same digest.

    Example:
        >>> listing_digest({"a.wav": (10, "0cc175b9c0f1b6a831c399e269772661")})[:12]
        '32ca7eda723b'
    """
    digest = hashlib.sha256()
    for rel, (size, tag) in sorted(files.items()):
        digest.update(f"{rel}\0{size}\0{tag}\n".encode())
    return digest.hexdigest()
