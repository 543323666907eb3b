"""deploy -> status, logs -> refused deploy -> deploy REPLACE -> results -> destroy, end to end.

    .venv/bin/python -m pytest tests/test_ops_local.py        # needs a Docker engine

BACKEND=local on the local Docker engine, with the trainer's image built from this checkout
(conftest ``trainer_image``, shared with every test that runs the image) and the moto server
that `deploy` starts itself: every command runs as the user runs it, `python -m trainer VERB`
in its own process. Without an engine the test skips with one line, except under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import boto3
import pytest
from util import FAST, tiny_demo

pytestmark = pytest.mark.slow


def wait_for(what, predicate, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)
    return value


def test_deploy_status_logs_replace_results_destroy(trainer_image, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AVE_STATE_DIR"] = str(tmp_path / ".ave")
    tiny_demo(tmp_path / "data", speakers=8, clips_per_speaker=8)

    def cli(*args: str, ok: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "trainer", *args, "--backend", "local"],
                              input=stdin, capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=600)
        if ok:
            assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def run_id(proc) -> str:
        return re.search(r"^run id: (\S+)$", proc.stdout, re.M).group(1)

    long_run = "--epochs 1000 --patience 1000 " + " ".join(FAST)
    first = cli("deploy", "--data", "data", f"--args={long_run}", "--image", trainer_image)
    try:
        for n, step in enumerate(["checking credentials", "looking for a run", "starting the "
                                  "local S3", "building the image", "uploading the data set",
                                  "checking the host", "starting run"], start=1):
            assert f"[{n}/7] {step}" in first.stdout
        r1 = run_id(first)
        state = json.loads((tmp_path / ".ave/local.json").read_text())
        s3 = boto3.client("s3", endpoint_url=state["endpoint"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")

        def status(rid: str) -> dict | None:
            try:
                body = s3.get_object(Bucket=state["bucket"], Key=f"runs/{rid}/status.json")["Body"]
                return json.loads(body.read())
            except s3.exceptions.NoSuchKey:
                return None

        wait_for("the first run's first epoch",
                 lambda: (status(r1) or {}).get("epoch", 0) >= 1, timeout=120)
        shown = cli("status").stdout
        assert f"run        {r1}" in shown and "state      training" in shown
        assert re.search(rf"container ave-{state['stack']}-{r1}: running", shown)
        assert "epoch=" in cli("logs", "--tail", "20").stdout  # the container's own output

        refused = cli("deploy", "--data", "data", "--image", trainer_image, ok=False)
        assert refused.returncode == 1
        assert f"error: run {r1} is going on this stack" in refused.stderr
        assert "make deploy REPLACE=1" in refused.stderr
        assert (status(r1) or {}).get("state") == "training"  # refusing changed nothing

        short_run = "--epochs 3 " + " ".join(FAST)
        second = cli("deploy", "--replace", "--data", "data", f"--args={short_run}", "--image",
                     trainer_image)
        r2 = run_id(second)
        assert r2 != r1 and f"run {r1}: stopped" in second.stdout
        st1 = status(r1)
        assert st1["state"] == "stopped" and st1["epoch"] >= 1
        kept = {o["Key"].removeprefix(f"runs/{r1}/") for o in s3.list_objects_v2(
            Bucket=state["bucket"], Prefix=f"runs/{r1}/")["Contents"]}
        assert {"checkpoints/last.pt", "config.json", "metrics.jsonl", "status.json"} <= kept

        done = wait_for("the second run to end", lambda: (status(r2) or {}).get("state") in
                        ("done", "failed"), timeout=240)
        assert done, status(r2)
        assert status(r2)["state"] == "done"
        assert "test" in cli("logs", "--follow").stdout  # the exited container's whole log

        results = cli("results")  # the newest run: r2
        dest = tmp_path / "results" / r2
        summary = json.loads((dest / "summary.json").read_text())
        md = (dest / "summary.md").read_text()
        assert f"| macro-F1 | {summary['test']['macro_f1']:.4f} |" in md
        assert f"| accuracy | {summary['test']['accuracy']:.4f} |" in md
        assert f"| UAR | {summary['test']['uar']:.4f} |" in md
        assert f"Skipped clips: {len(summary['data']['skipped'])}." in md
        assert (dest / "plots/confusion_matrix.png").is_file(), results.stdout

        not_confirmed = cli("destroy", ok=False, stdin="no\n")
        assert not_confirmed.returncode == 1 and "not destroyed" in not_confirmed.stdout
        assert "2 run(s) in it" in not_confirmed.stdout
        cli("destroy", "--yes")
        assert not (tmp_path / ".ave/local.json").exists()
    finally:
        if (tmp_path / ".ave/local.json").exists():  # a failure above: leave nothing running
            cli("destroy", "--yes", ok=False)
