"""trainer.extract.openface on CSVs written here with OpenFace 2.x FeatureExtraction's columns.

    .venv/bin/python -m pytest tests/test_openface.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.errors import MediaError
from trainer.extract.openface import openface_csv, read_openface

AUS_R = ["01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23",
         "25", "26", "45"]
AUS_C = AUS_R[:-1] + ["28", "45"]  # presence has AU28, intensity has not


def openface_header() -> list[str]:
    """FeatureExtraction's columns with its default outputs, in its order."""
    cols = ["frame", "face_id", "timestamp", "confidence", "success"]
    cols += [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"] + ["gaze_angle_x", "gaze_angle_y"]
    cols += [f"eye_lmk_{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(56)]
    cols += [f"pose_T{a}" for a in "xyz"] + [f"pose_R{a}" for a in "xyz"]
    cols += [f"{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(68)]
    cols += ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
    cols += [f"AU{a}_r" for a in AUS_R] + [f"AU{a}_c" for a in AUS_C]
    return cols


def write_openface(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    """A CSV as OpenFace writes it: ', ' between fields; unnamed columns get the row number."""
    header = header or openface_header()
    lines = [", ".join(header)]
    for i, row in enumerate(rows):
        values = {"frame": i + 1, "face_id": 0, "timestamp": round(i / 30, 3)} | row
        lines.append(", ".join(str(values.get(c, round(0.01 * i, 3))) for c in header))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_au_gaze_and_rotation_and_drops_untracked_frames_keeping_times(tmp_path):
    rows = [{"confidence": 0.98, "success": 1, "AU12_r": 3.5, "AU12_c": 1, "pose_Rz": 0.1},
            {"confidence": 0.98, "success": 0},   # lost track: dropped
            {"confidence": 0.40, "success": 1},   # not sure of it: dropped
            {"confidence": 0.90, "success": 1, "gaze_angle_x": -0.2, "pose_Tx": 55.0}]
    csv = write_openface(tmp_path / "1001_DFA_ANG_XX.csv", rows)
    feats, times, names = read_openface(csv)
    assert feats.dtype == np.float32 and feats.shape == (2, 46)
    assert len(names) == 46 and names[:2] == ["gaze_0_x", "gaze_0_y"]
    assert "pose_Rz" in names and "AU28_c" in names and "AU45_r" in names
    assert not any(n.startswith(("pose_T", "eye_lmk", "p_", "x_")) for n in names)  # position
    np.testing.assert_allclose(times, [0.0, 0.1])  # frames 1 and 4 at 30 fps: their own times
    col = {n: i for i, n in enumerate(names)}
    assert feats[0, col["AU12_r"]] == 3.5 and feats[0, col["AU12_c"]] == 1
    assert feats[0, col["pose_Rz"]] == pytest.approx(0.1)
    assert feats[1, col["gaze_angle_x"]] == pytest.approx(-0.2)
    # The threshold is the caller's: at 0.3 the unsure frame is kept too.
    assert read_openface(csv, min_confidence=0.3)[0].shape == (3, 46)


def test_several_faces_keep_the_one_tracked_longest(tmp_path):
    rows = [{"confidence": 0.9, "success": 1, "face_id": 1, "timestamp": 0.0},
            {"confidence": 0.9, "success": 1, "face_id": 0, "timestamp": 0.0},
            {"confidence": 0.9, "success": 1, "face_id": 0, "timestamp": 0.033}]
    feats, times, _ = read_openface(write_openface(tmp_path / "m.csv", rows))
    assert len(feats) == 2 and list(times) == [0.0, 0.033]


@pytest.mark.parametrize("text, reason", [
    ("", "is empty"),
    ("frame,face_id,timestamp\n1,0,0.0\n", "not an OpenFace FeatureExtraction CSV"),
    (None, "line 3"),  # a short row
    ("frame, timestamp, confidence, success, AU12_r\n1, 0.0, 0.9, 1, high\n", "not a number"),
    ("frame, timestamp, confidence, success, AU12_r\n1, 0.5, 0.9, 1, 1\n2, 0.1, 0.9, 1, 1\n",
     "timestamps do not increase"),
])
def test_a_bad_csv_is_one_line_media_error(tmp_path, text, reason):
    path = tmp_path / "bad.csv"
    if text is None:
        write_openface(path, [{"confidence": 0.9, "success": 1}] * 3)
        lines = path.read_text().splitlines()
        lines[2] = lines[2].rsplit(",", 5)[0]
        path.write_text("\n".join(lines))
    else:
        path.write_text(text)
    with pytest.raises(MediaError, match=reason) as err:
        read_openface(path)
    assert "\n" not in str(err.value)


def test_a_missing_csv_is_media_error(tmp_path):
    with pytest.raises(MediaError, match="cannot read OpenFace CSV"):
        read_openface(tmp_path / "nope.csv")


def test_openface_csv_finds_the_stem_here_or_in_a_speaker_folder(tmp_path):
    (tmp_path / "Actor_12").mkdir()
    a = write_openface(tmp_path / "1001_DFA_ANG_XX.csv", [])
    b = write_openface(tmp_path / "Actor_12" / "01-01-05-01-01-01-12.csv", [])
    assert openface_csv(tmp_path, "1001_DFA_ANG_XX") == a
    assert openface_csv(tmp_path, "01-01-05-01-01-01-12") == b
    assert openface_csv(tmp_path, "1002_DFA_ANG_XX") is None
