"""trainer.extract.staging and train --media's S3 side, against the moto server over HTTP:
the completion record goes up last and is trusted only beside its clip files, a resumed
extraction sends only new clips, features belong to the media content they came from, no
``..`` in an s3:// URI, and kills at random moments lose nothing an upload round had sent.

    .venv/bin/python -m pytest tests/test_extract_staging.py -q
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from util import FAST, tiny_demo

from tests.media import frames, speech, write_video, write_wav
from trainer.errors import DataError
from trainer.ops.upload import features_uri
from trainer.store.s3 import S3Error, sync_up
from trainer.store.s3uri import UnsafeURI, parse_s3_uri
from trainer.store.uri import resolve_data
from trainer.train_media import extract_media


# The verbs run here set up logging on this test's captured stderr (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_log_handlers")


ARGS = "--video opencv --workers 1"
CLIPS = 4  # in crema; the kill test uses 8, to have clips left to interrupt


def crema_like(root: Path, speakers: int) -> Path:
    """A CREMA-D-shaped folder of ``speakers`` x 2 clips (one real 1 s clip under each name,
    so that it is made once)."""
    flv = write_video(root / "VideoFlash" / "1001_DFA_ANG_XX.flv", frames(15, True, seed=1))
    wav = write_wav(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", speech(seconds=1.0), 22050)
    for speaker in range(1001, 1001 + speakers):
        for emo in ("ANG", "HAP"):
            stem = f"{speaker}_DFA_{emo}_XX"
            if not (root / "VideoFlash" / f"{stem}.flv").exists():
                shutil.copy(flv, root / "VideoFlash" / f"{stem}.flv")
                shutil.copy(wav, root / "AudioWAV" / f"{stem}.wav")
    return root


@pytest.fixture(scope="module")
def crema(tmp_path_factory) -> Path:
    """4 clips: 1001 and 1002, ANG and HAP."""
    return crema_like(tmp_path_factory.mktemp("crema"), speakers=2)


def objects(s3_client, bucket: str, prefix: str) -> dict[str, int]:
    """``{relative key: size}`` under ``prefix``."""
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["Size"] for p in pages for o in p.get("Contents", [])}


def npz_here(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*.npz")}


def look(staging: Path, snaps: list) -> int:
    """Add (the time after the look, the clip files in ``staging``) to ``snaps``: every file
    in that set was there at that time. The count."""
    seen = set(npz_here(staging)) if staging.is_dir() else set()
    snaps.append((time.time(), seen))
    return len(seen)


def log_lines(path: Path) -> list[dict]:
    """The whole JSON lines of a log that SIGKILL may have cut mid-line."""
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    return lines


def uris(bucket: str) -> tuple[str, str]:
    return f"s3://{bucket}/media/crema/", f"s3://{bucket}/features/crema/"


# --- the completion record -------------------------------------------------------------------

def test_the_record_goes_up_only_once_every_clip_file_is_there(crema, flaky_proxy, s3_bucket,
                                                               s3_client, tmp_path):
    """One clip file S3 refuses: the run fails in one line and no extract.json stands beside
    the missing clip; once S3 takes it, the same call sends the rest and the record."""
    media, data = uris(s3_bucket)
    sync_up(crema, media)
    flaky_proxy.fail("403", methods={"PUT"}, path="/features/crema/1002_DFA_ANG_XX.npz")
    with pytest.raises(S3Error) as err:
        extract_media(media, data, ARGS, str(tmp_path / "cache"), every=0.05)
    assert "\n" not in str(err.value)
    on_s3 = objects(s3_client, s3_bucket, "features/crema/")
    assert "1002_DFA_ANG_XX.npz" not in on_s3 and "extract.json" not in on_s3, on_s3
    assert len([k for k in on_s3 if k.endswith(".npz")]) == CLIPS - 1  # the others still went

    flaky_proxy.heal()
    report = extract_media(media, data, ARGS, str(tmp_path / "cache"), every=0.05)
    assert len(report["already_done"]) == CLIPS
    on_s3 = objects(s3_client, s3_bucket, "features/crema/")
    assert {"extract.json", "1002_DFA_ANG_XX.npz"} <= set(on_s3)


def test_a_record_beside_missing_clip_files_is_not_trusted(crema, s3_bucket, s3_client, tmp_path):
    media, data = uris(s3_bucket)
    sync_up(crema, media)
    cache = str(tmp_path / "cache")
    assert extract_media(media, data, ARGS, cache) is not None
    assert extract_media(media, data, ARGS, cache) is None  # complete: reused
    s3_client.delete_object(Bucket=s3_bucket, Key="features/crema/1002_DFA_HAP_XX.npz")
    with structlog.testing.capture_logs() as logs:
        report = extract_media(media, data, ARGS, cache)
    assert report is not None, "a record with a clip file missing was reused"
    assert [e["missing"] for e in logs if e["event"] == "extract.record_incomplete"] == [1]
    assert "1002_DFA_HAP_XX.npz" in objects(s3_client, s3_bucket, "features/crema/")


# --- resume: what is sent and fetched ------------------------------------------------------------

def test_resume_sends_only_new_clips_and_train_fetches_none_it_sent(crema, flaky_proxy, s3_bucket,
                                                                    s3_client, tmp_path):
    media, data = uris(s3_bucket)
    sync_up(crema, media)
    extract_media(media, data, ARGS, str(tmp_path / "cache"))
    gets = flaky_proxy.count("GET", "/features/crema/1")
    resolve_data(data, str(tmp_path / "cache"))  # what train does next with --data
    assert flaky_proxy.count("GET", "/features/crema/1") == gets, "downloaded what it just sent"

    # An interrupted run: one clip file and the record never reached S3. Resumed on another
    # machine (a fresh cache), only that clip and the record go up.
    for key in ("1001_DFA_HAP_XX.npz", "extract.json"):
        s3_client.delete_object(Bucket=s3_bucket, Key=f"features/crema/{key}")
    seen = len(flaky_proxy.requests)
    report = extract_media(media, data, ARGS, str(tmp_path / "cache2"), every=0.05)
    assert report["counts"]["written"] == 1 and len(report["already_done"]) == CLIPS - 1
    puts = sorted(p.rsplit("/", 1)[-1] for m, p, _ in flaky_proxy.requests[seen:] if m == "PUT")
    assert puts == ["1001_DFA_HAP_XX.npz", "extract.json"], puts


# --- features belong to the media's content ---------------------------------------------------------

def test_media_changed_in_place_are_refused_and_deploy_names_new_features(crema, s3_bucket,
                                                                          s3_client, tmp_path):
    media, data = uris(s3_bucket)
    sync_up(crema, media)
    extract_media(media, data, ARGS, str(tmp_path / "cache"))
    named = features_uri(s3_bucket, media, ARGS)
    assert named == features_uri(s3_bucket, media, ARGS)  # the same content: the same name
    wav = write_wav(tmp_path / "other.wav", speech("Dogs are sitting by the door.", 1.0), 22050)
    s3_client.upload_file(str(wav), s3_bucket, "media/crema/AudioWAV/1002_DFA_ANG_XX.wav")
    with pytest.raises(DataError, match="other media") as err:
        extract_media(media, data, ARGS, str(tmp_path / "cache"))
    assert "\n" not in str(err.value)
    assert features_uri(s3_bucket, media, ARGS) != named


# --- no '..' in an s3:// URI --------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["s3://bkt/data/../../x/", "s3://bkt/../x", "s3://bkt/a/./x/",
                                 "s3://bkt/a//x/", "s3://bkt/a/.."])
def test_parse_s3_uri_refuses_segments_that_leave_a_folder(uri):
    with pytest.raises(UnsafeURI, match="bad S3 prefix") as err:
        parse_s3_uri(uri)
    assert isinstance(err.value, ValueError) and isinstance(err.value, DataError)
    assert parse_s3_uri("s3://bkt/a/b../c/") == ("bkt", "a/b../c/")


def test_dot_dot_in_an_s3_uri_is_one_line_for_every_verb(crema, s3_bucket, s3_client, tmp_path,
                                                         capsys):
    from trainer.cli import main

    cache = tmp_path / "a" / "b" / "cache"
    demo = tiny_demo(tmp_path / "demo", speakers=4, clips_per_speaker=4)
    sync_up(crema, f"s3://{s3_bucket}/media/crema/")
    for argv in (
            ["extract", "--media", str(crema), "--out", f"s3://{s3_bucket}/out/../../../x/",
             "--video", "opencv", "--workers", "1", "--cache-dir", str(cache)],
            ["extract", "--media", f"s3://{s3_bucket}/media/crema/../crema/", "--out",
             str(tmp_path / "out"), "--video", "opencv", "--cache-dir", str(cache)],
            ["train", "--data", str(demo), "--out", f"s3://{s3_bucket}/runs/../../r/",
             "--epochs", "1", *FAST]):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "bad S3 prefix" in err[0], (argv, err)
    assert not [p for p in tmp_path.rglob("*.npz") if not p.is_relative_to(demo)]
    assert not [k for k in objects(s3_client, s3_bucket, "") if not k.startswith("media/")]


# --- the fault test -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kills_during_train_media_lose_no_uploaded_round_and_leave_no_lying_record(
        s3_bucket, s3_client, aws_env, tmp_path):
    """`train --media` killed at random moments of its extraction (SIGKILL, and SIGTERM twice
    as a spot stop sends it), then run again: after each kill every clip file the staging
    folder held when the last upload round listed it is in S3; after a SIGTERM every clip file
    it finished is; an extract.json in S3 never lists a clip file that is not there; and the
    extraction then completes from where they left it."""
    media, data = uris(s3_bucket)
    sync_up(crema_like(tmp_path / "crema", speakers=4), media)
    clips = 8
    cache = tmp_path / "cache"
    staging = cache / s3_bucket / "features" / "crema"
    env = dict(aws_env, AVE_UPLOAD_SECONDS="0.3")
    rng = random.Random(18)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "trainer", "train", "--media", media, "--data", data,
                "--out", str(out), "--extract-args", ARGS, "--epochs", "1",
                "--cache-dir", str(cache), *FAST]

    def record_is_whole() -> None:
        on_s3 = objects(s3_client, s3_bucket, "features/crema/")
        if "extract.json" in on_s3:
            body = s3_client.get_object(Bucket=s3_bucket, Key="features/crema/extract.json")
            record = json.loads(body["Body"].read())
            assert set(record["written"]) | set(record["already_done"]) <= set(on_s3)

    kills = ["TERM", "KILL", "TERM", "KILL"]
    for i, kind in enumerate(kills):
        before = len(npz_here(staging)) if staging.is_dir() else 0
        if before == clips:
            break  # nothing left to interrupt
        out = tmp_path / f"run{i}"
        proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        snaps: list[tuple[float, set[str]]] = []  # (a time after the look, clip files seen)
        deadline = time.monotonic() + 120
        while look(staging, snaps) == before and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        end = time.monotonic() + rng.uniform(0.0, 1.0)
        while time.monotonic() < end:
            look(staging, snaps)
            time.sleep(0.02)
        if kind == "KILL":
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)  # the spot path's second one
        _, err = proc.communicate(timeout=120)
        on_s3 = objects(s3_client, s3_bucket, "features/crema/")
        here = npz_here(staging)
        rounds = [e for e in log_lines(out / "train.log")
                  if e.get("event") == "extract.upload_round" and e["failed"] == 0]
        if rounds:
            listed_at = rounds[-1]["listed_at"]
            seen = [s for t, s in snaps if t < listed_at]
            missing = (seen[-1] if seen else set()) - set(on_s3)
            assert not missing, (kind, i, sorted(missing))
        if kind == "TERM":
            assert proc.returncode == 143, err.decode()[-2000:]
            lost = {rel for rel, size in here.items() if on_s3.get(rel) != size}
            assert not lost, (i, sorted(lost))
        record_is_whole()

    # The same extraction once more, to its end (in this process: what train --media runs
    # before it trains, which test_train_media covers).
    report = extract_media(media, data, ARGS, str(cache))
    assert report is not None and len(report["already_done"]) >= 1
    on_s3 = objects(s3_client, s3_bucket, "features/crema/")
    assert npz_here(staging) == {k: v for k, v in on_s3.items() if k.endswith(".npz")}
    assert len(npz_here(staging)) == clips and "extract.json" in on_s3
    record_is_whole()
