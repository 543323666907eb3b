"""trainer.bench.extract_speed: its CREMA-D-shaped media, and a smoke-size report that adds up (no
timing is asserted: speed is read from ``make bench``'s figures).

    .venv/bin/python -m pytest tests/test_bench_extract.py -q
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from trainer.bench.extract_speed import (FPS, HEIGHT, SAMPLE_RATE, TARGET, WIDTH, make_media,
                                   measure, steady, table, verdict)
from trainer.extract.decode import read_audio


def test_media_are_crema_d_shaped_flv_and_16_bit_wav(tmp_path):
    made = make_media(tmp_path, clips=1, seconds=(1.0, 1.0))
    assert made == {"1001_DFA_ANG_XX": FPS}
    with av.open(str(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv")) as c:
        v = c.streams.video[0]
        # FFmpeg calls Sorenson H.263 "flv"
        assert (v.codec_context.name, v.width, v.height) == ("flv", WIDTH, HEIGHT)
        assert round(float(v.average_rate)) == FPS
        assert sum(1 for _ in c.decode(v)) == FPS
    with av.open(str(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")) as c:
        a = c.streams.audio[0]
        assert (a.codec_context.name, a.sample_rate, a.channels) == ("pcm_s16le", SAMPLE_RATE, 1)
    wave = read_audio(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    assert len(wave) == SAMPLE_RATE and 0.05 < np.abs(wave).max() <= 1  # one second, audible


@pytest.fixture(scope="module")
def smoke() -> dict:
    return measure("smoke")


def test_smoke_report_adds_up_and_finds_the_face_in_every_frame(smoke):
    r = smoke
    assert r["mode"] == "smoke" and r["cores"] >= 1
    assert [(x["video"], x["workers"]) for x in r["runs"]] == [("opencv", 1)]
    for x in r["runs"]:
        assert x["written"] == x["clips"] == r["workload"]["clips"] and x["skipped"] == []
        # the audio decoded is the media made (each WAV is its FLV's length, to a sample)
        assert x["media_seconds"] == pytest.approx(r["workload"]["media_seconds"], abs=2e-3)
        assert x["wall_seconds"] > 0
        assert x["media_seconds_per_second"] == pytest.approx(
            x["media_seconds"] / x["wall_seconds"], rel=1e-2, abs=2e-3)
        stages = x["stage_seconds"]
        assert {"find", "decode_audio", "audio_features", "decode_video", "face",
                "write"} <= set(stages)
        assert all(v >= 0 for v in stages.values())
        assert stages["audio_features"] > 0 and stages["face"] > 0
        assert x["audio_seconds"] == pytest.approx(
            stages["decode_audio"] + stages["audio_features"], abs=2e-3)
        assert x["face_seconds"] == pytest.approx(stages["decode_video"] + stages["face"],
                                                  abs=2e-3)
        assert x["face_frame_share"] == 1.0  # the portrait is found in every frame looked at
        # the start run: one clip per worker, before; one worker works warm in this process
        assert x["start"]["clips"] == x["workers"]
        assert 0 < x["start"]["media_seconds"] < x["media_seconds"]
        assert x["steady_media_seconds_per_second"] == x["media_seconds_per_second"]
    assert r["target"]["media_seconds_per_second"] == TARGET
    assert r["target"]["by_video"] == {}  # smoke has no 2-worker run to judge
    assert "opencv    1 worker(s)" in table(r)


def test_the_steady_rate_leaves_out_the_workers_start():
    start = {"clips": 2, "media_seconds": 5.0, "wall_seconds": 6.0,
             "media_seconds_per_second": 0.833}
    run = {"video": "opencv", "workers": 2, "clips": 20, "media_seconds": 50.0,
           "wall_seconds": 15.0, "media_seconds_per_second": 3.333}
    assert steady(run, start)["steady_media_seconds_per_second"] == 5.0  # 45 s in 9 s
    assert steady(run, start)["start"] == start
    assert steady({**run, "wall_seconds": 5.0}, start)["steady_media_seconds_per_second"] is None


def test_the_verdict_judges_the_two_worker_runs_and_projects_crema_d():
    start = {"media_seconds": 4.0, "wall_seconds": 12.0}
    runs = [{"video": "mediapipe", "workers": 1, "steady_media_seconds_per_second": 9.0,
             "start": start},
            {"video": "mediapipe", "workers": 2, "steady_media_seconds_per_second": 3.0,
             "start": start},
            {"video": "opencv", "workers": 2, "steady_media_seconds_per_second": 6.0,
             "start": start}]
    v = verdict(runs)
    assert v["mediapipe"] == {"steady_media_seconds_per_second": 3.0, "holds": False,
                              "crema_d_minutes": 108.2,  # (12 s + (19440 - 4) s / 3) / 60
                              "crema_d_under_limit": False}
    assert v["opencv"]["holds"] and v["opencv"]["crema_d_minutes"] == 54.2
    assert v["opencv"]["crema_d_under_limit"]
    # full mode runs the default three times for the bench's spread: the median run speaks
    again = [dict(runs[1], steady_media_seconds_per_second=x) for x in (12.0, 5.0)]
    assert verdict(runs + again)["mediapipe"]["steady_media_seconds_per_second"] == 5.0


def test_the_encoders_runs_use_tiny_stand_ins_and_say_so():
    """Each pretrained encoder's runs (issue 17), on stand-ins made on the spot: no real weights
    here, so the report says what ran, and the figures are not a real model's."""
    r = measure("encoders-smoke")
    assert [(x["label"], x["audio"], x["video"], x["workers"]) for x in r["runs"]] == [
        ("wavlm", "wavlm", "opencv", 1), ("hsemotion", "logmel", "hsemotion", 1)]
    for x in r["runs"]:
        assert x["written"] == x["clips"] == 1 and x["media_seconds_per_second"] > 0
        assert x["stage_seconds"]["audio_features"] > 0 and x["face_frame_share"] == 1.0
    assert "tiny random stand-in" in r["encoder_models"]["wavlm"]
    assert "tiny random stand-in" in r["encoder_models"]["hsemotion"]
    assert "wavlm     1 worker(s)" in table(r) and "hsemotion 1 worker(s)" in table(r)
