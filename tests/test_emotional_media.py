"""trainer.bench.emotional_media: CREMA-D-shaped files that decode, classes that differ the way
the generator says (pitch, loudness and length of the speech; the face's mouth corners, brows and
opening as the face mesh sees them), and ``extract`` turning them into clip files.

    .venv/bin/python -m pytest tests/test_emotional_media.py -q
"""

from __future__ import annotations

import csv
import dataclasses

import av
import numpy as np
import pytest

from trainer.bench.emotional_media import (
    FPS,
    HEIGHT,
    SAMPLE_RATE,
    WIDTH,
    ClipSpec,
    face_frames,
    make_media,
    opening,
    prosody,
    speakers,
    speech,
    split_manifest,
)
from trainer.cli import main
from trainer.data import load_dataset, read_manifest
from trainer.extract.decode import read_audio


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("emo") / "media"
    return root, make_media(root, n_speakers=2, clips_per_speaker=2, seed=0)


def test_files_are_crema_d_named_and_shaped_and_decode(media):
    root, rows = media
    assert [r["stem"] for r in rows] == ["1001_DFA_ANG_XX", "1001_ITH_DIS_XX",
                                         "1002_MTI_DIS_XX", "1002_DFA_FEA_XX"]
    with open(root / "media.csv", newline="") as f:
        assert [r["stem"] for r in csv.DictReader(f)] == [r["stem"] for r in rows]
    for r in rows:
        with av.open(str(root / "VideoFlash" / f"{r['stem']}.flv")) as c:
            v = c.streams.video[0]
            assert (v.codec_context.name, v.width, v.height) == ("flv", WIDTH, HEIGHT)
            assert sum(1 for _ in c.decode(v)) == r["frames"]
        wave = read_audio(root / "AudioWAV" / f"{r['stem']}.wav")
        assert len(wave) == round(r["frames"] * SAMPLE_RATE / FPS)  # as long as the video
        assert 0.05 < np.abs(wave).max() <= 1


def f0(wave: np.ndarray) -> float:
    """Median pitch (Hz) of the voiced 40 ms frames, by autocorrelation over 60-400 Hz."""
    n, found = 640, []
    for i in range(0, len(wave) - n, n // 2):
        x = wave[i:i + n] - wave[i:i + n].mean()
        if np.sqrt(np.mean(x ** 2)) < 0.3 * np.sqrt(np.mean(wave ** 2)):
            continue
        ac = np.correlate(x, x, "full")[n - 1:]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(SAMPLE_RATE / lag)
    return float(np.median(found))


def test_speech_pitch_loudness_and_length_follow_the_class():
    s = dataclasses.replace(speakers(1)[0], expressive=1.0)
    got = {}
    for emotion in ("ANG", "NEU", "SAD"):
        wave = speech("I'm on my way to the meeting", s.voice, *prosody(s, emotion))
        got[emotion] = (f0(wave), float(np.sqrt(np.mean(wave ** 2))), len(wave))
    (fa, la, na), (fn, ln, nn), (fs, ls, ns) = got["ANG"], got["NEU"], got["SAD"]
    assert fa > fn * 1.05 and fn > fs * 1.05, got  # high arousal: higher pitch
    assert la > ln * 1.3 and ln > ls * 1.3, got  # louder
    assert na < nn < ns, got  # and faster


def test_clips_jitter_and_speakers_differ():
    a, b = speakers(2)
    assert (a.voice, a.pitch) != (b.voice, b.pitch)
    # the same class from two speakers, or twice from one, is never said the same way
    rng = np.random.default_rng(0)
    assert prosody(a, "ANG", rng) != prosody(a, "ANG", rng) != prosody(b, "ANG", rng)


def test_mouth_opens_with_the_speech():
    t = np.arange(int(SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.where(t < 0.5, 0.0, 0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    o = opening(wave, FPS)
    assert o[:14].max() < 0.05 and o[16:-1].min() > 0.7  # shut in silence, open when loud


def mesh_points(frame: np.ndarray) -> dict[int, np.ndarray]:
    """Normalised face-mesh points of one frame, by MediaPipe's landmark number."""
    from trainer.extract.face import make_face

    face = make_face("mediapipe")
    try:
        vec = face(frame)
    finally:
        face.close()
    assert vec is not None, "no face found"
    return dict(zip(face.landmarks, vec.reshape(-1, 3)))


@pytest.mark.slow
def test_the_face_mesh_sees_each_expression_and_the_open_mouth():
    s = dataclasses.replace(speakers(1)[0], scale=0.95, angle=0.0)
    shut = np.zeros(14)
    p = {}
    for emotion in ("NEU", "HAP", "SAD", "ANG", "FEA"):
        c = ClipSpec("x", "1001", "IEO", emotion, s.voice, 50, 170, 100, 0.0, 1.0, seed=1)
        p[emotion] = mesh_points(face_frames(s, c, shut)[-1])
    # y grows downward. 61/291 mouth corners, 13/14 inner lips; 33/133/263/362 eye corners,
    # 105/334 mid brows; 159/145 and 386/374 upper and lower lids.
    corners = {e: (q[61][1] + q[291][1]) / 2 - (q[13][1] + q[14][1]) / 2 for e, q in p.items()}
    brows = {e: np.mean([q[i][1] for i in (33, 133, 263, 362)]) - (q[105][1] + q[334][1]) / 2
             for e, q in p.items()}
    eyes = {e: (q[145][1] - q[159][1] + q[374][1] - q[386][1]) / 2 for e, q in p.items()}
    assert corners["HAP"] < corners["NEU"] - 0.02 < corners["SAD"] - 0.04, corners
    assert brows["FEA"] > brows["NEU"] + 0.02, brows  # fear raises the brows
    assert eyes["FEA"] > eyes["NEU"] + 0.005 > eyes["ANG"] + 0.01, eyes  # and widens the eyes
    c = ClipSpec("x", "1001", "IEO", "NEU", s.voice, 50, 170, 100, 0.0, 0.0, seed=1)
    lips = [(q[14][1] - q[13][1]) for q in
            (mesh_points(face_frames(s, c, np.full(14, o))[-1]) for o in (0.0, 1.0))]
    assert lips[1] > lips[0] + 0.03, lips  # inner lips apart by about 4 px


@pytest.mark.slow
def test_extract_makes_clip_files_and_the_manifest_splits_by_speaker(media, tmp_path):
    root, rows = media
    data = tmp_path / "data"
    assert main(["extract", "--media", str(root), "--out", str(data), "--video", "opencv",
                 "--workers", "1"]) == 0
    for r in rows:
        with np.load(data / f"{r['stem']}.npz") as z:
            assert z["audio_features"].shape[0] > 50 and z["video_features"].shape[0] >= 5
    manifest = split_manifest(data, test=1, val=0, seed=0)
    splits = {(r["speaker"], r["split"]) for r in read_manifest(manifest)}
    assert sorted(s for _, s in splits) == ["test", "train"]  # one speaker each, all its clips
    assert len(load_dataset(str(manifest)).clips) == len(rows)
