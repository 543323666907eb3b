"""Pretrained encoders in ``extract`` (issue 17): WavLM/HuBERT/wav2vec2 speech features through
``transformers`` and HSEmotion's ONNX face encoder, on tiny random models the tests make
(trainer.bench.tiny_encoders: hidden size 32, 2 layers, the standard conv stack; an ONNX file
with HSEmotion's signature). Nothing is downloaded; real media from tests/media.py.

    .venv/bin/python -m pytest tests/test_encoders.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from util import FAST

from tests.media import FPS, frames, speech, write_video
from trainer.bench.tiny_encoders import tiny_hsemotion, tiny_speech
from trainer.extract.clips import media_clip
from trainer.extract.run import ExtractSettings, extract, extract_clip

# The verbs run here set up logging on this test's captured stderr (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_log_handlers")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The three tiny speech models, a second WavLM with other weights, a tiny HSEmotion."""
    root = tmp_path_factory.mktemp("models")
    made = {kind: tiny_speech(root / kind, kind) for kind in ("wavlm", "hubert", "wav2vec2")}
    made["wavlm-other"] = tiny_speech(root / "wavlm-other", "wavlm", seed=1)
    made["wavlm-local"] = tiny_speech(root / "wavlm-local", "wavlm", local=True)
    made["face"] = tiny_hsemotion(root / "enet_tiny.onnx")
    made["face-other"] = tiny_hsemotion(root / "other" / "enet_tiny.onnx", seed=1)
    return made


# --- speech encoders -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wavlm", "hubert", "wav2vec2"])
def test_speech_frames_are_the_models_own_at_true_times_in_float16(models, kind):
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    from trainer.extract.speech import speech_encoder

    wave = np.random.default_rng(0).normal(0, 0.1, 16000 + 123).astype(np.float32)
    feats, times, info = speech_encoder(kind, str(models[kind]), "1-2")(wave)
    # The model's own frame count and the mean of its layers 1 and 2, computed here directly.
    model = AutoModel.from_pretrained(models[kind]).eval()
    x = AutoFeatureExtractor.from_pretrained(models[kind])(wave, sampling_rate=16000,
                                                           return_tensors="pt")
    with torch.no_grad():
        hs = model(x["input_values"], output_hidden_states=True).hidden_states
    expected = ((hs[1] + hs[2]) / 2)[0].numpy()
    assert feats.dtype == np.float16 and feats.shape == expected.shape == (50, 32)  # (16123 - 400) // 320 + 1
    np.testing.assert_allclose(feats.astype(np.float32), expected, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(times, (320 * np.arange(50) + 200) / 16000)
    assert info["name"] == kind and info["layers"] == [1, 2] and info["frame_rate"] == 50


def test_params_name_the_model_hash_its_weights_and_keep_the_layers(models, tmp_path):
    from trainer.extract.speech import weights_sha256

    s = ExtractSettings(audio="wavlm", audio_model=str(models["wavlm"]), video="opencv")
    p = s.params()
    assert p["audio_model"] == "wavlm" and p["audio_layers"] == [2, 2]  # 2 layers: the top one
    assert p["audio_model_sha256"] == weights_sha256(models["wavlm"]) != \
        weights_sha256(models["wavlm-other"])
    assert str(tmp_path.parent) not in json.dumps(p)  # no local path
    back = ExtractSettings.from_params(p)
    assert back.audio_layers == "2-2" and back.audio_model_name == "wavlm"
    # The same name with other weights is another extraction.
    other = ExtractSettings(audio="wavlm", audio_model=str(models["wavlm-other"]),
                            audio_model_name="wavlm", video="opencv").params()
    assert other["audio_model"] == p["audio_model"] and other != p


@pytest.mark.parametrize("flags, words", [
    (["--audio", "wavlm", "--audio-model", "microsoft/wavlm-base-plus"],
     "a hub id is downloaded only with --allow-download (nothing was fetched)"),
    (["--audio", "wavlm"], "--audio wavlm needs --audio-model DIR"),
    (["--audio", "hubert", "--audio-model", "{wavlm}"], "holds a 'wavlm' model"),
    (["--audio", "wavlm", "--audio-model", "{wavlm}", "--audio-layers", "3-5"],
     "the model has layers 0 (its convolutional features) to 2"),
    (["--audio-model", "{wavlm}"], "go with --audio wavlm|hubert|wav2vec2, not logmel"),
    (["--video", "hsemotion"], "needs --face-model FILE.onnx"),
    (["--video", "hsemotion", "--face-model", "{tmp}/absent.onnx"], "no face model file"),
])
def test_bad_encoder_flags_are_one_line_with_no_network_call(models, tmp_path, capsys, flags,
                                                            words):
    from trainer.cli import main

    calls = []
    watching = [True]

    def audit(event, args):  # every socket the process would open while the verb runs
        if watching[0] and event in ("socket.connect", "socket.getaddrinfo"):
            calls.append((event, args))

    sys.addaudithook(audit)
    (tmp_path / "media").mkdir()
    argv = ["extract", "--media", str(tmp_path / "media"), "--out", str(tmp_path / "out")] + \
        [f.format(tmp=tmp_path, wavlm=models["wavlm"]) for f in flags]
    try:
        assert main(argv) == 1
    finally:
        watching[0] = False
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert calls == [] and not (tmp_path / "out").exists()


# --- HSEmotion face encoder -------------------------------------------------------------------


def test_hsemotion_reads_the_aligned_crop_as_its_package_preprocesses_it(models):
    import onnxruntime as ort

    from trainer.extract.face import OpenCVFace
    from trainer.extract.face_encoder import HSEmotionFace

    images = frames(4, True, seed=1)
    face, tracker = HSEmotionFace(str(models["face"])), OpenCVFace()
    sess = ort.InferenceSession(str(models["face"]), providers=["CPUExecutionProvider"])
    for img in images:
        got = face(img)
        crop = tracker.crop(img, 224)  # the same tracker, step for step
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        # hsemotion-onnx's own preprocessing: /255, ImageNet mean and std, NCHW float32.
        x = crop / 255.0
        x = ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None]
        scores, embedding = sess.run(["output", "features"], {"input": x.astype(np.float32)})
        assert got.shape == (24,) and face.dim == 24
        np.testing.assert_allclose(got, np.concatenate([scores[0], embedding[0]]), atol=1e-4)
    assert face(frames(1, False)[0]) is None  # no face: the frame is dropped
    assert face.info["outputs"] == {"output": 8, "features": 16}
    assert face.info["classes"][:2] == ["Anger", "Contempt"]
    face.close()


# --- real media end to end: clip files that train, predict on raw media ------------------------

EMOTIONS = ("01", "03", "04", "05")  # NEU HAP SAD ANG
SENTENCES = ("Kids are talking by the door.", "Dogs are sitting by the door.")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, models):
    """4 RAVDESS actors x 2 emotions (1 s espeak-ng speech, a moving face), extracted by the CLI
    with WavLM and HSEmotion, then one epoch of training on the clip files."""
    root = tmp_path_factory.mktemp("encoders-e2e")
    media, data, run = root / "media", root / "data", root / "run"
    sr = 22050
    waves = [speech(t, seconds=1.0, sample_rate=sr) for t in SENTENCES]
    for actor in range(1, 5):
        for k, emotion in enumerate(EMOTIONS[actor % 2::2]):
            write_video(media / f"Actor_{actor:02d}" / f"01-01-{emotion}-01-01-01-{actor:02d}.mp4",
                        frames(FPS, True, seed=10 * actor + k), audio=(waves[k], sr))
    from trainer.cli import main  # in this process: torch and transformers imported once

    assert main(["extract", "--media", str(media), "--out", str(data), "--audio", "wavlm",
                 "--audio-model", str(models["wavlm"]), "--video", "hsemotion", "--face-model",
                 str(models["face"]), "--workers", "1"]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *FAST]) == 0
    return run / "checkpoints" / "best.pt", media, data


@pytest.mark.slow
def test_clip_files_carry_encoder_features_and_train(trained, models):
    checkpoint, _, data = trained
    report = json.loads((data / "extract.json").read_text())
    assert report["counts"]["written"] == 8 and not report["skipped"]
    with np.load(data / report["written"][0]) as z:
        assert z["audio_features"].dtype == np.float16 and z["audio_features"].shape[1] == 32
        assert z["video_features"].shape[1] == 24
        np.testing.assert_allclose(np.diff(z["audio_timestamps"]), 0.02)
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["extract"]["settings"]["audio_model"] == "wavlm"
    assert ckpt["extract"]["settings"]["face_model_sha256"] == report["settings"][
        "face_model_sha256"]
    assert ckpt["model_settings"]["audio_dim"] == 32 and ckpt["model_settings"]["video_dim"] == 24


@pytest.mark.slow
def test_predict_on_raw_media_extracts_with_the_checkpoints_encoders(trained, models, tmp_path,
                                                                     capsys):
    from trainer.cli import main
    from trainer.errors import CheckpointError
    from trainer.predict import predict

    checkpoint, media, data = trained
    stem = "Actor_03/01-01-03-01-01-01-03"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(checkpoint), str(media / f"{stem}.mp4"),
                 str(data / f"{stem}.npz")]) == 0
    raw, npz = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert raw["probabilities"] == pytest.approx(npz["probabilities"], abs=1e-5)
    # A model that is not there: one line on the command line, nothing scored.
    assert main(["predict", "--checkpoint", str(checkpoint), "--audio-model",
                 str(tmp_path / "gone"), str(media / f"{stem}.mp4")]) == 1
    got = capsys.readouterr()
    lines = got.err.strip().splitlines()
    assert len(lines) == 1 and "which is no longer at" in lines[0] \
        and "--audio-model DIR" in lines[0] and not got.out, got.err
    # Another model's weights: the same one-line error (CheckpointError), for either encoder.
    for models_given, words in (({"audio_model": str(models["wavlm-other"])},
                                 "but this checkpoint was trained on features of wavlm with "
                                 "weights"),
                                ({"face_model": str(models["face-other"])},
                                 "but this checkpoint was trained on features of "
                                 "enet_tiny.onnx")):
        with pytest.raises(CheckpointError, match=words) as err:
            predict(checkpoint, [str(media / f"{stem}.mp4")], models=models_given)
        assert "\n" not in str(err.value)


# --- timing: the two streams on one clock -----------------------------------------------------


def test_a_click_and_a_picture_change_at_one_moment_land_in_frames_that_agree(models,
                                                                              tmp_path):
    """A click in faint noise and the picture changing (the face's colours swapped) at the same
    moment, in one MP4 (H.264 + AAC): the speech frame that the click changes most (against
    the same clip without it; layer 0 of a model whose conv features see only their frames) and
    the video frame that changes most from the one before have times within one video frame
    (1/15 s) of each other and of the moment."""
    sr, moment = 22050, 16 / FPS  # on a frame boundary: 0.533 s
    quiet = np.random.default_rng(0).normal(0, 1e-2, sr).astype(np.float32)
    click = quiet.copy()
    click[int(round(moment * sr)):int(round(moment * sr)) + 22] = 0.9  # 1 ms
    still = frames(1, True, seed=2)[0]
    images = [still if i < 16 else still[..., ::-1].copy() for i in range(FPS)]
    s = ExtractSettings(audio="wavlm", audio_model=str(models["wavlm-local"]), audio_layers="0",
                        video="hsemotion", face_model=str(models["face"]))
    got = [extract_clip(media_clip(write_video(tmp_path / name / "01-01-01-01-01-01-01.mp4",
                                               images, audio=(wave, sr))), s)
           for name, wave in (("quiet", quiet), ("click", click))]
    a0, (a1, at_) = (got[0]["audio_features"].astype(np.float32),
                     (got[1]["audio_features"].astype(np.float32), got[1]["audio_timestamps"]))
    v, vt = got[1]["video_features"], got[1]["video_timestamps"]
    heard = at_[np.argmax(np.linalg.norm(a1 - a0, axis=1))]
    seen = vt[1:][np.argmax(np.linalg.norm(np.diff(v, axis=0), axis=1))]
    step = 1 / 15
    assert abs(heard - seen) <= step, (heard, seen)
    assert abs(heard - moment) <= step and abs(seen - moment) <= step, (heard, seen, moment)


def test_resume_keeps_clips_of_the_same_model_and_redoes_another(models, tmp_path):
    wave = speech(seconds=1.0, sample_rate=22050)
    write_video(tmp_path / "media" / "Actor_01" / "01-01-03-01-01-01-01.mp4",
                frames(FPS, True, seed=3), audio=(wave, 22050))
    s = ExtractSettings(audio="hubert", audio_model=str(models["hubert"]), video="opencv")
    assert extract(tmp_path / "media", tmp_path / "out", s, workers=1)["counts"]["written"] == 1
    again = extract(tmp_path / "media", tmp_path / "out", s, workers=1)
    assert again["counts"]["already_done"] == 1 and again["counts"]["written"] == 0
    other = ExtractSettings(audio="hubert", audio_model=str(models["hubert"]),
                            audio_layers="0-1", video="opencv")
    assert extract(tmp_path / "media", tmp_path / "out", other, workers=1)["counts"][
        "written"] == 1
