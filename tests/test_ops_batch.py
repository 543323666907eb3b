"""Many runs at once on AWS Batch (trainer/ops/batch.py, arrays.py): a moto server over HTTP.

    .venv/bin/python -m pytest tests/test_ops_batch.py -q        # needs a Docker engine

moto's Batch runs every child as a container on the local Docker engine, so this module starts
its own moto server with MOTO_DOCKER_NETWORK_MODE=host (the engine here has no bridge), as the
local backend does. The children run a small image made here from the base image (a Python
that prints its arguments and environment and, like the trainer, exits 143 on SIGTERM), so
these tests take seconds; the last test (slow) runs the trainer's own image end to end:
`make deploy BACKEND=local FOLDS=2` with a long run, REPLACE=1 with FOLDS=3, status, logs,
results, destroy, each as the user runs it (`python -m trainer VERB`; the Make variables map to
those flags: test_make_deploy_passes_folds_and_only_given_seeds).
Nothing in boto3 is patched. The template job definition is the local backend's stand-in for
infra/batch.py's (LocalBackend.outputs(create=True)), so that code is exercised here too.
"""

from __future__ import annotations

import io
import re
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import free_port

from trainer.ops import OpsError, arrays, batch, runs, views
from trainer.ops.local import LocalBackend, answers
from trainer.ops.settings import REPO, load

# The child: prints its argv and AWS_BATCH_* variables, then waits; SIGTERM -> exit 143.
CHILD = ("import json, os, signal, sys, time\n"
         "def stop(*_):\n    print('SIGTERM: stopping', flush=True)\n    sys.exit(143)\n"
         "signal.signal(signal.SIGTERM, stop)\n"
         "print(json.dumps({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() "
         "if k.startswith(('AWS_BATCH', 'AWS_ENDPOINT'))}}), flush=True)\n"
         "time.sleep(float(os.environ.get('CHILD_SECONDS', '600')))\n")


@pytest.fixture(scope="module")
def batch_moto(tmp_path_factory):
    """A moto server whose Batch runs children on the host's network (as local.py starts it)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto-batch") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["MOTO_DOCKER_NETWORK_MODE"] = "host"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not answers(url):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def child_image(docker_client):
    """The stand-in child image's id (built from the base image, on the host's network)."""
    dockerfile = (f"FROM python:3.11-slim-bookworm\n"
                  f"ENTRYPOINT {json.dumps(['/usr/bin/python3', '-c', CHILD])}\n")
    img, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()),
                                        tag="ave-test-batch-child", network_mode="host", rm=True)
    return img.id


@pytest.fixture
def stack(batch_moto, tmp_path, monkeypatch):
    """The local backend's stand-in stack on ``batch_moto``: bucket, queue, template job
    definition (as infra/batch.py's outputs); yields (backend, outputs)."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    state_dir = tmp_path / ".ave"
    state_dir.mkdir()
    stack_name = f"t{time.time_ns() % 10**9}"
    (state_dir / "local.json").write_text(json.dumps({
        "stack": stack_name, "endpoint": batch_moto, "pid": None,
        "bucket": f"ave-{stack_name}", "region": "us-east-1"}))
    backend = LocalBackend(load(backend="local", state_dir=str(state_dir)))
    out = backend.outputs(create=True, echo=lambda s: None)
    yield backend, out
    backend.destroy(out)  # the children's containers still there (moto removes ended ones)


def wait_for(what, predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)
    return value


def put_status(bucket: str, run_id: str, where: str, **fields) -> None:
    from trainer.store.s3 import client

    body = {"state": "training", "epoch": 3, "epochs_max": 30, "best": 0.61, "best_epoch": 2,
            "eta_seconds": 540.0, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime()), **fields}
    client().put_object(Bucket=bucket, Key=f"runs/{run_id}/{where}/status.json",
                        Body=json.dumps(body).encode())


# ------------------------------------------------------------------ checks before anything
@pytest.mark.parametrize("flags, line", [
    (["--folds", "1"], "error: FOLDS 1: cross-validation needs 2 folds or more (a single run "
                       "is `make deploy` without FOLDS)"),
    (["--folds", "five"], "error: FOLDS 'five' is not a number of folds: give an integer of at "
                          "least 2 (a single run is `make deploy` without FOLDS)"),
    (["--folds", "loso"], "error: FOLDS=loso: the array's size must be known before the data is "
                          "read; give the number of speakers as FOLDS=N (one fold per speaker), "
                          "or run `python -m trainer cv --folds loso` on one machine"),
    (["--folds", "5", "--seeds", "0,0"], "error: SEEDS '0,0': seeds must be distinct, e.g. "
                                         "SEEDS=0,1,2"),
    (["--folds", "5", "--seeds", "0;1"], "error: SEEDS '0;1' is not a list of whole numbers: "
                                         "give e.g. SEEDS=0,1,2"),
    (["--folds", "5000", "--seeds", "0,1,2"], "error: FOLDS=5000 x SEEDS (3) = 15000 tasks: one "
                                              "array job runs at most 10000"),
    (["--folds", "5", "--args=--seed 3"], "error: ARGS: --seed is set for each fold by the array "
                                          "(SEEDS=); leave it out"),
    (["--seeds", "0,1"], "error: SEEDS (--seeds) goes with FOLDS (--folds): one run takes its "
                         "seed in ARGS, e.g. ARGS='--seed 1'"),
])
def test_bad_folds_or_seeds_are_one_line_before_anything_is_built(local_stack, s3_client,
                                                                  tmp_path, flags, line):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.npz").write_bytes(b"x")
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    env.pop("AVE_SETTINGS", None)
    proc = subprocess.run([sys.executable, "-m", "trainer", "deploy", "--backend", "local",
                           "--data", "clips", *flags], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [line]
    assert "[1/7]" not in proc.stdout
    assert "Contents" not in s3_client.list_objects_v2(Bucket=local_stack["bucket"])


@pytest.mark.parametrize("variables, expected", [
    (["FOLDS=5"], "deploy --folds 5"),  # not ablation's SEEDS ?= 0,1,2
    (["FOLDS=5", "SEEDS=0,1,2", "BACKEND=local"], "deploy --backend local --folds 5 --seeds 0,1,2"),
    (["SEEDS=0,1"], "deploy"),  # SEEDS without FOLDS: nothing (a single run)
])
def test_make_deploy_passes_folds_and_only_given_seeds(variables, expected):
    out = subprocess.run(["make", "-n", "--no-print-directory", "deploy", *variables], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if " -m trainer " in ln][-1]
    assert " ".join(line.split(" -m trainer ", 1)[1].split()) == expected


def test_make_logs_passes_fold():
    out = subprocess.run(["make", "-n", "--no-print-directory", "logs", "FOLD=3", "RUN=r1"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if " -m trainer " in ln][-1]
    assert " ".join(line.split(" -m trainer ", 1)[1].split()) == "logs --run r1 --fold 3"


def test_the_plan_is_fold_major():
    seeds = [0, 1, 2]
    assert [batch.task_of(i, 5, seeds) for i in (0, 1, 2, 3, 14)] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (5, 2)]
    assert [batch.task_dir(i, 5, seeds) for i in (0, 4)] == ["fold-1-seed-0", "fold-2-seed-1"]
    assert batch.task_dir(2, 5, [0]) == "fold-3"


# ------------------------------------------------------------------------ the AWS paths
def test_array_submit_describe_logs_cancel_and_deregister(stack, child_image):
    backend, out = stack
    client = batch.client(out)
    run_id = runs.new_run_id()
    record = arrays.submit_array(backend, out, run_id, child_image,
                                 f"s3://{out['bucket']}/data/d-1/", 2, [0, 1], ["--epochs", "3"],
                                 echo=lambda s: None)

    # The revision: the template's properties, the pushed image, the run's tag.
    template = batch.definition(client, out["batch_job_definition"])
    revision = batch.definition(client, record["definition"])
    assert revision["revision"] > template["revision"]
    assert revision["containerProperties"]["image"] == child_image
    for key in ("environment", "command", "resourceRequirements"):
        assert revision["containerProperties"][key] == template["containerProperties"][key]
    assert revision["retryStrategy"] == template["retryStrategy"]
    assert revision["tags"][batch.RUN_TAG] == run_id

    # batch.json, and the array as Batch holds it.
    assert batch.read_record(out["bucket"], run_id) == record
    assert (record["size"], record["folds"], record["seeds"]) == (4, 2, [0, 1])
    parent = client.describe_jobs(jobs=[record["job_id"]])["jobs"][0]
    assert parent["arrayProperties"]["size"] == 4
    kids = wait_for("4 running children", lambda: (k := batch.children(client, record)) and all(
        c["status"] == "RUNNING" for c in k) and k)
    assert [k["job_id"] for k in kids] == [f"{record['job_id']}:{i}" for i in range(4)]
    assert batch.array_state(kids) == "RUNNING" and batch.is_going(kids)
    assert arrays.going(out["bucket"], out, run_id) is True

    # Each child: the cv command, and its index only in AWS_BATCH_JOB_ID (moto sets no
    # AWS_BATCH_JOB_ARRAY_INDEX); its output is its container's while it runs.
    def printed(kid):
        lines = backend.child_log_lines(out, record, kid, tail=20)
        first = next((ln for ln in lines or [] if ln.startswith("{")), None)
        return json.loads(first) if first else None

    seen = [wait_for(f"child {k['index']}'s output", lambda k=k: printed(k)) for k in kids]
    expected = batch.command(f"s3://{out['bucket']}/data/d-1/", runs.run_uri(out["bucket"], run_id),
                             2, [0, 1], ["--epochs", "3", "--threads", "1"])
    for i, s in enumerate(seen):
        assert s["argv"] == expected
        assert s["env"]["AWS_BATCH_JOB_ID"] == f"{record['job_id']}:{i}"
        assert "AWS_BATCH_JOB_ARRAY_INDEX" not in s["env"]
        assert s["env"]["AWS_ENDPOINT_URL"] == out["endpoint"]

    # Cancel (make deploy REPLACE=1): SIGTERM reaches each child, which ends; the Batch log
    # (moto's CloudWatch copy, by the logStreamName DescribeJobs gives) says so.
    ended = backend.stop_children(out, record, kids)
    assert sorted(ended) == [0, 1, 2, 3]
    kids = wait_for("the children to end", lambda: (k := batch.children(client, record)) and all(
        c["status"] in batch.FINAL for c in k) and k)
    assert not batch.is_going(kids) and batch.array_state(kids) == "FAILED"
    assert arrays.going(out["bucket"], out, run_id) is False
    for kid in kids:
        assert kid["log_stream"]
        lines = list(backend.child_log_lines(out, record, kid, tail=20))
        assert "SIGTERM: stopping" in lines, lines

    # Destroy: deploy's revisions go, the template (Pulumi's) stays.
    gone = batch.deregister_revisions(client, out["batch_job_definition_name"])
    assert record["definition"] in gone and out["batch_job_definition"] not in gone
    active = client.describe_job_definitions(jobDefinitionName=out["batch_job_definition_name"],
                                             status="ACTIVE")["jobDefinitions"]
    assert [d["jobDefinitionArn"] for d in active] == [out["batch_job_definition"]]


def test_one_task_is_a_plain_job_with_the_index_variable(stack, child_image):
    backend, out = stack
    client = batch.client(out)
    definition = batch.register_revision(client, out["batch_job_definition"], child_image, "r1")
    job_id = batch.submit(client, out["batch_job_queue"], definition, f"ave-{out['stack']}-one",
                          ["cv"], 1)
    job = client.describe_jobs(jobs=[job_id])["jobs"][0]
    assert "arrayProperties" not in job
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env["AWS_BATCH_JOB_ARRAY_INDEX"] == "0"
    record = {"job_id": job_id, "size": 1}
    assert [k["job_id"] for k in batch.children(client, record)] == [job_id]
    batch.terminate(client, record, batch.children(client, record), "test")
    wait_for("the job to end", lambda: batch.children(client, record)[0]["status"] in batch.FINAL)
    with pytest.raises(OpsError, match="1 to 10000"):
        batch.submit(client, out["batch_job_queue"], definition, "ave-none", ["cv"], 0)


def test_status_shows_each_fold_and_the_array(stack):
    """The table from the folds' own status.json files in S3 and each child's Batch state."""
    _, out = stack
    run_id, record = "20250101-120000-ab12", {"job_id": "P", "size": 4, "folds": 2,
                                              "seeds": [0, 1]}
    put_status(out["bucket"], run_id, "fold-1-seed-0", state="done", epoch=12, best=0.8123,
               eta_seconds=0)
    put_status(out["bucket"], run_id, "fold-1-seed-1", epoch=5, eta_seconds=300.0)
    put_status(out["bucket"], run_id, "fold-2-seed-0", epoch=2, eta_seconds=600.0)
    ms = int(time.time() * 1000)
    kids = [{"index": 0, "status": "SUCCEEDED", "started_at": ms - 900_000, "stopped_at": ms},
            {"index": 1, "status": "RUNNING", "started_at": ms - 100_000, "attempts": 2},
            {"index": 2, "status": "RUNNING", "started_at": ms - 60_000},
            {"index": 3, "status": "RUNNABLE"}]
    rows = arrays.fold_rows(out["bucket"], run_id, record, kids)
    assert [r["dir"] for r in rows] == ["fold-1-seed-0", "fold-1-seed-1", "fold-2-seed-0",
                                        "fold-2-seed-1"]
    assert rows[3]["status"] is None
    eta = arrays.overall_eta(rows, now=ms / 1000)
    # 600 s for the longest running fold, then one wave (1 queued, 2 running) of a mean fold:
    # (900 + (100 + 300) + (60 + 600)) / 3 = 653.3 s.
    assert eta == pytest.approx(600 + 1960 / 3)
    text = "\n".join(views.array_lines(run_id, record, rows, eta))
    assert "array      AWS Batch job P: RUNNING (1 runnable, 2 running, 1 succeeded)" in text
    assert "done       1 of 4 task(s) with test metrics" in text
    assert "ETA        20m 53s (estimate" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("fold-")}
    assert lines["fold-1-seed-0"].split()[1:5] == ["SUCCEEDED", "done", "12/30", "0.8123"]
    assert lines["fold-1-seed-1"].split()[1:] == ["RUNNING", "training", "5/30", "0.6100",
                                                  "5m", "00s", "attempt", "2"]
    assert lines["fold-2-seed-1"].split()[1:3] == ["RUNNABLE", "-"]


class StopRecorder:
    """A backend whose stop_children stands in for the trainer's SIGTERM handling: the running
    folds write ``stopped`` (or nothing, with ``stops=False``)."""

    name = "local"

    def __init__(self, out, run_id, stops=True):
        self.out, self.run_id, self.stops, self.calls = out, run_id, stops, []

    def stop_children(self, out, record, kids, echo=print):
        self.calls.append([k["index"] for k in kids])
        if self.stops:
            for k in kids:
                if k["status"] == "RUNNING":
                    put_status(out["bucket"], self.run_id,
                               batch.task_dir(k["index"], record["folds"], record["seeds"]),
                               state="stopped")
        return [k["index"] for k in kids]


def test_replace_waits_for_each_running_fold_to_checkpoint(stack, child_image):
    backend, out = stack
    run_id = runs.new_run_id()
    record = arrays.submit_array(backend, out, run_id, child_image, "s3://b/d/", 2, [0], [],
                                 echo=lambda s: None)
    client = batch.client(out)
    wait_for("running children", lambda: all(k["status"] == "RUNNING"
                                             for k in batch.children(client, record)))
    for where in ("fold-1", "fold-2"):
        put_status(out["bucket"], run_id, where)

    with pytest.raises(OpsError, match=r"fold-1 \(training\), fold-2 \(training\) not final"):
        arrays.stop_array(StopRecorder(out, run_id, stops=False), out, run_id, record,
                          echo=lambda s: None, wait=1, poll=0.2)
    said = []
    rows = arrays.stop_array(StopRecorder(out, run_id), out, run_id, record, echo=said.append,
                             wait=10, poll=0.2)
    assert [r["status"]["state"] for r in rows] == ["stopped", "stopped"]
    assert "    fold-1: stopped at epoch 3" in said


# ---------------------------------------------------------------- end to end, BACKEND=local
@pytest.mark.slow
def test_deploy_folds_status_logs_replace_results_destroy(trainer_image, tmp_path):
    import re

    import boto3
    from util import FAST, tiny_demo

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AVE_STATE_DIR"] = str(tmp_path / ".ave")
    env.pop("AVE_SETTINGS", None)
    tiny_demo(tmp_path / "data", speakers=6, clips_per_speaker=8)

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "trainer", *args, "--backend", "local"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        if ok:
            assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def deploy(*flags: str) -> str:
        proc = cli("deploy", "--data", "data", "--image", trainer_image, *flags)
        assert "[6/7] registering the job definition revision" in proc.stdout
        return re.search(r"^run id: (\S+)$", proc.stdout, re.M).group(1)

    long_run = "--epochs 1000 --patience 1000 " + " ".join(FAST)
    r1 = deploy("--folds", "2", f"--args={long_run}")
    try:
        state = json.loads((tmp_path / ".ave/local.json").read_text())
        s3 = boto3.client("s3", endpoint_url=state["endpoint"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")

        def status(rid: str, where: str) -> dict:
            try:
                return json.loads(s3.get_object(Bucket=state["bucket"], Key=f"runs/{rid}/{where}/"
                                                "status.json")["Body"].read())
            except s3.exceptions.NoSuchKey:
                return {}

        record = json.loads(s3.get_object(Bucket=state["bucket"],
                                          Key=f"runs/{r1}/batch.json")["Body"].read())
        assert (record["size"], record["folds"], record["seeds"]) == (2, 2, [0])
        wait_for("both folds' first epoch", lambda: all(
            status(r1, f"fold-{k}").get("epoch", 0) >= 1 for k in (1, 2)), timeout=180)
        shown = cli("status").stdout
        assert f"run        {r1} (cross-validation: 2 folds x 1 seed(s) = 2 task(s))" in shown
        assert re.search(r"^fold-1 +RUNNING +training", shown, re.M), shown
        assert re.search(r"^fold-2 +RUNNING +training", shown, re.M), shown
        assert "epoch=" in cli("logs", "--fold", "1", "--tail", "20").stdout  # the container's

        refused = cli("deploy", "--data", "data", "--image", trainer_image, "--folds", "3",
                      ok=False)
        assert refused.returncode == 1 and f"error: run {r1} is going" in refused.stderr

        r2 = deploy("--replace", "--folds", "3", "--args=--epochs 2 " + " ".join(FAST))
        for k in (1, 2):  # each running fold checkpointed before the new array went in
            assert status(r1, f"fold-{k}")["state"] == "stopped"
            s3.head_object(Bucket=state["bucket"], Key=f"runs/{r1}/fold-{k}/checkpoints/last.pt")

        wait_for("the 3 folds to end", lambda: "SUCCEEDED (3 succeeded)" in cli("status").stdout,
                 timeout=240)
        shown = cli("status").stdout
        for k in (1, 2, 3):
            assert re.search(rf"^fold-{k} +SUCCEEDED +done +2/2", shown, re.M), shown
        assert "cv_task_end" in cli("logs", "--fold", "2").stdout  # moto's CloudWatch copy

        cli("results")  # the newest run: r2
        dest = tmp_path / "results" / r2
        cv = json.loads((dest / "cv.json").read_text())
        assert [f["fold"] for f in cv["folds"]] == [1, 2, 3]
        md = (dest / "summary.md").read_text()
        m = cv["summary"]["macro_f1"]
        assert f"| macro-F1 | {m['mean']:.4f} ± {m['std']:.4f} |" in md
        for f in cv["folds"]:
            assert f"| {f['dir']} | {f['fold']} | 0 | {', '.join(f['test_speakers'])} |" in md
        assert (dest / "plots/cv_folds.png").is_file()

        cli("destroy", "--yes", "--keep-runs")  # the replaced array too, as an array
        md = (tmp_path / "results" / r1 / "summary.md").read_text()
        assert md.startswith(f"# Cross-validation run {r1}") and "No task has ended yet" in md
        assert (tmp_path / "results" / r1 / "fold-2/checkpoints/last.pt").is_file()
        import docker

        left = docker.from_env().containers.list(all=True,
                                                 filters={"name": f"^ave-{state['stack']}-"})
        assert left == []
    finally:
        if (tmp_path / ".ave/local.json").exists():  # a failure above: leave nothing running
            cli("destroy", "--yes", ok=False)


def test_monitor_shows_the_array_and_asks_for_a_fold(stack, child_image):
    from trainer.ops.monitor import Monitor

    backend, out = stack
    run_id = runs.new_run_id()
    record = arrays.submit_array(backend, out, run_id, child_image, "s3://b/d/", 2, [0, 1], [],
                                 echo=lambda s: None)
    client = batch.client(out)
    wait_for("running children", lambda: all(k["status"] == "RUNNING"
                                             for k in batch.children(client, record)))
    put_status(out["bucket"], run_id, "fold-2-seed-1", epoch=4)
    # the array; logs of fold 2 seed 1; metrics of a fold that is not there
    answers_ = iter(["6", "1", "2", "1", "4", "3", "1", "q"])
    said: list[str] = []
    monitor = Monitor(backend, out, run_id, read=lambda prompt: next(answers_),
                      write=said.append)
    wait_for("fold 2 seed 1's output", lambda: any(
        ln.startswith("{") for ln in backend.child_log_lines(
            out, record, batch.children(client, record)[3], tail=5) or []))
    assert monitor.loop() == 0
    text = "\n".join(said)
    assert f"== run {run_id} (local): cross-validation array of 4 task(s): 4 running ==" in text
    assert re.search(r"^fold-2-seed-1 +RUNNING +training +4/30", text, re.M), text
    printed = json.loads(next(ln for ln in said if ln.startswith('{"argv"')))
    assert printed["env"]["AWS_BATCH_JOB_ID"] == f"{record['job_id']}:3"
    assert "no task fold '3' seed '1' in this run" in text


def test_results_download_every_fold_and_write_the_aggregate(stack, finished_run, tmp_path):
    """Two finished folds (real run directories) and one still training: cv.json over the two,
    summary.md with mean ± std, the per-fold table and the fold not ended yet."""
    from trainer.ops.report import fetch_cv
    from trainer.store.s3 import sync_up

    _, out = stack
    run_id = "20250101-120000-cd34"
    for where in ("fold-1", "fold-2"):
        sync_up(finished_run, f"s3://{out['bucket']}/runs/{run_id}/{where}/")
    put_status(out["bucket"], run_id, "fold-3", epoch=7)
    batch.write_record(out["bucket"], run_id, batch.new_record(
        "P", "ave-x", 3, 3, [0], "q", "d:2", "sha256:" + "e" * 64))
    dest = fetch_cv(out["bucket"], run_id, tmp_path / "results")
    cv = json.loads((dest / "cv.json").read_text())
    assert [f["dir"] for f in cv["folds"]] == ["fold-1", "fold-2"]
    summary = json.loads((finished_run / "summary.json").read_text())
    md = (dest / "summary.md").read_text()
    assert "## Test metrics over 2 of 3 task(s): mean ± std" in md
    assert f"| macro-F1 | {summary['test']['macro_f1']:.4f} ± 0.0000 |" in md
    # The seed is "-": plain train runs here, without the cv-task.json a Batch child writes.
    assert f"| fold-2 | 2 | - | {', '.join(summary['data']['test']['speakers'])} |" in md
    assert "Not ended yet: fold-3 (training, epoch 7)." in md
    assert (dest / "plots/cv_folds.png").is_file() and (dest / "fold-1/summary.json").is_file()
