"""``predict`` on raw media (issue 10): a checkpoint trained on clip files that ``extract`` made
keeps their extraction settings, and ``predict clip.mp4`` (or a CREMA-D ``.flv`` with its
``.wav``) extracts the same way before it scores; a checkpoint whose data were not made by
``extract`` refuses raw media in one line. Real media from tests/media.py, real training.

    .venv/bin/python -m pytest tests/test_predict_media.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from util import FAST

from tests.media import FPS, frames, make_crema, speech, write_video

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ("01", "03", "04", "05", "06", "07")  # NEU HAP SAD ANG FEA DIS


def trainer(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 RAVDESS actors x 3 emotions of 1 s audio-visual MP4s, extracted with the CLI, then a
    short training run on the clip files: its best.pt, the media and the clip files."""
    root = tmp_path_factory.mktemp("predict-media")
    media, data = root / "media", root / "data"
    sr = 22050
    for actor in range(1, 5):
        for k, emotion in enumerate(EMOTIONS[actor % 2::2]):
            wave = speech(["Kids are talking by the door.", "Dogs are sitting by the door.",
                           "It's eleven o'clock."][k], seconds=1.0, sample_rate=sr)
            write_video(media / f"Actor_{actor:02d}" / f"01-01-{emotion}-01-01-01-{actor:02d}.mp4",
                        frames(FPS, True, seed=10 * actor + k), audio=(wave, sr))
    make_crema(root / "crema")
    got = trainer("extract", "--media", media, "--out", data, "--video", "opencv",
                  "--workers", "1")
    assert got.returncode == 0, got.stderr
    run = root / "run"
    got = trainer("train", "--data", data, "--out", run, "--epochs", "2", "--patience", "2",
                  *FAST)
    assert got.returncode == 0, got.stderr
    return run / "checkpoints" / "best.pt", media, data, root / "crema"


def _predict(checkpoint, *inputs) -> list[dict]:
    got = trainer("predict", "--checkpoint", checkpoint, *inputs)
    assert got.returncode == 0, got.stderr
    return [json.loads(line) for line in got.stdout.splitlines()]


@pytest.mark.slow
def test_the_checkpoint_keeps_the_extraction_settings_of_its_training_data(trained):
    import torch

    checkpoint, _, data, _ = trained
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    report = json.loads((data / "extract.json").read_text())
    assert ckpt["extract"]["extractor"] == "trainer.extract"
    assert ckpt["extract"]["settings"] == report["settings"]
    assert ckpt["extract"]["settings"]["video"] == "opencv"


@pytest.mark.slow
def test_predict_on_a_raw_mp4_extracts_as_training_did(trained):
    checkpoint, media, data, _ = trained
    stem = "Actor_03/01-01-03-01-01-01-03"
    raw, = _predict(checkpoint, media / f"{stem}.mp4")
    npz, = _predict(checkpoint, data / f"{stem}.npz")
    assert raw["label"] in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    assert sum(raw["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # The same features as the clip file extract wrote, so the same probabilities.
    assert raw["probabilities"] == pytest.approx(npz["probabilities"], abs=1e-5)


@pytest.mark.slow
def test_predict_on_a_crema_flv_finds_its_wav_and_reports_a_clip_without_a_face(trained):
    checkpoint, _, _, crema = trained
    good, no_face, no_wav = _predict(checkpoint, crema / "VideoFlash/1001_DFA_ANG_XX.flv",
                                     crema / "VideoFlash/1002_IEO_HAP_HI.flv",
                                     crema / "VideoFlash/1003_TIE_SAD_XX.flv")
    assert set(good["probabilities"]) == {"ANG", "DIS", "FEA", "HAP", "NEU", "SAD"}
    assert "face" in no_face["error"] and "label" not in no_face
    assert "wav" in no_wav["error"].lower() and "label" not in no_wav


def test_raw_media_with_a_checkpoint_not_trained_on_extract_is_one_line(tmp_path):
    from util import tiny_demo

    data = tiny_demo(tmp_path / "demo", speakers=6, clips_per_speaker=6)
    got = trainer("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *FAST)
    assert got.returncode == 0, got.stderr
    clip = write_video(tmp_path / "01-01-05-01-01-01-01.mp4", frames(8, True),
                       audio=(np.zeros(22050, np.float32), 22050))
    got = trainer("predict", "--checkpoint", tmp_path / "run/checkpoints/best.pt", clip)
    assert got.returncode == 1
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "not made by `trainer extract`" in lines[0], got.stderr


def test_a_folder_gives_its_clip_files_its_videos_and_what_cannot_be_used(tmp_path):
    from trainer.inputs import input_files

    for rel in ("a.npz", "sub/b.mp4", "sub/c.wmv", "VideoFlash/1001_DFA_ANG_XX.flv",
                "AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1009_ITS_NEU_XX.wav", "notes.txt",
                "extract.json", "manifest.csv", "odd.xyz", ".hidden.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [str(p.relative_to(tmp_path)) for p in input_files([str(tmp_path)])]
    # the FLV's own WAV and the companions are not inputs; a WAV without its video and an
    # unknown file are, so that predict says why it cannot use them
    assert got == ["AudioWAV/1009_ITS_NEU_XX.wav", "VideoFlash/1001_DFA_ANG_XX.flv", "a.npz",
                   "odd.xyz", "sub/b.mp4", "sub/c.wmv"]


@pytest.mark.slow
def test_predict_reads_a_wmv_as_media_and_a_folder_of_videos_clip_by_clip(trained, tmp_path):
    checkpoint, media, data, _ = trained
    stem = "Actor_03/01-01-03-01-01-01-03"
    wmv = tmp_path / "01-01-03-01-01-01-03.wmv"  # any container FFmpeg reads, as extract takes
    wmv.write_bytes((media / f"{stem}.mp4").read_bytes())
    got = _predict(checkpoint, wmv, data / f"{stem}.npz", media / "Actor_01")
    videos = sorted((media / "Actor_01").glob("*.mp4"))
    assert [r["path"] for r in got] == [str(wmv), str(data / f"{stem}.npz"), *map(str, videos)]
    assert len(videos) == 3 and all("label" in r for r in got), got
    # The same features as the clip file extract wrote, so the same probabilities.
    assert got[0]["probabilities"] == pytest.approx(got[1]["probabilities"], abs=1e-5)
