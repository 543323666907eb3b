"""Where an extraction may read and write: one-line errors before anything is written.

    check_places("media/crema", "data/crema", manifest=None, cache=Path("~/.cache/av-emotion"))
"""

from __future__ import annotations

from pathlib import Path

from trainer.data import MANIFEST_NAME
from trainer.store.uri import is_s3


def check_folder(path: Path, flag: str) -> None:
    """``ValueError`` unless ``path`` is a folder or can be made one: no file in its place or
    above it.

    Example:
        >>> check_folder(Path("notes.txt/out"), "--out")
        Traceback (most recent call last):
        ValueError: --out notes.txt/out: notes.txt is a file, not a folder
    """
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {path}: {p} is a file, not a folder")
            return


def check_places(media: str, out: str, manifest: str | Path | None, cache: Path) -> None:
    """``ValueError`` (one line) for an output or a cache under a file, an output that is the
    media folder (its ``manifest.csv`` would be overwritten, and the clip files mixed with the
    media), or a ``--manifest`` where the output's own manifest goes."""
    if not is_s3(out):
        check_folder(Path(out), "--out")
    if is_s3(media) or is_s3(out):
        check_folder(Path(cache), "--cache-dir")
    if is_s3(media) and is_s3(out):
        same = media.rstrip("/") == out.rstrip("/")
    else:
        same = not is_s3(media) and not is_s3(out) and Path(media).resolve() == Path(out).resolve()
    if same:
        raise ValueError(f"--out {out} is the --media folder: the clip files, extract.json and "
                         f"{MANIFEST_NAME} would be written among the media (a media "
                         f"{MANIFEST_NAME} overwritten); give another --out")
    if manifest and not is_s3(out) and \
            Path(manifest).resolve() == (Path(out) / MANIFEST_NAME).resolve():
        raise ValueError(f"--manifest {manifest} is where the output's own {MANIFEST_NAME} goes: "
                         "give another --out, or move the manifest")
