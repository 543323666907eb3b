"""Audio and video on one clock (DESIGN.md section 7): a file whose audio stream starts after its
picture keeps that offset in the clip file's audio times. Real media made here with PyAV.

    .venv/bin/python -m pytest tests/test_extract_clock.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media import FPS, frames, write_video
from trainer.extract.clips import media_clip
from trainer.extract.decode import decode_audio, read_frames
from trainer.extract.run import ExtractSettings, extract_clip

AUDIO_START, EVENT, SECONDS, SR = 0.4, 1.0, 1.6, 16000  # the click and the change at 1.0 s


def _late_audio(path: Path) -> Path:
    """A face for 1.6 s whose corner turns white at 1.0 s, and audio from 0.4 s on (the file's
    clock) that is silent but for a click at 1.0 s, 0.6 s into the audio stream."""
    images = frames(int(SECONDS * FPS), True, seed=7)
    for i, img in enumerate(images):
        if i >= EVENT * FPS:
            img[:40, -40:] = 255  # the picture change, away from the face
    wave = np.zeros(int((SECONDS - AUDIO_START) * SR), np.float32)
    click = int((EVENT - AUDIO_START) * SR)
    wave[click:click + 80] = np.hanning(80) * 0.9
    return write_video(path, images, audio=(wave, SR), audio_start=AUDIO_START)


@pytest.fixture(scope="module")
def late(tmp_path_factory) -> Path:
    return _late_audio(tmp_path_factory.mktemp("clock") / "late.mp4")


def test_decode_audio_gives_the_start_of_a_late_audio_stream(late):
    audio = decode_audio(late, SR)
    # The AAC encoder's first 1024 samples of priming count before the first sound.
    assert audio.audio_start == pytest.approx(AUDIO_START - 1024 / SR, abs=0.002)
    loudest = audio.audio_start + np.argmax(np.abs(audio.wave)) / SR
    assert loudest == pytest.approx(EVENT, abs=0.01)


def test_a_click_and_a_picture_change_at_one_moment_land_within_one_frame(late):
    z = extract_clip(media_clip(late), ExtractSettings(video="opencv"))
    loudest = float(z["audio_timestamps"][np.argmax(z["audio_features"].sum(axis=1))])
    changed = next(t for t, rgb in read_frames(late, 15) if rgb[:40, -40:].mean() > 200)
    assert changed == pytest.approx(EVENT, abs=1 / 15)
    assert abs(loudest - changed) <= 1 / 15, (loudest, changed)  # one frame at 15 fps
    vt = z["video_timestamps"]
    assert np.min(np.abs(vt - changed)) < 1e-6  # the clip file's video times: the same clock
