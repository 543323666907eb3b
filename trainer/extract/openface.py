"""OpenFace 2.x FeatureExtraction CSVs as face features (``extract --video openface``).

    FeatureExtraction -f clip.mp4 -out_dir openface/      # OpenFace, run by the user
    python -m trainer extract --media M --out D --video openface --openface-csv openface/

    from trainer.extract.openface import read_openface
    feats, times, names = read_openface(Path("openface/1001_DFA_ANG_XX.csv"))

The features most audio-visual emotion papers use, per frame in the CSV's own column order:
gaze (``gaze_0_x`` ... ``gaze_1_z`` unit vectors and ``gaze_angle_x/y`` in radians), head
rotation (``pose_Rx/Ry/Rz``, radians), action-unit intensities (``AU01_r`` ... ``AU45_r``, 0-5)
and presence (``AU01_c`` ... ``AU45_c``, 0/1). Head translation (``pose_Tx/Ty/Tz``,
mm from the camera) is left out: it says where the speaker sits, not what they feel, the way
the other face features are normalised for position and scale. With OpenFace's default output
that is 17 + 18 + 8 + 3 = 46 features.

Frames OpenFace did not track (``success`` 0) or tracked with ``confidence`` below the
threshold are dropped, never zero-filled; the kept frames keep their ``timestamp`` (seconds).
OpenFace writes ``frame, face_id, timestamp, ...``: a space after each comma, handled.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from trainer.errors import MediaError

# Which columns are features, by name; anything else (landmarks, shape parameters, translation)
# is not. The order in the output is the CSV's own.
_FEATURE = re.compile(r"AU\d+_[rc]|gaze_[01]_[xyz]|gaze_angle_[xy]|pose_R[xyz]")
_NEEDED = ("timestamp", "confidence", "success")


def openface_csv(directory: Path, stem: str) -> Path | None:
    """``STEM.csv`` in ``directory``, or one level down (OpenFace run per speaker folder, such
    as RAVDESS's ``Actor_NN/``); None when there is none.

    Example:
        >>> openface_csv(Path("openface"), "1001_DFA_ANG_XX")
        PosixPath('openface/1001_DFA_ANG_XX.csv')
    """
    direct = Path(directory) / f"{stem}.csv"
    if direct.is_file():
        return direct
    return next((p for p in sorted(Path(directory).glob(f"*/{stem}.csv")) if p.is_file()), None)


def read_openface(csv_path: Path, min_confidence: float = 0.8
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features [N, F] float32, timestamps [N] seconds and the F column names of the frames
    OpenFace tracked with at least ``min_confidence``.

    A CSV with several faces (``face_id``, as FaceLandmarkVidMulti writes) keeps the face
    tracked in the most frames: a clip has one speaker.

    Raises:
        MediaError: the file cannot be read, lacks the columns, or holds non-numbers (one line).

    Example:
        >>> feats, times, names = read_openface(Path("openface/1001_DFA_ANG_XX.csv"))
        >>> feats.shape, names[:2], times[:3]
        ((68, 46), ['gaze_0_x', 'gaze_0_y'], array([0.   , 0.033, 0.067]))
    """
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, skipinitialspace=True))  # OpenFace's ", " separators
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MediaError(f"cannot read OpenFace CSV {path.name}: {e}") from None
    if not rows:
        raise MediaError(f"OpenFace CSV {path.name} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in _NEEDED if c not in header]
    names = [h for h in header if _FEATURE.fullmatch(h)]
    if missing or not names:
        what = ", ".join(missing) if missing else "AU, gaze or pose_R"
        raise MediaError(f"{path.name} is not an OpenFace FeatureExtraction CSV: no {what} "
                         "columns")
    body = [r for r in rows[1:] if any(c.strip() for c in r)]  # blank trailing lines
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise MediaError(f"{path.name} line {i + 2}: {len(r)} fields, the header has "
                             f"{len(header)}")
    try:
        table = np.array(body, dtype=np.float64).reshape(len(body), len(header))  # (rows, cols)
    except ValueError as e:
        raise MediaError(f"{path.name}: a value is not a number ({e})") from None
    col = {h: i for i, h in enumerate(header)}
    keep = (table[:, col["success"]] > 0.5) & (table[:, col["confidence"]] >= min_confidence)
    if "face_id" in col and keep.any():
        ids, counts = np.unique(table[keep, col["face_id"]], return_counts=True)
        keep &= table[:, col["face_id"]] == ids[np.argmax(counts)]
    feats = table[keep][:, [col[n] for n in names]].astype(np.float32)  # (N, F)
    times = table[keep, col["timestamp"]]
    if not (np.isfinite(feats).all() and np.isfinite(times).all()):
        raise MediaError(f"{path.name}: non-finite values in tracked frames")
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        raise MediaError(f"{path.name}: timestamps do not increase (several clips in one CSV?)")
    return feats, times.astype(np.float64), names
