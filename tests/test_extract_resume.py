"""A resumed extraction keeps only the clip files this run would make: same settings, same
extractor packages and versions, same OpenFace CSV, kept under this run's --min-face-frames
and --max-seconds; any other file is made again (or removed, when this run skips its clip).

    .venv/bin/python -m pytest tests/test_extract_resume.py -q
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.media import make_crema
from trainer.extract.run import ExtractSettings, extract

CLIP = "1001_DFA_ANG_XX"


@pytest.fixture(scope="module")
def crema(tmp_path_factory) -> Path:
    """One good CREMA-D clip (1 s), its FLV and WAV."""
    root = tmp_path_factory.mktemp("resume")
    made = make_crema(root / "all")
    media = root / "crema"
    for f in (made["face"], root / "all" / "AudioWAV" / f"{CLIP}.wav"):
        target = media / f.relative_to(root / "all")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    return media


def _rewrite_params(path: Path, change) -> None:
    """The clip file as an older package would have made it: its params edited."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    params = json.loads(str(arrays["params"]))
    change(params)
    arrays["params"] = np.array(json.dumps(params))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_a_clip_made_by_another_package_version_is_made_again(crema, tmp_path):
    s = ExtractSettings(video="opencv")
    assert extract(crema, tmp_path, s, workers=1)["written"] == [f"{CLIP}.npz"]
    assert extract(crema, tmp_path, s, workers=1)["already_done"] == [f"{CLIP}.npz"]
    for stream in ("video", "audio"):
        _rewrite_params(tmp_path / f"{CLIP}.npz", lambda p: p[stream].update(version="0.0.1"))
        again = extract(crema, tmp_path, s, workers=1)
        assert again["written"] == [f"{CLIP}.npz"] and again["already_done"] == [], stream


def test_a_higher_min_face_frames_redoes_the_clip_and_removes_what_it_no_longer_keeps(
        crema, tmp_path):
    s = ExtractSettings(video="opencv")
    extract(crema, tmp_path, s, workers=1)
    with np.load(tmp_path / f"{CLIP}.npz") as z:
        faces = len(z["video_timestamps"])
    stricter = ExtractSettings(video="opencv", min_face_frames=faces + 1)
    report = extract(crema, tmp_path, stricter, workers=1)
    assert report["already_done"] == [] and report["written"] == []
    assert f"fewer than --min-face-frames {faces + 1}" in {x["path"]: x["reason"] for x in
                                                            report["skipped"]}[
        f"VideoFlash/{CLIP}.flv"]
    assert not (tmp_path / f"{CLIP}.npz").exists()  # never mixed in with this run's clips


def _openface_csvs(folder: Path, offset: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["frame, face_id, timestamp, confidence, success, AU01_r, AU12_r"]
    lines += [f"{i + 1}, 0, {i / 30:.3f}, 0.95, 1, {offset + i / 100:.2f}, {offset:.2f}"
              for i in range(30)]
    (folder / f"{CLIP}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_another_openface_csv_folder_redoes_the_clips_whose_csvs_differ(crema, tmp_path):
    out = tmp_path / "out"
    first = ExtractSettings(video="openface",
                            openface_csv=str(_openface_csvs(tmp_path / "a", 0.0)))
    assert extract(crema, out, first, workers=1)["written"] == [f"{CLIP}.npz"]
    other = ExtractSettings(video="openface",
                            openface_csv=str(_openface_csvs(tmp_path / "b", 1.0)))
    assert extract(crema, out, other, workers=1)["written"] == [f"{CLIP}.npz"]
    with np.load(out / f"{CLIP}.npz") as z:
        assert z["video_features"][0, 1] == pytest.approx(1.0)  # folder b's values
    same = ExtractSettings(video="openface",
                           openface_csv=str(_openface_csvs(tmp_path / "c", 1.0)))
    assert extract(crema, out, same, workers=1)["already_done"] == [f"{CLIP}.npz"]
