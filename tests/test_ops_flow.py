"""The deploy flow's order and waits (trainer/ops/flow.py), over a backend that only records
what it is asked, and the moto server for the run directories (conftest ``s3_bucket``).

    .venv/bin/python -m pytest tests/test_ops_flow.py -q

What a user relies on: REPLACE=1 stops the run going and waits for its checkpoint before
anything changes (`pulumi up` included), and gives up with one clear line, changing nothing
more, when the run does not stop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trainer.ops import OpsError, flow, upload
from trainer.ops.settings import load


def write_status(s3_client, bucket: str, run_id: str, state: str) -> None:
    body = {"state": state, "epoch": 3, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime())}
    s3_client.put_object(Bucket=bucket, Key=f"runs/{run_id}/status.json",
                         Body=json.dumps(body).encode())


class Recorder:
    """A backend (cloud.AwsBackend's methods) that records the calls; ``stop_run`` writes the
    final status after ``stops_after`` polls of it (never, with None)."""

    name = "aws"

    def __init__(self, bucket, s3_client, going=None, stop_state="stopped"):
        self.bucket, self.s3, self.calls = bucket, s3_client, []
        self.going, self.stop_state = going, stop_state
        self.out = {"bucket": bucket, "region": "us-east-1", "instance_id": "i-1",
                    "repository_url": "r", "log_group": "g"}
        if going:
            write_status(s3_client, bucket, going, "training")

    def preflight(self, docker=True):
        self.calls.append("preflight")

    def deployed(self):
        return self.out

    def active_run(self, out):
        return None

    def outputs(self, create=False, echo=print):
        self.calls.append("pulumi up" if create else "outputs")
        return self.out

    def stop_run(self, out, run_id, echo=print):
        self.calls.append(f"stop {run_id}")
        if self.stop_state:
            write_status(self.s3, self.bucket, run_id, self.stop_state)

    def prepare_image(self, out, run_id, given, echo=print):
        self.calls.append("image")
        return "r@sha256:" + "d" * 64

    def ensure_host(self, out, echo=print):
        self.calls.append("host")

    def start_run(self, out, run_id, image_ref, train_args, echo=print):
        self.calls.append(f"start {image_ref}")


@pytest.fixture
def data(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.npz").write_bytes(b"x")
    return str(tmp_path / "clips")


def deploy_with(backend, monkeypatch, data, **kw):
    monkeypatch.setattr(flow, "backend_for", lambda settings: backend)
    return flow.deploy(load(backend="aws", data=data, args="--epochs 3"), echo=lambda s: None,
                       **kw)


def test_replace_stops_the_run_and_waits_for_it_before_pulumi_up(s3_bucket, s3_client,
                                                                 monkeypatch, data):
    backend = Recorder(s3_bucket, s3_client, going="20250101-000000-aaaa")
    deploy_with(backend, monkeypatch, data, replace=True)
    assert backend.calls == ["preflight", "stop 20250101-000000-aaaa", "pulumi up", "image",
                             "host", "start r@sha256:" + "d" * 64]


def test_without_replace_a_run_going_is_refused_before_anything_changes(s3_bucket, s3_client,
                                                                        monkeypatch, data):
    backend = Recorder(s3_bucket, s3_client, going="20250101-000000-aaaa")
    with pytest.raises(OpsError, match="run 20250101-000000-aaaa is going.*REPLACE=1"):
        deploy_with(backend, monkeypatch, data)
    assert backend.calls == ["preflight"]


def test_a_run_that_does_not_stop_is_one_line_and_nothing_else_is_done(s3_bucket, s3_client,
                                                                       monkeypatch, data):
    backend = Recorder(s3_bucket, s3_client, going="20250101-000000-aaaa", stop_state=None)
    monkeypatch.setattr(flow.time, "sleep", lambda s: None)
    real = flow.stop_run
    monkeypatch.setattr(flow, "stop_run", lambda *a, **kw: real(*a, **{**kw, "wait": 0.2}))
    with pytest.raises(OpsError) as err:
        deploy_with(backend, monkeypatch, data, replace=True)
    assert str(err.value).startswith("step 2/7 (looking for a run already going (and stopping "
                                     "it)) failed: run 20250101-000000-aaaa is still training")
    assert "checkpoint may not be saved" in str(err.value)
    assert backend.calls == ["preflight", "stop 20250101-000000-aaaa"]  # no pulumi up


def test_stop_run_returns_the_final_status(s3_bucket, s3_client):
    backend = Recorder(s3_bucket, s3_client, going="r1")
    st = flow.stop_run(backend, backend.out, "r1", echo=lambda s: None, wait=5, poll=0.1)
    assert st["state"] == "stopped"


# --- MEDIA: raw media uploaded, extracted by the run (train --media), then trained on --------

class StartRecorder(Recorder):
    def start_run(self, out, run_id, image_ref, train_args, echo=print):
        self.calls.append(f"start {image_ref}")
        self.train_args = list(train_args)


def deploy_media(backend, monkeypatch, media, args="--epochs 3", **kw):
    monkeypatch.setattr(flow, "backend_for", lambda settings: backend)
    lines = []
    flow.deploy(load(backend="aws", media=media, args=args), echo=lines.append, **kw)
    return lines


@pytest.fixture
def media(tmp_path):
    (tmp_path / "crema" / "VideoFlash").mkdir(parents=True)
    (tmp_path / "crema" / "AudioWAV").mkdir()
    (tmp_path / "crema" / "VideoFlash" / "1001_DFA_ANG_XX.flv").write_bytes(b"flv")
    (tmp_path / "crema" / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(b"wav")
    return tmp_path / "crema"


def test_media_is_uploaded_once_and_the_run_extracts_into_a_reused_features_prefix(
        s3_bucket, s3_client, monkeypatch, media):
    backend = StartRecorder(s3_bucket, s3_client)
    lines = deploy_media(backend, monkeypatch, str(media))
    args = backend.train_args
    media_uri, data_uri = args[args.index("--media") + 1], args[args.index("--data") + 1]
    prefix = upload.data_prefix(media, kind="media")
    assert prefix.startswith("media/crema-") and media_uri == f"s3://{s3_bucket}/{prefix}"
    assert data_uri.startswith(f"s3://{s3_bucket}/features/{prefix.split('/')[1]}-")
    assert args[-2:] == ["--epochs", "3"]
    on_s3 = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket,
                                                         Prefix="media/")["Contents"]}
    assert on_s3 == {prefix + "VideoFlash/1001_DFA_ANG_XX.flv",
                     prefix + "AudioWAV/1001_DFA_ANG_XX.wav"}
    assert any("2 uploaded" in line for line in lines), lines

    # The same media again: nothing sent, the same features prefix (so the run reuses them).
    lines = deploy_media(backend, monkeypatch, str(media))
    assert any("0 uploaded" in line and "2 already there" in line for line in lines), lines
    assert backend.train_args[backend.train_args.index("--data") + 1] == data_uri
    # Other extract settings: other features, from the same media.
    deploy_media(backend, monkeypatch, str(media),
                 args="--epochs 3 --extract-args '--video opencv'")
    other = backend.train_args[backend.train_args.index("--data") + 1]
    assert other != data_uri and other.startswith(data_uri.rsplit("-", 1)[0] + "-")


@pytest.mark.parametrize("make, args, words", [
    (None, "", "MEDIA=.* is not a folder of media files"),
    ("empty", "", "holds no media files"),
    ("text", "", "holds no media files"),
    ("ok", "--data s3://x/y/", "--data is set by deploy with MEDIA"),
    ("ok", "--extract-args '--video nope'", "extract args: .*invalid choice"),
])
def test_bad_media_is_one_line_before_anything_is_built_or_uploaded(s3_bucket, s3_client,
                                                                    monkeypatch, tmp_path,
                                                                    media, make, args, words):
    folder = {None: tmp_path / "missing", "empty": tmp_path / "empty", "text": tmp_path / "text",
              "ok": media}[make]
    if make in ("empty", "text"):
        folder.mkdir()
    if make == "text":
        (folder / "notes.txt").write_text("not media")
    backend = StartRecorder(s3_bucket, s3_client)
    with pytest.raises(OpsError, match=words) as err:
        deploy_media(backend, monkeypatch, str(folder), args=args)
    assert "\n" not in str(err.value)
    assert backend.calls == []  # no step: nothing built, made or uploaded
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_media_with_folds_is_refused_in_one_line(s3_bucket, s3_client, monkeypatch, media):
    monkeypatch.setattr(flow, "backend_for", lambda settings: StartRecorder(s3_bucket, s3_client))
    with pytest.raises(OpsError, match="MEDIA goes with a single run"):
        flow.deploy(load(backend="aws", media=str(media), folds="5"), echo=lambda s: None)


def _speech_folder(root):
    """What deploy checks of a speech model folder (config, weights, feature extractor), with
    stand-in weight bytes: deploy uploads files, it does not load them."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({
        "model_type": "wavlm", "num_hidden_layers": 12, "hidden_size": 768,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2]}))
    (root / "preprocessor_config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


def test_local_encoder_models_go_up_once_content_addressed_and_the_run_reads_them(
        s3_bucket, s3_client, monkeypatch, media, tmp_path):
    from trainer.extract.encoders import encoder_params, resolve
    from trainer.extract.run import ExtractSettings

    wavlm = _speech_folder(tmp_path / "models" / "wavlm-base-plus")
    onnx = tmp_path / "models" / "enet_b0_8_best_vgaf.onnx"
    onnx.write_bytes(b"onnx" * 100)
    backend = StartRecorder(s3_bucket, s3_client)
    monkeypatch.setattr(flow, "backend_for", lambda settings: backend)
    extract = f"--audio wavlm --audio-model {wavlm} --video hsemotion --face-model={onnx}"
    lines = []
    flow.deploy(load(backend="aws", media=str(media), args="--epochs 3", extract=extract),
                echo=lines.append)
    args = backend.train_args
    sent = args[args.index("--extract-args") + 1]
    model_uri = sent.split("--audio-model ")[1].split()[0]
    face_uri = sent.split("--face-model=")[1].split()[0]
    assert model_uri == f"s3://{s3_bucket}/{upload.data_prefix(wavlm, kind='models')}"
    assert model_uri.startswith(f"s3://{s3_bucket}/models/wavlm-base-plus-")
    assert face_uri.startswith(f"s3://{s3_bucket}/models/enet_b0_8_best_vgaf-")
    assert face_uri.endswith("/enet_b0_8_best_vgaf.onnx") and str(tmp_path) not in sent
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket,
                                                        Prefix="models/")["Contents"]}
    assert len(keys) == 4  # three files of the folder, the ONNX file
    data_uri = args[args.index("--data") + 1]

    # Again: nothing sent, the same features prefix.
    lines = []
    flow.deploy(load(backend="aws", media=str(media), args="--epochs 3", extract=extract),
                echo=lines.append)
    assert sum("0 uploaded" in line for line in lines) == 3, lines  # media, folder, file
    assert backend.train_args[backend.train_args.index("--data") + 1] == data_uri

    # The instance's side: the models come down into its cache, with the same weights' hashes.
    remote = ExtractSettings(audio="wavlm", audio_model=model_uri, video="hsemotion",
                             face_model=face_uri)
    here = resolve(remote, tmp_path / "cache")
    assert Path(here.audio_model).is_dir() and str(tmp_path / "cache") in here.audio_model
    local = ExtractSettings(audio="wavlm", audio_model=str(wavlm), video="hsemotion",
                            face_model=str(onnx))
    assert encoder_params(here) == encoder_params(local)


def test_extract_without_media_or_twice_is_one_line(s3_bucket, s3_client, monkeypatch, media):
    backend = StartRecorder(s3_bucket, s3_client)
    monkeypatch.setattr(flow, "backend_for", lambda settings: backend)
    with pytest.raises(OpsError, match="EXTRACT .* goes with MEDIA"):
        flow.deploy(load(backend="aws", data="demo-data", extract="--video opencv"),
                    echo=lambda s: None)
    with pytest.raises(OpsError, match="extract flags given twice"):
        flow.deploy(load(backend="aws", media=str(media), extract="--video opencv",
                         args="--extract-args '--video opencv'"), echo=lambda s: None)
    assert backend.calls == []


def test_a_hub_id_with_allow_download_goes_to_the_instance_as_is(tmp_path, monkeypatch):
    """The instance downloads it (it has the internet); nothing is fetched or uploaded here,
    and without --allow-download a hub id is no model deploy can send."""
    monkeypatch.chdir(tmp_path)
    args = "--audio wavlm --audio-model microsoft/wavlm-base-plus --allow-download"
    assert upload.upload_models("bucket", args) == args
    with pytest.raises(OpsError, match="model microsoft/wavlm-base-plus: no such folder"):
        upload.upload_models("bucket", "--audio wavlm --audio-model microsoft/wavlm-base-plus")
