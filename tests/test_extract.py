"""trainer.extract (clips, decode, audio, run, cli) on real media the tests make (tests/media.py):
espeak-ng speech, a photographed face, encoded with PyAV as CREMA-D FLV + WAV and RAVDESS MP4.

    .venv/bin/python -m pytest tests/test_extract.py -q
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import FPS, HEIGHT, WIDTH, frames, make_crema, make_ravdess, speech, \
    truncate, write_wav
from trainer.errors import MediaError
from trainer.extract.audio import audio_features
from trainer.extract.clips import find_clips, media_clip
from trainer.extract.decode import at_rate, read_audio, read_frames

FACE_KIND = "opencv"  # the pipeline's face extractor in these tests: the fastest to make


# The verbs run here set up logging on this test's captured stderr (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_log_handlers")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, dict]:
    """Both layouts under one folder, made once: 1 s clips, 480x360 at 30 fps."""
    root = tmp_path_factory.mktemp("media")
    made = {f"crema_{k}": v for k, v in make_crema(root / "crema").items()}
    made.update({f"ravdess_{k}": v for k, v in make_ravdess(root / "ravdess").items()})
    return root, made


# --- finding clips -----------------------------------------------------------------------------

def test_find_clips_pairs_crema_flv_with_its_wav_and_reports_what_cannot_be_a_clip(media):
    root, _ = media
    (root / "ravdess" / "Actor_01" / "03-01-03-01-01-01-01.wav").write_bytes(b"RIFF")  # audio-only
    (root / "crema" / "AudioWAV" / "1009_ITS_NEU_XX.wav").write_bytes(b"RIFF")  # no video
    (root / "crema" / "notes.bin").write_bytes(b"?")
    (root / "crema" / "README.txt").write_text("ratings")  # a companion: not a clip, not reported
    try:
        clips, skipped = find_clips(root)
    finally:
        for p in ("ravdess/Actor_01/03-01-03-01-01-01-01.wav", "crema/AudioWAV/1009_ITS_NEU_XX.wav",
                  "crema/notes.bin", "crema/README.txt"):
            (root / p).unlink()
    by_rel = {c.rel: c for c in clips}
    assert sorted(by_rel) == ["crema/1001_DFA_ANG_XX", "crema/1002_IEO_HAP_HI",
                              "ravdess/Actor_01/01-01-03-01-01-01-01",
                              "ravdess/Actor_02/01-01-04-01-01-01-02"]
    crema = by_rel["crema/1001_DFA_ANG_XX"]
    assert crema.video.name == "1001_DFA_ANG_XX.flv" and crema.audio.parent.name == "AudioWAV"
    assert crema.audio.name == "1001_DFA_ANG_XX.wav"
    ravdess = by_rel["ravdess/Actor_01/01-01-03-01-01-01-01"]
    assert ravdess.video == ravdess.audio and ravdess.stem == "01-01-03-01-01-01-01"
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert "FLV without its WAV" in reasons["crema/VideoFlash/1003_TIE_SAD_XX.flv"]
    assert "video-only" in reasons["ravdess/Actor_01/02-01-03-01-01-01-01.mp4"]
    assert "audio-only" in reasons["ravdess/Actor_01/03-01-03-01-01-01-01.wav"]
    assert "without a video" in reasons["crema/AudioWAV/1009_ITS_NEU_XX.wav"]
    assert "unsupported" in reasons["crema/notes.bin"]
    assert len(reasons) == 5  # README.txt is not a clip and not reported


def test_a_manifest_names_the_clips_of_any_folder_and_reports_missing_files(tmp_path, media):
    _, made = media
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "take one.mp4").write_bytes(made["ravdess_face"].read_bytes())
    (folder / "manifest.csv").write_text("path,label,speaker\ntake one.mp4,SAD,alice\n"
                                         "gone.mp4,HAP,bob\n")
    clips, skipped = find_clips(folder)
    assert [(c.rel, c.row) for c in clips] == [("take one", ("SAD", "alice", ""))]
    assert skipped == [{"path": "gone.mp4", "reason": "manifest line 3: no such file"}]


def test_a_manifest_folder_extracts_to_clip_files_with_their_own_manifest(tmp_path, media):
    from trainer.data import LABELS, load_dataset
    from trainer.extract.run import ExtractSettings, extract

    folder = tmp_path / "videos"
    (folder / "day1").mkdir(parents=True)
    for name in ("take one", "take two"):
        (folder / "day1" / f"{name}.mp4").write_bytes(media[1]["ravdess_face"].read_bytes())
    manifest = tmp_path / "labels.csv"
    manifest.write_text(f"path,label,speaker\n{folder}/day1/take one.mp4,SAD,alice\n"
                        f"{folder}/day1/take two.mp4,NEU,bob\n")
    report = extract(folder, tmp_path / "out", ExtractSettings(video=FACE_KIND), workers=1,
                     manifest=manifest)
    assert report["written"] == ["day1/take one.npz", "day1/take two.npz"]
    assert (tmp_path / "out" / "manifest.csv").read_text().splitlines() == [
        "path,label,speaker,split", "day1/take one.npz,SAD,alice,", "day1/take two.npz,NEU,bob,"]
    ds = load_dataset(tmp_path / "out")
    assert sorted((c.speaker, LABELS[c.label]) for c in ds.clips) == [("alice", "SAD"),
                                                                     ("bob", "NEU")]


def test_media_clip_of_one_file_finds_the_crema_wav_and_refuses_what_it_cannot_use(media):
    root, made = media
    clip = media_clip(made["crema_face"])
    assert clip.audio == root / "crema" / "AudioWAV" / "1001_DFA_ANG_XX.wav"
    assert media_clip(made["ravdess_face"]).audio == made["ravdess_face"]
    for path, words in ((made["crema_no_wav"], "FLV without its WAV"),
                        (made["ravdess_video_only"], "video-only"),
                        (clip.audio, "audio only"), (root / "nothing.mp4", "no such file")):
        with pytest.raises(MediaError, match=words):
            media_clip(path)


# --- decoding ----------------------------------------------------------------------------------

def test_read_audio_resamples_to_16k_mono_and_keeps_the_speech(media):
    import librosa

    _, made = media
    wav = read_audio(media_clip(made["crema_face"]).audio)  # 22050 Hz PCM WAV
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == 16000
    reference = librosa.resample(speech(seconds=1.0), orig_sr=22050, target_sr=16000)
    assert np.corrcoef(wav, reference[:len(wav)])[0, 1] > 0.99  # the same speech, resampled
    mp4 = read_audio(made["ravdess_face"])  # AAC at 44.1 kHz in the MP4
    assert mp4.dtype == np.float32 and len(mp4) == 16000  # AAC's padding cut at the stated end
    assert mp4.std() > 0.01


def test_read_audio_averages_stereo_channels(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    wave = read_audio(write_wav(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), 44100))
    assert len(wave) == 16000 and np.abs(wave).max() == pytest.approx(0.5, abs=0.01)  # not +3 dB


def test_read_frames_picks_frames_by_true_time_at_most_the_rate(media):
    _, made = media
    for path in (made["crema_face"], made["ravdess_face"]):  # FLV (1 ms time base), MP4
        got = list(read_frames(path, rate=15))
        times = np.array([t for t, _ in got])
        assert len(got) == 15 and times[0] == 0.0 and (times < 1.0).all()
        np.testing.assert_allclose(np.diff(times), 1 / 15, atol=0.002)
        rgb = got[5][1]
        assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8
        source = frames(FPS, True, seed=0 if path.suffix == ".flv" else 3)[10]  # frame at 1/3 s
        assert np.abs(rgb.astype(int) - source).mean() < 12  # RGB order, the right frame
    assert len(list(read_frames(made["crema_face"], rate=10))) == 10
    assert len(list(read_frames(made["crema_face"], rate=60))) == FPS  # never more than it has
    assert at_rate(np.arange(25) / 25, 15).sum() == 15  # 25 fps: 15 a second, at own times


def test_bad_media_raise_one_line_reasons(media, tmp_path):
    _, made = media
    cut_flv = tmp_path / "cut.flv"
    cut_flv.write_bytes(made["crema_face"].read_bytes())
    truncate(cut_flv, 0.5)
    cases = [(lambda: list(read_frames(made["ravdess_truncated"], 15)), "unreadable media"),
             (lambda: list(read_frames(cut_flv, 15)), "truncated video: decoded 0.4"),
             (lambda: read_audio(made["ravdess_video_only"]), "no audio stream"),
             (lambda: list(read_frames(media_clip(made["crema_face"]).audio, 15)),
              "no video stream"),
             (lambda: read_audio(tmp_path / "absent.wav"), "no such file")]
    for call, words in cases:
        with pytest.raises(MediaError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


# --- audio features ----------------------------------------------------------------------------

def test_logmel_is_100_frames_per_second_with_window_centre_times():
    sr = 16000
    talk = np.interp(np.arange(sr // 2) / sr, np.arange(11025) / 22050, speech(seconds=0.5))
    wave = np.concatenate([talk, np.zeros(sr // 2)]).astype(np.float32)  # speech, then silence
    feats, times, info = audio_features(wave, sr, "logmel", n_mels=40)
    assert feats.shape == (98, 40) and feats.dtype == np.float32  # (1 s - 25 ms) / 10 ms + 1
    np.testing.assert_allclose(np.diff(times), 0.01)
    assert times[0] == pytest.approx(0.0125) and times[-1] < 1.0
    assert feats[times < 0.45].mean() > feats[times > 0.55].mean() + 10  # speech is louder
    assert info["name"] == "logmel" and info["package"] == "librosa" and info["n_mels"] == 40
    with pytest.raises(MediaError, match="shorter than one 25 ms window"):
        audio_features(np.zeros(100, np.float32), sr)


def test_egemaps_llds_are_25_per_10_ms_and_functionals_carry_no_time():
    pytest.importorskip("opensmile")  # in the test extra; a research-only optional package
    wave = np.interp(np.arange(16000) / 16000, np.arange(22050) / 22050,
                     speech(seconds=1.0)).astype(np.float32)
    feats, times, info = audio_features(wave, 16000, "egemaps")
    assert feats.shape[1] == 25 and 94 <= len(feats) <= 100
    assert np.all(np.diff(times) > 0) and 0 < times[0] and times[-1] < 1.0
    assert len(times) / (times[-1] - times[0]) == pytest.approx(100, rel=0.03)
    assert info["feature_set"] == "eGeMAPSv02" and len(info["columns"]) == 25
    func, ftimes, finfo = audio_features(wave, 16000, "egemaps-functionals")
    assert func.shape == (100, 88) and (func == func[0]).all()  # one vector, repeated
    assert "no" in finfo["time_information"] or "none" in finfo["time_information"]


def test_egemaps_without_opensmile_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # as if not installed
    from trainer.extract import audio

    audio._smile.cache_clear()
    with pytest.raises(ValueError, match=r"pip install 'av-emotion-trainer\[egemaps\]'"):
        audio_features(np.zeros(16000, np.float32), 16000, "egemaps")
    audio._smile.cache_clear()


# --- the command line's one-line errors (before anything is read or written) ------------------

@pytest.mark.parametrize("flags, words", [
    (["--media", "{tmp}/absent"], "error: no media folder"),
    (["--media", "{tmp}/empty"], "error: no media files under"),
    (["--media", "{tmp}/empty", "--video", "openface"], "needs --openface-csv DIR"),
    (["--media", "{tmp}/empty", "--video", "openface", "--openface-csv", "{tmp}/absent"],
     "no OpenFace CSV folder"),
    (["--media", "{tmp}/empty", "--min-face-frames", "0"], "--min-face-frames must be at least 1"),
    (["--media", "{tmp}/empty", "--video-rate", "0"], "--video-rate must be positive"),
    (["--media", "{tmp}/empty", "--workers", "-1"], "--workers must be 0"),
    (["--media", "{tmp}/empty", "--manifest", "{tmp}/absent.csv"], "no manifest"),
    (["--media", "{tmp}/empty", "--face-weights", "{tmp}/absent.pt"], "no face weights file"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, words):
    from trainer.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "ignored.txt").write_text("not media")
    out = tmp_path / "out"
    argv = ["extract", "--out", str(out)] + [f.format(tmp=tmp_path) for f in flags]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_cli_wrong_flags_exit_2_in_one_line(tmp_path, capsys):
    from trainer.cli import main

    for argv in (["extract", "--media", str(tmp_path)], ["extract", "--media", str(tmp_path),
                                                        "--out", "o", "--video", "eyes"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("--out" in err or "invalid choice" in err)


def test_cli_help_shows_every_default_and_examples(capsys):
    from trainer.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--audio", "logmel"), ("--video", "mediapipe"), ("--video-rate", "15"),
                          ("--n-mels", "64"), ("--min-face-frames", "5"), ("--workers", "0"),
                          ("--openface-csv", "none"), ("--face-weights", "none")):
        assert flag in text and f"(default: {default}" in text, flag
    assert "Examples: python -m trainer extract --media" in text
    assert "research-only" in text and "no time information" in text


# --- whole runs with the real face extractor ---------------------------------------------------

def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def extracted(media, tmp_path_factory):
    """One run over both layouts (workers=1: in this process), as the tests below read it."""
    from trainer.extract.run import ExtractSettings, extract

    root, made = media
    out = tmp_path_factory.mktemp("out")
    settings = ExtractSettings(video=FACE_KIND)
    return extract(root, out, settings, workers=1), out, settings


def test_extract_writes_a_clip_file_per_good_clip_with_true_timestamps(extracted):
    report, out, settings = extracted
    assert report["written"] == ["crema/1001_DFA_ANG_XX.npz",
                                 "ravdess/Actor_01/01-01-03-01-01-01-01.npz"]
    assert json.loads((out / "extract.json").read_text()) == report
    for rel in report["written"]:
        z = _load(out / rel)
        a, at, v, vt = (z["audio_features"], z["audio_timestamps"], z["video_features"],
                        z["video_timestamps"])
        assert a.shape[1] == 64 and 97 <= len(a) == len(at) <= 99  # 1 s at 100 frames/s
        np.testing.assert_allclose(np.diff(at), 0.01, atol=1e-9)
        assert 0 < at[0] and at[-1] < 1.0
        # video: at most 15 frames a second, a face in (nearly) every one, each at its own time
        assert v.ndim == 2 and v.shape[1] > 0 and 12 <= len(v) == len(vt) <= 15
        assert np.all(np.diff(vt) > 0) and vt[0] >= 0 and vt[-1] < 1.0
        assert np.all(np.diff(vt) >= 1 / 15 - 0.01)  # picked on the 15 fps grid
        assert np.isfinite(a).all() and np.isfinite(v).all()
        params = json.loads(str(z["params"]))
        assert params["extractor"] == "trainer.extract" and params["settings"] == settings.params()
        assert params["audio"]["name"] == "logmel" and params["video"]


def test_extract_reports_each_bad_file_and_the_clip_without_a_face(extracted):
    report, out, _ = extracted
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons.keys() == {"crema/VideoFlash/1002_IEO_HAP_HI.flv",
                              "crema/VideoFlash/1003_TIE_SAD_XX.flv",
                              "ravdess/Actor_01/02-01-03-01-01-01-01.mp4",
                              "ravdess/Actor_02/01-01-04-01-01-01-02.mp4"}
    assert reasons["crema/VideoFlash/1002_IEO_HAP_HI.flv"] == \
        "a face in 0 of 15 frames, fewer than --min-face-frames 5"
    assert "FLV without its WAV" in reasons["crema/VideoFlash/1003_TIE_SAD_XX.flv"]
    assert "video-only" in reasons["ravdess/Actor_01/02-01-03-01-01-01-01.mp4"]
    assert "unreadable media" in reasons["ravdess/Actor_02/01-01-04-01-01-01-02.mp4"]
    assert report["counts"] == {"clips": 4, "written": 2, "already_done": 0, "skipped": 4,
                               "excluded": 0}
    assert not (out / "crema" / "1002_IEO_HAP_HI.npz").exists()  # never a zero-filled clip
    stages = report["timing"]["stage_seconds"]
    assert all(stages[k] > 0 for k in ("decode_audio", "audio_features", "decode_video", "face"))
    assert report["timing"]["media_seconds"] == pytest.approx(3.0, abs=0.1)  # 3 clips decoded


def test_a_second_run_skips_clips_already_done_and_touches_nothing(extracted, media):
    from trainer.extract.run import extract

    report, out, settings = extracted
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.npz")}
    again = extract(media[0], out, settings, workers=1)
    assert again["written"] == [] and again["already_done"] == report["written"]
    assert again["counts"]["skipped"] == 4  # bad files are tried again and reported again
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.npz")} == before
    assert not list(out.rglob("*.tmp"))


def test_other_settings_extract_again_over_the_old_files(media, tmp_path):
    from trainer.extract.run import ExtractSettings, extract

    crema = media[0] / "crema"
    extract(crema, tmp_path, ExtractSettings(video=FACE_KIND), workers=1)
    report = extract(crema, tmp_path, ExtractSettings(video=FACE_KIND, n_mels=40), workers=1)
    assert report["written"] == ["1001_DFA_ANG_XX.npz"] and report["already_done"] == []
    assert _load(tmp_path / "1001_DFA_ANG_XX.npz")["audio_features"].shape[1] == 40


def test_the_output_loads_as_a_data_set_with_label_and_speaker_from_the_name(extracted):
    from trainer.data import LABELS, load_dataset

    _, out, settings = extracted
    ds = load_dataset(out)
    got = sorted((c.speaker, LABELS[c.label]) for c in ds.clips)
    assert got == [("crema-d/1001", "ANG"), ("ravdess/01", "HAP")]
    assert ds.extraction["settings"] == settings.params() and ds.audio_dim == 64


def test_extract_clip_with_egemaps_gives_25_llds(media):
    pytest.importorskip("opensmile")
    from trainer.extract.run import ExtractSettings, extract_clip

    arrays = extract_clip(media_clip(media[1]["ravdess_face"]),
                          ExtractSettings(audio="egemaps", video=FACE_KIND))
    assert arrays["audio_features"].shape[1] == 25
    assert json.loads(str(arrays["params"]))["settings"]["audio"] == "egemaps"
    with pytest.raises(MediaError, match="a face in 0 of 15 frames"):
        extract_clip(media_clip(media[1]["crema_no_face"]), ExtractSettings(video=FACE_KIND))


def test_openface_csvs_are_read_instead_of_faces_at_the_video_rate(media, tmp_path, capsys):
    from trainer.cli import main

    csvs = tmp_path / "openface"
    csvs.mkdir()
    names = ["gaze_0_x", "gaze_0_y", "gaze_0_z", "pose_Rx", "pose_Ry", "pose_Rz", "AU01_r",
             "AU12_r", "AU01_c", "AU12_c"]
    lines = ["frame, face_id, timestamp, confidence, success, " + ", ".join(names)]
    for i in range(30):  # 1 s at 30 fps; OpenFace lost the face from 1/3 s to 1/2 s
        lost = 10 <= i < 15
        lines.append(f"{i + 1}, 0, {i / 30:.3f}, {0.1 if lost else 0.95}, {0 if lost else 1}, "
                     + ", ".join(f"{(i + k) / 100:.2f}" for k in range(len(names))))
    (csvs / "1001_DFA_ANG_XX.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["extract", "--media", str(media[0] / "crema"), "--out", str(out), "--video",
                 "openface", "--openface-csv", str(csvs), "--workers", "1"]) == 0
    z = _load(out / "1001_DFA_ANG_XX.npz")
    v, vt = z["video_features"], z["video_timestamps"]
    assert v.shape[1] == len(names) and 6 <= len(v) == len(vt) <= 15
    cells = np.floor(vt * 15 + 0.1)  # the 1/15 s grid: at most one frame in each cell
    assert np.all(np.diff(vt) > 0) and len(np.unique(cells)) == len(vt) and vt[-1] < 1.0
    assert not ((vt > 0.32) & (vt < 0.48)).any()  # lost frames dropped, not zero-filled
    np.testing.assert_allclose(v[:, 0], np.round(vt * 30) / 100, atol=1e-6)  # each row its own
    reasons = {s["path"]: s["reason"] for s in json.loads((out / "extract.json").read_text())[
        "skipped"]}
    assert reasons["VideoFlash/1002_IEO_HAP_HI.flv"].startswith("no OpenFace CSV 1002_IEO_HAP_HI")
    assert json.loads(str(z["params"]))["video"]["columns"] == names


@pytest.mark.slow
def test_cli_with_two_workers_writes_and_prints_counts(media, tmp_path, capsys):
    from trainer.cli import main

    out = tmp_path / "out"
    assert main(["extract", "--media", str(media[0] / "crema"), "--out", str(out),
                 "--video", FACE_KIND, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "extract: 1 written, 0 already done, 2 skipped" in printed
    assert (out / "1001_DFA_ANG_XX.npz").is_file()
    assert json.loads((out / "extract.json").read_text())["workers"] == 2


@pytest.mark.slow
def test_extract_between_s3_prefixes_and_resumes_from_what_s3_holds(media, tmp_path, s3_bucket,
                                                                     s3_client):
    from trainer.extract.run import ExtractSettings, extract
    from trainer.store.s3 import sync_up

    sync_up(media[0] / "ravdess", f"s3://{s3_bucket}/media/ravdess/")
    settings = ExtractSettings(video=FACE_KIND)
    first = extract(f"s3://{s3_bucket}/media/ravdess/", f"s3://{s3_bucket}/data/ravdess/",
                    settings, workers=1, cache_dir=tmp_path / "cache")
    assert first["written"] == ["Actor_01/01-01-03-01-01-01-01.npz"]
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket,
                                                        Prefix="data/")["Contents"]}
    assert keys == {"data/ravdess/Actor_01/01-01-03-01-01-01-01.npz", "data/ravdess/extract.json"}
    body = s3_client.get_object(Bucket=s3_bucket, Key="data/ravdess/extract.json")["Body"].read()
    assert json.loads(body)["counts"]["written"] == 1
    # another machine (a new cache) resumes from what the bucket holds
    again = extract(f"s3://{s3_bucket}/media/ravdess/", f"s3://{s3_bucket}/data/ravdess/",
                    settings, workers=1, cache_dir=tmp_path / "cache2")
    assert again["written"] == [] and again["already_done"] == first["written"]


@pytest.mark.slow
def test_s3_output_goes_up_as_clips_finish_not_only_at_the_end(media, tmp_path, s3_bucket,
                                                                 s3_client, monkeypatch):
    """What a spot interruption mid-run loses is bounded: clip files reach S3 while the run
    goes, before its extract.json (written last)."""
    import threading
    import time

    from trainer.extract import staging
    from trainer.extract.run import ExtractSettings, extract
    from trainer.store.s3 import sync_up

    monkeypatch.setattr(staging, "UPLOAD_SECONDS", 0.05)
    sync_up(_four_clips(media, tmp_path / "crema"), f"s3://{s3_bucket}/media/crema/")
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            got = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="data/crema/")
            seen.append({o["Key"].split("/")[-1] for o in got.get("Contents", [])})
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        report = extract(f"s3://{s3_bucket}/media/crema/", f"s3://{s3_bucket}/data/crema/",
                         ExtractSettings(video=FACE_KIND), workers=1, cache_dir=tmp_path / "c")
    finally:
        done.set()
        watcher.join()
    assert report["counts"]["written"] == 4
    early = [keys for keys in seen if "extract.json" not in keys]
    assert any(0 < len(keys) < 4 for keys in early), seen  # some clips up, the run still going
    assert not [k for keys in seen for k in keys if k.startswith(".")]  # no temp or marker file


def _four_clips(media, root: Path) -> Path:
    """Four good CREMA-D clips (copies of the face clip) under ``root``."""
    for i in range(4):
        stem = f"10{i:02d}_DFA_ANG_XX"
        for sub, ext in (("VideoFlash", "flv"), ("AudioWAV", "wav")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            src = media[1]["crema_face"] if ext == "flv" else \
                media[0] / "crema" / "AudioWAV" / "1001_DFA_ANG_XX.wav"
            (root / sub / f"{stem}.{ext}").write_bytes(src.read_bytes())
    return root


@pytest.mark.slow
def test_ctrl_c_stops_in_one_line_and_the_same_command_continues(media, tmp_path):
    import signal
    import subprocess
    import time

    root, out = _four_clips(media, tmp_path / "media"), tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer", "extract", "--media", str(root), "--out", str(out),
           "--video", FACE_KIND, "--workers", "1"]
    # Its own process group, signalled whole, as a terminal's Ctrl-C is: the worker process
    # (extract runs even one worker in a child) gets SIGINT too.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(out.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == \
        "stopped: run the same command again to continue where it stopped"
    done = {p.name for p in out.glob("*.npz")}
    assert 1 <= len(done) < 4 and not list(out.glob(".*.tmp"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert f"{4 - len(done)} written, {len(done)} already done, 0 skipped" in again.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_clip_loses_only_its_clip_and_the_run_goes_on(media, tmp_path):
    import os
    import signal
    import threading
    import time

    from trainer.extract.run import ExtractSettings, extract

    root = _four_clips(media, tmp_path / "media")
    out = tmp_path / "out"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(
        extract(root, out, ExtractSettings(video=FACE_KIND), workers=2)))
    run.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:  # as the kernel's OOM killer would
        for marker in out.glob(".extract-worker-*"):
            try:
                rel = marker.read_text()  # written whole (a rename), so never empty
                os.kill(int(marker.name.rsplit("-", 1)[1]), signal.SIGKILL)
                killed = rel
                break
            except (OSError, ValueError):
                continue
        time.sleep(0.01)
    run.join(120)
    assert killed and not run.is_alive()
    assert sorted(result["written"]) == sorted(f"10{i:02d}_DFA_ANG_XX.npz" for i in range(4)
                                               if f"10{i:02d}_DFA_ANG_XX" != killed)
    assert result["skipped"] == [{"path": f"VideoFlash/{killed}.flv",
                                  "reason": "its worker process died (out of memory, or a crash "
                                            "in a native library)"}]
    assert not list(out.glob(".extract-worker-*"))


def test_settings_params_name_what_defines_the_features_and_round_trip(tmp_path):
    from trainer.extract.run import ExtractSettings

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    s = ExtractSettings(audio="logmel", video="facenet", n_mels=40, min_face_frames=9,
                        face_weights=str(weights))
    p = s.params()
    assert p == {"audio": "logmel", "video": "facenet", "video_rate": 15.0, "sample_rate": 16000,
                 "n_mels": 40, "face_weights_sha256": p["face_weights_sha256"]}
    assert str(tmp_path) not in json.dumps(p) and len(p["face_weights_sha256"]) == 64
    back = ExtractSettings.from_params(p)
    assert (back.audio, back.video, back.n_mels, back.face_weights) == ("logmel", "facenet", 40,
                                                                        None)
    assert "n_mels" not in ExtractSettings(audio="egemaps").params()  # not a setting of egemaps


def test_cli_exits_1_when_no_clip_could_be_extracted_and_still_writes_the_report(media, tmp_path,
                                                                                  capsys):
    from trainer.cli import main

    folder = tmp_path / "media" / "VideoFlash"
    folder.mkdir(parents=True)
    (folder / "1003_TIE_SAD_XX.flv").write_bytes(media[1]["crema_no_wav"].read_bytes())
    out = tmp_path / "out"
    assert main(["extract", "--media", str(tmp_path / "media"), "--out", str(out),
                 "--video", FACE_KIND]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no clip extracted (FLV without its WAV")
    assert json.loads((out / "extract.json").read_text())["counts"]["skipped"] == 1
