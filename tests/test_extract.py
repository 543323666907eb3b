"""trainer.extract (clips, decode, audio, run, cli) on real media the tests make (tests/media.py):
espeak-ng speech, a photographed face, encoded with PyAV as CREMA-D FLV + WAV and RAVDESS MP4.

    .venv/bin/python -m pytest tests/test_extract.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import FPS, HEIGHT, WIDTH, frames, make_crema, make_ravdess, speech, \
    truncate, write_video, write_wav
from trainer.errors import MediaError
from trainer.extract.audio import audio_features
from trainer.extract.clips import find_clips, media_clip
from trainer.extract.decode import at_rate, read_audio, read_frames

FACE_KIND = "opencv"  # the pipeline's face extractor in these tests: the fastest to make


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
    assert mp4.dtype == np.float32 and abs(len(mp4) - 16000) < 800  # AAC's padding frames
    assert mp4.std() > 0.01


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
