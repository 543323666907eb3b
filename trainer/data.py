"""Clip feature files: finding them, naming them, loading and checking them (DESIGN.md section 2).

A data set is a folder of ``.npz`` clip files (searched recursively) or a manifest CSV
``path,label,speaker[,split]``. Labels and speakers come from CREMA-D or RAVDESS file names,
else from the manifest. Every clip that cannot be used is skipped with a reason, never dropped
silently; ``load_dataset`` raises ``DataError`` only when nothing usable is left.

Example:
    >>> ds = load_dataset("demo-data")
    >>> len(ds.clips), ds.skipped[:1]
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.errors import DataError  # noqa: F401 - raised here, imported from here by callers
from trainer.store.files import atomic_write_text

LABELS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]

# RAVDESS emotion codes; 02 (calm) and 08 (surprised) are outside the label set.
RAVDESS_EMOTIONS = {"01": "NEU", "03": "HAP", "04": "SAD", "05": "ANG", "06": "FEA", "07": "DIS"}
RAVDESS_EXCLUDED = {"02": "calm", "08": "surprised"}
# RAVDESS vocal channel 02 is song (01 speech): sung lines unpack into the same Actor_NN/
# folders, but the label set and the models are for speech, so songs are excluded and counted.
RAVDESS_SONG = "song"
EXCLUDED = (*RAVDESS_EXCLUDED.values(), RAVDESS_SONG)  # parse_name's answers counted, not skipped

CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

MANIFEST_NAME = "manifest.csv"


@dataclass
class Clip:
    path: str  # relative to the data root (or as the manifest gives it)
    label: int
    speaker: str
    audio: np.ndarray  # (T_a, F_a) float32
    video: np.ndarray  # (T_v, F_v) float32
    audio_t: np.ndarray  # (T_a,) seconds
    video_t: np.ndarray  # (T_v,) seconds
    split: str | None = None  # from a manifest's split column


@dataclass
class Dataset:
    root: str
    clips: list[Clip]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    excluded: Counter = field(default_factory=Counter)  # RAVDESS calm/surprised/song, counted
    # How ``trainer extract`` made the clips (their ``params``: extractor, version, settings),
    # or None when they were not made by it. A checkpoint keeps it, so that ``predict`` on a
    # raw clip extracts exactly as the training data were extracted.
    extraction: dict | None = None

    @property
    def audio_dim(self) -> int:
        return self.clips[0].audio.shape[1]

    @property
    def video_dim(self) -> int:
        return self.clips[0].video.shape[1]


def parse_name(stem: str) -> tuple[str, str] | str | None:
    """(label, speaker) from a CREMA-D or RAVDESS file name stem.

    Returns a string reason for RAVDESS emotions outside the label set and for RAVDESS songs
    (vocal channel 02: ``"song"``), None if the name matches neither data set.

    >>> parse_name("1001_DFA_ANG_XX")
    ('ANG', 'crema-d/1001')
    >>> parse_name("01-01-05-01-01-01-12")
    ('ANG', 'ravdess/12')
    >>> parse_name("01-02-05-01-01-01-12")
    'song'
    """
    m = CREMA_RE.match(stem)
    if m:
        return m.group(3), f"crema-d/{m.group(1)}"
    m = RAVDESS_RE.match(stem)
    if m:
        vocal, code, actor = m.group(2), m.group(3), m.group(7)
        if vocal == "02":
            return RAVDESS_SONG
        if code in RAVDESS_EXCLUDED:
            return RAVDESS_EXCLUDED[code]
        if code not in RAVDESS_EMOTIONS:
            return f"unknown RAVDESS emotion code {code}"
        return RAVDESS_EMOTIONS[code], f"ravdess/{actor}"
    return None


SPLIT_VALUES = ("train", "val", "test")  # a manifest's split column: all empty, or these
FOLD_VALUE = re.compile(r"fold[1-9][0-9]*")  # or, for cv, folds: fold1, fold2, ...


def write_manifest(path: Path, rows) -> None:
    """A manifest CSV ``path,label,speaker,split`` (as ``read_manifest`` reads it) from rows of
    those four values, written whole or not at all."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "speaker", "split"])
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest CSV ``path,label,speaker[,split]``, each with its ``line``.

    Raises:
        DataError: a required column missing, a row with more or fewer fields than the header,
            or a split column that is neither empty on every row nor one of train/val/test on
            every row (a row that names its file and line).
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = {"path", "label", "speaker"} - set(header)
        if missing:
            raise DataError(f"manifest {path} lacks column(s) {', '.join(sorted(missing))}")
        rows = []
        for row in reader:
            # DictReader puts extra fields under the key None and fills missing ones with None
            extra, absent = len(row.get(None, [])), list(row.values()).count(None)
            if extra or absent:
                raise DataError(f"manifest {path} line {reader.line_num}: "
                                f"{len(header) + extra - absent} field(s), the header has "
                                f"{len(header)} ({','.join(header)})")
            rows.append(dict(row, line=reader.line_num))
    _check_split_column(path, rows)
    return rows


def _check_split_column(path: Path, rows: list[dict]) -> None:
    """A split column fixes the split only when every row has one; one bad or missing value
    would otherwise silently hand the whole split to the computed one (issue 12, item 16)."""
    values = [(row.get("split") or "").strip() for row in rows]
    if not any(values):
        return  # no split column, or empty on every row: the split is computed
    # ``cv`` reads fold1..foldK instead (trainer.cv.folds.manifest_folds): all folds, or none
    folds = all(FOLD_VALUE.fullmatch(v) for v in values)
    for row, value in zip(rows, values):
        if not (FOLD_VALUE.fullmatch(value) if folds else value in SPLIT_VALUES):
            shown = repr(value) if value else "empty"
            raise DataError(f"manifest {path} line {row['line']}: split is {shown}; use one of "
                            f"{'/'.join(SPLIT_VALUES)} on every row (or fold1..foldK for cv), "
                            "or leave the column empty on every row for a computed split")


def _timestamps(z, key: str, n: int, duration: float) -> np.ndarray:
    """Per-frame times in seconds: the file's own, else frames spread evenly over the clip."""
    if key in z.files:
        t = np.asarray(z[key], dtype=np.float32).reshape(-1)
        if t.shape[0] == n and np.all(np.isfinite(t)):
            return t
    return ((np.arange(n, dtype=np.float32) + 0.5) / n * duration).astype(np.float32)


def read_clip(path: Path, audio_fps: float = 100.0) -> tuple[np.ndarray, ...] | str:
    """(audio, video, audio_t, video_t) from one ``.npz``, or a reason it cannot be used."""
    return read_clip_file(path, audio_fps)[0]


def read_clip_file(path: Path, audio_fps: float = 100.0
                   ) -> tuple[tuple[np.ndarray, ...] | str, dict | None]:
    """``read_clip``'s answer and the file's extraction params (``read_extraction``), from one
    opening of the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return _arrays(z, audio_fps), _extraction(z)
    except Exception as e:  # a broken zip, a truncated file, a pickle: all mean unusable
        return f"unreadable: {type(e).__name__}: {str(e)[:120]}", None


def _arrays(z, audio_fps: float) -> tuple[np.ndarray, ...] | str:
    for key in ("audio_features", "video_features"):
        if key not in z.files:
            return f"missing {key}"
    a = np.asarray(z["audio_features"])
    v = np.asarray(z["video_features"])
    for name, x in (("audio", a), ("video", v)):
        if x.ndim != 2:
            return f"{name}_features has shape {x.shape}, expected [T, F]"
        if x.shape[0] == 0 or x.shape[1] == 0:
            return f"{name}_features is empty"
        if not np.issubdtype(x.dtype, np.number):
            return f"{name}_features is not numeric ({x.dtype})"
        if not np.all(np.isfinite(x)):
            return f"{name}_features has non-finite values"
    # Missing timestamps: both streams span the same clip, whose length the audio gives.
    duration = a.shape[0] / audio_fps
    at = _timestamps(z, "audio_timestamps", a.shape[0], duration)
    vt = _timestamps(z, "video_timestamps", v.shape[0], duration)
    return a.astype(np.float32), v.astype(np.float32), at, vt


EXTRACTOR = "trainer.extract"  # the ``params["extractor"]`` of clip files ``extract`` wrote


def read_extraction(path: Path) -> dict | None:
    """The ``params`` of a clip file written by ``trainer extract`` (extractor, version,
    settings, audio and video extractor info), or None for a clip made otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return _extraction(z)
    except Exception:  # unreadable: not ours (read_clip reports a broken file)
        return None


def _extraction(z) -> dict | None:
    try:
        params = json.loads(str(z["params"])) if "params" in z.files else None
    except Exception:  # unreadable params: not ours
        return None
    if isinstance(params, dict) and params.get("extractor") == EXTRACTOR \
            and isinstance(params.get("settings"), dict):
        return params
    return None


def _extraction_key(params: dict | None) -> str | None:
    return None if params is None else json.dumps(params["settings"], sort_keys=True)


def _keep_one_extraction(clips: list[Clip], extraction: list[dict | None],
                         skipped: list[dict]) -> tuple[list[Clip], dict | None]:
    """Keep the clips made with the data set's most common extraction settings (clips not made
    by ``extract`` count as one kind): features of other settings mean other things even at
    the same width. The others are skipped with a reason, like a clip of another width."""
    keys = [_extraction_key(p) for p in extraction]
    if not keys:
        return clips, None
    common = Counter(keys).most_common(1)[0][0]
    kept, chosen = [], None
    for c, k, p in zip(clips, keys, extraction):
        if k == common:
            kept.append(c)
            chosen = chosen or p
        else:
            skipped.append({"path": c.path, "reason": (
                "not made by trainer extract, unlike the rest of the data set" if k is None else
                f"extracted with settings {k} unlike the rest of the data set's "
                f"{common or '(not made by trainer extract)'}")})
    return kept, chosen


def _entries(root: Path) -> tuple[list[tuple[Path, str | None, str | None, str | None]], Path]:
    """(file, label, speaker, split) for every clip; label/speaker None means from the name."""
    manifest = root if root.is_file() else root / MANIFEST_NAME
    if manifest.is_file():
        base = manifest.parent
        out = []
        for row in read_manifest(manifest):
            p = Path(row["path"])
            out.append((p if p.is_absolute() else base / p, row["label"].strip(),
                        row["speaker"].strip(), (row.get("split") or "").strip() or None))
        return out, base
    if not root.is_dir():
        raise DataError(f"data path {root} is neither a folder nor a manifest CSV")
    return [(p, None, None, None) for p in sorted(root.rglob("*.npz"))], root


def check_data(root: str | Path) -> None:
    """What a local data set's bad input is, told without reading a clip: the path is missing,
    or its manifest (``root`` itself, or ``root/manifest.csv``) is malformed. ``train`` and
    ``deploy`` call it first, so such input is one line before a run writes or uploads anything.

    Raises:
        DataError: the same line ``load_dataset`` would give.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    manifest = root if root.is_file() else root / MANIFEST_NAME
    if manifest.is_file():
        read_manifest(manifest)


def load_dataset(root: str | Path, audio_fps: float = 100.0, progress=None) -> Dataset:
    """Load and check every clip under ``root`` (a folder or a manifest CSV).

    Args:
        root: folder searched recursively for ``*.npz``, or a manifest CSV (a folder holding
            ``manifest.csv`` uses it).
        audio_fps: audio frame rate, used only for clips without timestamps.
        progress: optional callable wrapping an iterable (a progress bar).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    entries, base = _entries(root)
    if not entries:
        raise DataError(f"no clip files (*.npz) under {root}")
    clips, skipped, excluded, extraction = [], [], Counter(), []
    it = progress(entries) if progress else entries
    for path, label, speaker, split in it:
        rel = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        if label is None:
            parsed = parse_name(path.stem)
            if parsed is None:
                skipped.append({"path": rel, "reason": "file name is neither CREMA-D nor "
                                "RAVDESS, and there is no manifest row"})
                continue
            if isinstance(parsed, str):
                if parsed in EXCLUDED:
                    excluded[parsed] += 1
                else:
                    skipped.append({"path": rel, "reason": parsed})
                continue
            label, speaker = parsed
        if label not in LABELS:
            skipped.append({"path": rel, "reason": f"label {label!r} outside {' '.join(LABELS)}"})
            continue
        got, params = (read_clip_file(path, audio_fps) if path.exists()
                       else ("file not found", None))
        if isinstance(got, str):
            skipped.append({"path": rel, "reason": got})
            continue
        a, v, at, vt = got
        clips.append(Clip(rel, LABELS.index(label), speaker, a, v, at, vt, split))
        extraction.append(params)
    clips, params = _keep_one_extraction(clips, extraction, skipped)
    clips = _drop_odd_widths(clips, skipped)
    if not clips:
        shown = (f", {sum(excluded.values())} excluded (RAVDESS calm/surprised/song)"
                 if excluded else "")
        raise DataError(f"no usable clips under {root}: {len(skipped)} skipped "
                        f"({_top_reason(skipped)}){shown}")
    return Dataset(str(root), clips, skipped, excluded, params)


def _drop_odd_widths(clips: list[Clip], skipped: list[dict]) -> list[Clip]:
    """Keep the clips whose feature widths are the data set's most common ones."""
    if not clips:
        return clips
    wa = Counter(c.audio.shape[1] for c in clips).most_common(1)[0][0]
    wv = Counter(c.video.shape[1] for c in clips).most_common(1)[0][0]
    kept = []
    for c in clips:
        if c.audio.shape[1] != wa or c.video.shape[1] != wv:
            skipped.append({"path": c.path, "reason": f"feature width audio {c.audio.shape[1]}, "
                            f"video {c.video.shape[1]} unlike the data set's {wa}, {wv}"})
        else:
            kept.append(c)
    return kept


def _top_reason(skipped: list[dict]) -> str:
    if not skipped:
        return "none"
    reason, n = Counter(s["reason"].split(":")[0] for s in skipped).most_common(1)[0]
    return f"most often: {reason} ({n})"


def check_widths(ds: Dataset, audio_dim: int, video_dim: int) -> None:
    """Skip clips whose widths differ from a trained model's (evaluate, predict)."""
    kept = []
    for c in ds.clips:
        if c.audio.shape[1] != audio_dim or c.video.shape[1] != video_dim:
            ds.skipped.append({"path": c.path, "reason": f"feature width audio "
                               f"{c.audio.shape[1]}, video {c.video.shape[1]}; the model "
                               f"takes {audio_dim}, {video_dim}"})
        else:
            kept.append(c)
    if not kept:
        raise DataError(f"no clip in {ds.root} has the model's feature widths "
                        f"(audio {audio_dim}, video {video_dim})")
    ds.clips = kept


def data_stats(clips: list[Clip]) -> dict:
    """Clips per class and speakers, for summary.json."""
    return {
        "clips": len(clips),
        "per_class": {LABELS[i]: n for i, n in sorted(Counter(c.label for c in clips).items())},
        "speakers": sorted({c.speaker for c in clips}),
    }


def clip_params_json(params: dict) -> np.ndarray:
    """The optional ``params`` entry of a clip file: JSON text as a numpy string."""
    return np.array(json.dumps(params))
