"""trainer.train_media: `train --media` extracts raw media into --data first (against the moto
server: media in S3, features written to S3 as they finish), then trains; a second run with the
same media and settings reuses the features without extracting.

    .venv/bin/python -m pytest tests/test_train_media.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.media import frames, speech, write_video, write_wav
from trainer.store.s3 import sync_up
from trainer.extract.cli import parse_extract_args, settings_key
from trainer.train_media import extract_media
from util import FAST

EMOTIONS = ("ANG", "HAP", "SAD", "NEU")


@pytest.fixture(scope="module")
def crema(tmp_path_factory) -> Path:
    """A CREMA-D-shaped folder of 8 speakers x 2 clips (one real clip, copied under each name,
    so that it is made once), plus an FLV without its WAV."""
    root = tmp_path_factory.mktemp("crema")
    flv = write_video(root / "VideoFlash" / "1001_DFA_ANG_XX.flv", frames(15, True, seed=1))
    wav = write_wav(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", speech(seconds=1.0), 22050)
    for speaker in range(1001, 1009):
        for emo in EMOTIONS[speaker % 2 * 2:][:2] if speaker > 1001 else ("ANG", "HAP"):
            stem = f"{speaker}_DFA_{emo}_XX"
            if not (root / "VideoFlash" / f"{stem}.flv").exists():
                shutil.copy(flv, root / "VideoFlash" / f"{stem}.flv")
                shutil.copy(wav, root / "AudioWAV" / f"{stem}.wav")
    shutil.copy(flv, root / "VideoFlash" / "1009_DFA_SAD_XX.flv")  # no WAV: reported
    return root


def keys(s3_client, bucket: str, prefix: str) -> dict[str, object]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["LastModified"] for p in pages for o in p.get("Contents", [])}


def test_extract_args_are_checked_in_one_line_and_local_paths_refused():
    s, workers = parse_extract_args("--video opencv --workers 2 --video-rate 10")
    assert (s.video, s.video_rate, workers) == ("opencv", 10.0, 2)
    for bad, words in (("--video nope", "invalid choice"), ("--video-rate -1", "positive"),
                       ("--workers -1", "--workers"), ("--frobnicate", "unrecognized"),
                       ("--openface-csv x", "not allowed"), ("--out=x", "not allowed"),
                       ("--video 'opencv", "cannot be split")):
        with pytest.raises(ValueError, match=words) as e:
            parse_extract_args(bad)
        assert "\n" not in str(e.value)
    # The key names what the features are, not how many workers made them.
    assert settings_key("--video opencv") == settings_key("--video opencv --workers 3")
    assert settings_key("--video opencv") != settings_key("")
    assert settings_key("--video opencv") != settings_key("--video opencv --min-face-frames 9")


def test_train_flags_check_media_and_extract_args_before_a_run():
    from trainer.flags import check_train_args

    check_train_args(["--media", "s3://b/media/x/", "--extract-args", "--video opencv"])
    with pytest.raises(ValueError, match="extract args: .*invalid choice"):
        check_train_args(["--media", "m", "--extract-args", "--video nope"])
    with pytest.raises(ValueError, match="extract_args needs media"):
        check_train_args(["--extract-args", "--video opencv"])


@pytest.mark.slow
def test_clip_files_go_up_while_extracting_not_only_at_the_end(crema, s3_bucket, s3_client,
                                                                tmp_path):
    """What a spot interruption loses is bounded by the upload interval: the progress reports
    clips already in S3 before the extraction has ended."""
    media, data = f"s3://{s3_bucket}/media/crema/", f"s3://{s3_bucket}/features/crema/"
    sync_up(crema, media)
    seen = []

    def status(**kw):
        got = kw["extract"]
        in_s3 = sum(k.endswith(".npz") for k in keys(s3_client, s3_bucket, "features/crema/"))
        seen.append((got["clips_done"], got["uploaded"], in_s3))

    report = extract_media(media, data, "--video opencv --workers 1", str(tmp_path / "cache"),
                           status=status, every=0.05)
    assert report["counts"]["written"] == 16
    assert [s["path"] for s in report["skipped"]] == ["VideoFlash/1009_DFA_SAD_XX.flv"]
    assert any(0 < up < 16 and in_s3 >= up for _, up, in_s3 in seen[:-1]), seen
    assert seen[-1][:2] == (16, 16)
    on_s3 = keys(s3_client, s3_bucket, "features/crema/")
    assert {"extract.json", "1001_DFA_ANG_XX.npz"} <= set(on_s3)
    assert not [k for k in on_s3 if k.split("/")[-1].startswith(".")], on_s3


@pytest.mark.slow
def test_train_media_extracts_to_s3_trains_and_a_second_run_reuses_the_features(
        crema, s3_bucket, s3_client, tmp_path):
    from trainer.cli import main

    media, data = f"s3://{s3_bucket}/media/crema/", f"s3://{s3_bucket}/features/crema-x/"
    sync_up(crema, media)
    common = ["--media", media, "--data", data, "--extract-args", "--video opencv --workers 1",
              "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), *FAST]
    assert main(["train", *common, "--out", f"s3://{s3_bucket}/runs/one/"]) == 0
    features = keys(s3_client, s3_bucket, "features/crema-x/")
    assert len([k for k in features if k.endswith(".npz")]) == 16
    report = json.loads(s3_client.get_object(Bucket=s3_bucket,
                                             Key="features/crema-x/extract.json")["Body"].read())
    assert report["media"] == media and report["settings"]["video"] == "opencv"
    status = json.loads(s3_client.get_object(Bucket=s3_bucket,
                                             Key="runs/one/status.json")["Body"].read())
    assert status["state"] == "done"

    # Again, from a fresh cache: nothing is extracted or rewritten, and it trains.
    common[common.index("--cache-dir") + 1] = str(tmp_path / "cache2")
    assert main(["train", *common, "--out", f"s3://{s3_bucket}/runs/two/"]) == 0
    assert keys(s3_client, s3_bucket, "features/crema-x/") == features
    log = s3_client.get_object(Bucket=s3_bucket, Key="runs/two/train.log")["Body"].read()
    assert b"extract.reused" in log and b"extract.start" not in log
    assert "summary.json" in keys(s3_client, s3_bucket, "runs/two/")


def test_train_media_that_is_not_there_is_one_line(tmp_path, capsys):
    from trainer.cli import main

    code = main(["train", "--media", str(tmp_path / "nope"), "--data", str(tmp_path / "d"),
                 "--out", str(tmp_path / "run"), "--extract-args", "--video opencv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nope" in err[0], err


@pytest.mark.slow
def test_a_stop_while_extracting_ends_as_stopped_and_the_rerun_continues(crema, tmp_path):
    """SIGTERM (a spot interruption) mid-extraction: exit 143 with status stopped and the clip
    files done so far kept; the same command then extracts only the rest, and trains."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data, out = tmp_path / "data", tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "train", "--media", str(crema), "--data", str(data),
           "--out", str(out), "--extract-args", "--video opencv --workers 1", "--epochs", "1",
           *FAST]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while len(list(data.glob("*.npz"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.1)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "extracting" and status["extract"]["media_files"] == 17, status
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "continues the extraction" in err.decode().strip().splitlines()[-1]  # not --resume
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    kept = {p.name for p in data.glob("*.npz")}
    assert 2 <= len(kept) < 16 and not (data / "extract.json").exists()

    done = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads((data / "extract.json").read_text())
    assert set(report["already_done"]) == kept and len(report["written"]) == 16 - len(kept)
    assert json.loads((out / "status.json").read_text())["state"] == "done"
