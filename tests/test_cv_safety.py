"""cv's results stay its own: a resume of another plan, settings or data is refused and stale
folders are never aggregated; one writer per task (flock locally, a lease on S3, against the
moto server); ``--parallel``'s children die with their parent, and a stop says what is true;
``--media`` is extracted once, before the folds are planned; bad outputs are one line.

    .venv/bin/python -m pytest tests/test_cv_safety.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from util import FAST, read_jsonl, tiny_demo

from trainer.cli import main
from trainer.cv.lock import LEASE_FILE, Lease, local_lock
from trainer.cv.report import aggregate
from trainer.errors import DataError
from trainer.ops import OpsError, arrays

TINY = [*FAST, "--epochs", "1", "--d-model", "16"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 speakers, 6 clips each."""
    return tiny_demo(tmp_path_factory.mktemp("data"), speakers=8, clips_per_speaker=6)


@pytest.fixture(scope="module")
def three(data, tmp_path_factory):
    """A finished 3-fold cv of 1 epoch (the issue's was 4 folds: 3 show the same)."""
    out = tmp_path_factory.mktemp("cv") / "r"
    assert main(["cv", "--data", str(data), "--out", str(out), "--folds", "3", *TINY]) == 0
    return out


def one_error(capsys) -> str:
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ 1: resume of another plan
def test_a_resume_with_another_plan_or_settings_or_data_is_refused_in_one_line(
        data, three, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(three, out)
    before = (out / "cv.json").read_text()
    # the case: another K, more epochs, another model
    assert main(["cv", "--data", str(data), "--out", str(out), "--folds", "2", *FAST,
                 "--epochs", "3", "--model", "lstm", "--resume"]) == 1
    assert "fold-3, which this plan does not have" in one_error(capsys)
    # the same K, another setting: the folder names what changed
    assert main(["cv", "--data", str(data), "--out", str(out), "--folds", "3", *FAST,
                 "--epochs", "3", "--d-model", "16", "--resume"]) == 1
    assert "train.epochs 1, now 3" in one_error(capsys)
    # the same K and settings, a clip's features changed in place
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    clip = next(p for p in sorted(changed.rglob("*.npz")) if "broken" not in str(p))
    arrays_ = dict(np.load(clip))
    arrays_["audio_features"] = arrays_["audio_features"] + 1.0
    np.savez(clip, **arrays_)
    assert main(["cv", "--data", str(changed), "--out", str(out), "--folds", "3", *TINY,
                 "--resume"]) == 1
    assert "the data (its clips or their features) changed" in one_error(capsys)
    assert (out / "cv.json").read_text() == before  # nothing rewritten
    # the same plan, settings and data (another path to a copy): a resume is a no-op
    shutil.copytree(data, tmp_path / "copy")
    assert main(["cv", "--data", str(tmp_path / "copy"), "--out", str(out), "--folds", "3",
                 *TINY, "--resume"]) == 0
    assert "cv: 3 of 3 tasks" in capsys.readouterr().out


def test_a_batch_task_refuses_a_folder_of_another_plan(data, three, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(three, out)
    (out / "fold-2/summary.json").unlink()  # interrupted: a retry would resume it
    assert main(["cv", "--data", str(data), "--out", str(out), "--folds", "3", *FAST,
                 "--epochs", "2", "--d-model", "16", "--task", "1"]) == 1
    assert "fold-2 was started with another plan" in one_error(capsys)
    assert not (out / "fold-2/summary.json").exists()


def test_stale_folders_are_never_aggregated(three, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(three, out)
    shutil.copytree(out / "fold-1", out / "fold-7")  # a folder of another plan
    task = json.loads((out / "fold-7/cv-task.json").read_text())
    task["settings"]["folds"] = 8
    (out / "fold-7/cv-task.json").write_text(json.dumps(task))
    with pytest.raises(DataError, match="2 different cv plans"):
        aggregate(str(out))
    plan = {d: json.loads((out / d / "cv-task.json").read_text())
            for d in ("fold-1", "fold-2", "fold-3")}
    doc = aggregate(str(out), plan)
    assert [f["dir"] for f in doc["folds"]] == list(plan)
    assert doc["summary"]["tasks_done"] == 3


# ------------------------------------------------------------------- 2: one writer per task
def test_a_second_local_writer_waits_then_gives_up_in_one_line(tmp_path):
    where = tmp_path / "fold-1"
    with local_lock(where):
        with pytest.raises(DataError, match=f"pid {os.getpid()}") as e:
            with local_lock(where, wait=0.3, poll=0.1):
                pass
        assert "\n" not in str(e.value)
    with local_lock(where, wait=0):  # released with its holder
        pass


def test_an_s3_lease_has_one_holder_and_a_stale_one_is_taken_over(s3_bucket, s3_client):
    uri = f"s3://{s3_bucket}/runs/r1/fold-1/{LEASE_FILE}"
    # four writers at once on a free lease: the conditional PUT lets exactly one in
    leases = [Lease(uri, ttl=30, wait=0, poll=0.05) for _ in range(4)]
    got: list[str] = []

    def take(lease):
        try:
            lease.acquire()
            got.append("held")
        except DataError:
            got.append("refused")

    threads = [threading.Thread(target=take, args=(x,)) for x in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["held", "refused", "refused", "refused"]
    holder = next(x for x in leases if x.etag is not None)
    holder.release()
    doc = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=uri.split("/", 3)[3])
                     ["Body"].read())
    assert doc["released"] is True
    nxt = Lease(uri, ttl=2, wait=0, poll=0.05)
    nxt.acquire()  # a released lease is free at once
    nxt._stop.set()  # its holder dies: no renewal, no release
    nxt._thread.join()
    late = Lease(uri, ttl=2, wait=10, poll=0.2)
    t0 = time.monotonic()
    late.acquire()  # waits until the dead holder's lease is older than its ttl
    assert 0.5 < time.monotonic() - t0 < 9
    late.release()


HOLD_A_LEASE = """
import sys, time
from trainer.cv.lock import Lease
Lease(sys.argv[1], ttl=1.5, wait=0, poll=0.05).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_holder_whose_lease_was_taken_over_stops_without_writing_more(s3_bucket, s3_client):
    uri = f"s3://{s3_bucket}/runs/r1/fold-2/{LEASE_FILE}"
    key = uri.split("/", 3)[3]
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_LEASE, uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        # another writer takes the task over (as after the holder's renewals failed for > ttl)
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b'{"owner": "another host"}')
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert time.monotonic() - t0 < 5  # at its next renewal (every ttl / 3), not after its work
    assert "another process took over" in err and "Traceback" not in err
    # it wrote nothing more: the lease is the other writer's still
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert json.loads(body) == {"owner": "another host"}


# --------------------------------------------------------------- 3: media extracted once
def test_cv_media_extracts_once_then_plans_every_clip(tmp_path, capsys):
    from tests.media import frames, speech, write_video, write_wav

    media = tmp_path / "media"
    flv = write_video(media / "VideoFlash" / "1001_DFA_ANG_XX.flv", frames(12, True, seed=1))
    wav = write_wav(media / "AudioWAV" / "1001_DFA_ANG_XX.wav", speech(seconds=0.8), 22050)
    for speaker in range(1001, 1007):
        for emo in ("ANG", "HAP"):
            stem = f"{speaker}_DFA_{emo}_XX"
            if stem != "1001_DFA_ANG_XX":
                shutil.copy(flv, media / "VideoFlash" / f"{stem}.flv")
                shutil.copy(wav, media / "AudioWAV" / f"{stem}.wav")
    data, out = tmp_path / "data", tmp_path / "cv"
    common = ["--media", str(media), "--data", str(data), "--extract-args",
              "--video opencv --workers 1", *TINY]
    assert main(["cv", *common, "--out", str(out), "--folds", "2", "--task", "0"]) == 1
    assert "--task with --media" in one_error(capsys)
    assert main(["cv", *common, "--out", str(out), "--folds", "2"]) == 0
    report = json.loads((data / "extract.json").read_text())
    assert report["counts"]["written"] == 12
    tested = []
    for k in (1, 2):
        log = read_jsonl(out / f"fold-{k}/train.log")
        assert not any(x["event"].startswith("extract") for x in log)  # the tasks only train
        split = (out / f"fold-{k}/splits.csv").read_text().splitlines()[1:]
        assert len(split) == 12  # every extracted clip is in the fold
        tested += [row.split(",")[0] for row in split if row.endswith(",test")]
    assert len(tested) == len(set(tested)) == 12  # each tested once


def test_an_array_refuses_media_in_its_args():
    for args in (["--media", "s3://b/media/x/"], ["--media=s3://b/media/x/"],
                 ["--extract-args", "--video opencv"]):
        with pytest.raises(OpsError, match="goes with a single run, not FOLDS") as e:
            arrays.check("2", "0", args)
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------- 14: one line each
def test_aggregate_of_a_missing_bucket_and_export_under_a_file_are_one_line(
        aws_env, tmp_path, capsys):
    assert main(["cv", "--out", "s3://no-such-bucket-18a/x/", "--aggregate"]) == 1
    assert "does not exist" in one_error(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "file" / "m.onnx")]) == 1
    assert "is a file, not a folder" in one_error(capsys)


def test_a_403_where_a_task_looks_for_its_files_is_one_line(data, flaky_proxy, s3_bucket,
                                                             capsys):
    flaky_proxy.fail("403", methods={"HEAD"})  # a job role that may not list the bucket
    assert main(["cv", "--data", str(data), "--out", f"s3://{s3_bucket}/runs/r1/", "--folds",
                 "3", *TINY, "--task", "0"]) == 1
    line = one_error(capsys)
    assert "access denied to s3://" in line and "summary.json" in line


# ---------------------------------------------------- 15 and the faults: cv --parallel killed
def start(data, out, *extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "trainer", "cv", "--data", str(data),
                             "--out", str(out), "--folds", "2", "--parallel", "2", *FAST,
                             "--d-model", "16", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def children(out: Path) -> list[int]:
    """Pids of the trainer processes writing tasks of ``out``."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--task" in cmd and str(out).encode() in cmd:
            found.append(int(p.name))
    return found


def gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()
                 and b"Z" not in Path(f"/proc/{p}/stat").read_bytes().split(b") ")[-1][:1]]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def epochs(out: Path, d: str) -> list[int]:
    path = out / d / "metrics.jsonl"
    return [r["epoch"] for r in read_jsonl(path)] if path.exists() else []


def test_a_stop_while_the_tasks_load_says_no_checkpoint_exists(data, tmp_path):
    out = tmp_path / "r"
    proc = start(data, out, "--epochs", "1")
    deadline = time.monotonic() + 30
    while len(children(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the children are still importing torch
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: no checkpoint yet for fold-1, fold-2"), last
    assert "checkpoint saved" not in last


def test_parallel_killed_by_sigkill_and_sighup_resumes_with_whole_ordered_metrics(
        data, tmp_path):
    out, n = tmp_path / "r", 8
    extra = ["--epochs", str(n), "--patience", str(n)]
    dirs = ["fold-1", "fold-2"]
    for sig in (signal.SIGKILL, signal.SIGHUP):
        proc = start(data, out, *extra, *(["--resume"] if out.exists() else []))
        seen = {d: len(epochs(out, d)) for d in dirs}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                len(epochs(out, d)) > seen[d] for d in dirs):
            time.sleep(0.05)
        kids = children(out)
        assert kids, "no task process found"
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 129)
        assert gone(kids, 60), f"tasks outlived a parent killed by {sig.name}"
        # they stopped with it (an orphan would have trained on to "done")
        states = [json.loads(p.read_text())["state"] for p in out.glob("fold-*/status.json")]
        assert "done" not in states and "stopped" in states, (sig.name, states)
    proc = start(data, out, *extra, "--resume")
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "cv: 2 of 2 tasks" in stdout
    for d in dirs:
        assert epochs(out, d) == list(range(1, n + 1)), d
        lines = (out / d / "metrics.jsonl").read_text().splitlines()
        assert all(json.loads(x) for x in lines)  # every line whole
