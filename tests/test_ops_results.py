"""Run directories in S3, `make results`, `make status`, `make logs`, and the text they print.

    .venv/bin/python -m pytest tests/test_ops_results.py

Run against the moto server (conftest ``local_stack``: the local backend's state pointing at
it), with a real run directory from a short training (``finished_run``); no Docker needed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.ops import OpsError, runs, views
from trainer.ops.report import summary_markdown
from trainer.ops.upload import upload_data
from trainer.store.s3 import sync_up

RUN = "20250101-120000-ab12"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args, "--backend", "local"],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def put(s3_client, bucket: str, key: str, body) -> None:
    s3_client.put_object(Bucket=bucket, Key=key,
                         Body=json.dumps(body) if isinstance(body, dict) else body)


def heartbeat(age: float = 0, state: str = "training", **kw) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age))
    return {"state": state, "epoch": 3, "epochs_max": 50, "best": 0.5, "best_epoch": 2,
            "eta_seconds": 94.0, "eta_early_stop_seconds": 15.0, "updated_at": stamp, **kw}


def test_runs_are_listed_oldest_first_and_resolved(s3_bucket, s3_client):
    assert runs.list_runs(s3_bucket) == [] and runs.latest(s3_bucket) is None
    with pytest.raises(OpsError, match="no runs yet.*make deploy"):
        runs.resolve(s3_bucket)
    ids = ["20250102-000000-0001", "20250101-000000-0002", "20250103-000000-0003"]
    for rid in ids:
        put(s3_client, s3_bucket, f"runs/{rid}/status.json", heartbeat())
    assert runs.list_runs(s3_bucket) == sorted(ids)
    assert runs.resolve(s3_bucket) == "20250103-000000-0003"
    assert runs.resolve(s3_bucket, ids[0]) == ids[0]
    with pytest.raises(OpsError, match=r"no run 'nope'.*20250103-000000-0003"):
        runs.resolve(s3_bucket, "nope")


def test_the_latest_run_is_the_one_created_last_not_the_last_by_name(s3_bucket, s3_client):
    """Creation time: the time in the id deploy made, else (another form of id) the time of the
    run's oldest object; within one second of ids, the objects' time too. By name, "zz-manual"
    would stay the latest run for ever, and two ids of one second go by their random digits."""
    put(s3_client, s3_bucket, "runs/20250101-000000-0001/status.json", heartbeat())
    put(s3_client, s3_bucket, "runs/20250102-000000-ffff/status.json", heartbeat())
    time.sleep(1.1)  # S3's LastModified may count whole seconds
    put(s3_client, s3_bucket, "runs/20250102-000000-0000/status.json", heartbeat())  # same second
    put(s3_client, s3_bucket, "runs/zz-manual/config.json", b"{}")
    time.sleep(1.1)
    put(s3_client, s3_bucket, "runs/aa-manual/config.json", b"{}")
    put(s3_client, s3_bucket, "runs/zz-manual/status.json", heartbeat())  # a later write: the
    order = ["20250101-000000-0001", "20250102-000000-ffff",                # run is no newer
             "20250102-000000-0000", "zz-manual", "aa-manual"]
    assert runs.list_runs(s3_bucket) == order
    assert runs.latest(s3_bucket) == runs.resolve(s3_bucket) == "aa-manual"
    with pytest.raises(OpsError, match=r"newest runs: 20250101-000000-0001, 20250102-000000-ffff, "
                                       r"20250102-000000-0000, zz-manual, aa-manual\)"):
        runs.resolve(s3_bucket, "nope")


def test_a_run_is_going_only_with_a_fresh_heartbeat_and_a_live_state():
    assert runs.is_going(heartbeat(age=5))
    assert not runs.is_going(heartbeat(age=runs.FRESH_SECONDS + 60))  # instance went away
    assert not runs.is_going(heartbeat(state="stopped"))
    assert not runs.is_going(None)
    assert runs.started_at(runs.new_run_id(0)).timestamp() == 0


def test_each_data_set_has_its_own_prefix_and_is_never_rewritten(s3_bucket, s3_client, tmp_path):
    """A run (going, or resumed later) reads its data set's prefix: an upload of other files
    must never change it, and a folder of the same name elsewhere must not land on it."""
    folder = tmp_path / "clips"
    for name in ("a.npz", "b.npz", "sub/c.npz"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode() * 100)
    said = []
    uri = upload_data(s3_bucket, str(folder), echo=said.append)
    assert re.fullmatch(rf"s3://{s3_bucket}/data/clips-[0-9a-f]{{12}}/", uri)
    assert "3 uploaded, 0 copied from an earlier upload, 0 already there" in said[-1]
    assert upload_data(s3_bucket, str(folder), echo=said.append) == uri  # the same files
    assert "0 uploaded, 0 copied from an earlier upload, 3 already there" in said[-1]

    def keys(prefix):
        found = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"][len(prefix):]: o["ETag"] for o in found}

    first = keys(uri.split("/", 3)[3])
    (folder / "b.npz").unlink()
    (folder / "a.npz").write_bytes(b"changed")
    second = upload_data(s3_bucket, str(folder), echo=said.append)
    assert second != uri and keys(uri.split("/", 3)[3]) == first  # the first is untouched
    assert sorted(keys(second.split("/", 3)[3])) == ["a.npz", "sub/c.npz"]
    assert "1 uploaded, 1 copied from an earlier upload, 0 already there" in said[-1]

    other = tmp_path / "elsewhere" / "clips"  # the same base name, other files
    other.mkdir(parents=True)
    (other / "x.npz").write_bytes(b"x")
    third = upload_data(s3_bucket, str(other), echo=said.append)
    assert third not in (uri, second) and third.startswith(f"s3://{s3_bucket}/data/clips-")

    assert upload_data(s3_bucket, f"s3://{s3_bucket}/data/other") == \
        f"s3://{s3_bucket}/data/other/"
    with pytest.raises(OpsError, match="outside the stack's bucket"):
        upload_data(s3_bucket, "s3://someone-else/data/")
    with pytest.raises(OpsError, match="not a folder.*demo-data"):
        upload_data(s3_bucket, str(tmp_path / "missing"))


def test_results_of_a_finished_run(local_stack, finished_run, tmp_path):
    sync_up(finished_run, f"s3://{local_stack['bucket']}/runs/{RUN}/")
    proc = cli("results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "results" / RUN
    summary = json.loads((dest / "summary.json").read_text())
    md = (dest / "summary.md").read_text()
    test = summary["test"]
    # The run's real test metrics, as summary.json has them.
    assert f"| accuracy | {test['accuracy']:.4f} |" in md
    assert f"| macro-F1 | {test['macro_f1']:.4f} |" in md
    assert f"| UAR | {test['uar']:.4f} |" in md
    for label, c in test["per_class"].items():
        assert f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | " \
               f"{c['support']} |" in md
    assert "| ANG | " + " | ".join(map(str, test["confusion_matrix"][0])) + " |" in md
    assert f"Skipped clips: {len(summary['data']['skipped'])}." in md
    assert summary["data"]["skipped"][0]["reason"] in md
    assert "## Training time and cost" in md and "local: no instance cost" in md
    assert (dest / "checkpoints/best.pt").is_file()
    assert (dest / "plots/learning_curves.png").is_file()
    assert (dest / "plots/confusion_matrix.png").is_file()

    again = cli("results", "--run", RUN, cwd=tmp_path)  # idempotent
    assert again.returncode == 0 and " 0 file(s) downloaded" in again.stdout
    assert (dest / "summary.md").read_text() == md


def test_results_of_a_run_still_going(local_stack, finished_run, s3_client, tmp_path):
    bucket = local_stack["bucket"]
    for name in ("config.json", "metrics.jsonl"):
        put(s3_client, bucket, f"runs/{RUN}/{name}", (finished_run / name).read_bytes())
    put(s3_client, bucket, f"runs/{RUN}/status.json", heartbeat(epoch=2))
    proc = cli("results", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "results" / RUN
    md = (dest / "summary.md").read_text()
    assert "State: **training**" in md and "has not ended: no test metrics yet" in md
    assert "Best validation macro-F1 so far: 0.5000 (epoch 2)" in md
    assert (dest / "plots/learning_curves.png").is_file()  # drawn from metrics.jsonl
    assert "confusion" not in md


def test_status_and_logs_of_a_finished_run(local_stack, finished_run, tmp_path):
    sync_up(finished_run, f"s3://{local_stack['bucket']}/runs/{RUN}/")
    summary = json.loads((finished_run / "summary.json").read_text())
    status = cli("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"run        {RUN}" in status.stdout
    assert "state      done" in status.stdout
    assert f"test       macro-F1 {summary['test']['macro_f1']:.4f}" in status.stdout

    logs = cli("logs", "--tail", "5", cwd=tmp_path)  # no container: the run's train.log
    assert logs.returncode == 0, logs.stderr
    assert "train.log" in logs.stderr and '"event": "test"' in logs.stdout


def test_an_unknown_run_and_no_local_stack_are_one_line_each(local_stack, finished_run,
                                                             tmp_path, monkeypatch):
    sync_up(finished_run, f"s3://{local_stack['bucket']}/runs/{RUN}/")
    proc = cli("results", "--run", "20990101-000000-dead", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: there is no run '20990101-000000-dead' in "
                           f"s3://{local_stack['bucket']}/runs/ (newest runs: {RUN})\n")
    monkeypatch.setenv("AVE_STATE_DIR", str(tmp_path / "elsewhere"))
    proc = cli("status", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == ("error: no local stack: start one with `make deploy BACKEND=local`\n")


def test_the_views_tell_time_to_go_and_draw_the_metric():
    rows = [{"epoch": i, "val_macro_f1": v, "epoch_seconds": 2.0, "train_loss": 1.0}
            for i, v in enumerate([0.2, 0.4, 0.5, 0.45, 0.44], start=1)]
    eta = views.eta_lines(heartbeat(epoch=5, best_epoch=3, eta_seconds=90.0,
                                    eta_early_stop_seconds=16.0), rows, {"patience": 10})
    assert eta[0] == "epoch 5 of at most 50; 2.0 s per epoch (mean of the last 5)"
    assert "(45 epochs)" in eta[1]
    assert "2 epoch(s) without a better val macro-F1 (patience 10); stops in 8 epoch(s), 16s" \
        in eta[2]
    table = views.metrics_table(rows)
    assert table[3].endswith(" *") and not table[4].endswith("*")  # epoch 3 is the best
    chart = views.chart([r["val_macro_f1"] for r in rows], height=4)
    assert chart[0].startswith(" 0.500 |") and chart[0].endswith("  *  ")
    assert chart[3].startswith(" 0.200 |*")
    assert views.chart([0.3, 0.3], height=3)[1].endswith("**")  # flat: the middle row
    assert views.duration(3725) == "1h 02m" and views.duration(75) == "1m 15s"


def test_summary_md_links_the_per_clip_predictions_and_the_lone_clip_figures():
    per = {y: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for y in ("ANG", "SAD")}
    summary = {"test": {"accuracy": 1.0, "macro_f1": 1.0, "uar": 1.0, "per_class": per,
                        "confusion_matrix": [[1, 0], [0, 1]]},
               "lone_clip": {"fallback": "pooled",
                             "validation": {"speaker": 0.9, "fallback": 0.5, "pooled": 0.5,
                                            "clip": 0.25, "blend": 0.4},
                             "test": {"speaker": 0.8, "fallback": 0.45, "pooled": 0.45,
                                      "clip": 0.2, "blend": 0.3}}}
    md = summary_markdown("r1", {"state": "done"}, summary, [], {})
    assert "[predictions.csv](predictions.csv)" in md
    assert "uses the fallback `pooled`" in md
    assert "| validation | 0.9000 | 0.5000 | 0.5000 | 0.2500 | 0.4000 |" in md
    assert "| test | 0.8000 | 0.4500 | 0.4500 | 0.2000 | 0.3000 |" in md
    plain = summary_markdown("r1", {"state": "done"}, dict(summary, lone_clip=None), [], {})
    assert "lone clip" not in plain


def test_summary_md_of_an_ensemble_lists_its_members_and_links_no_learning_curves():
    per = {y: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for y in ("ANG", "SAD")}
    members = [{"seed": 3 + k, "best_epoch": 9 + k, "sync_weight": [2.0, 0.5][k],
                "test_macro_f1": [0.8, 0.75][k]} for k in (0, 1)]
    summary = {"test": {"accuracy": 1.0, "macro_f1": 0.9, "uar": 1.0, "per_class": per,
                        "confusion_matrix": [[1, 0], [0, 1]]},
               "validation": {"best_macro_f1": 0.85, "best_epoch": 0}, "members": members}
    md = summary_markdown("r1", {"state": "done", "epoch": 0}, summary, [], {})
    assert "2 members, each a run of its own" in md and "epoch 0" not in md
    assert "Validation macro-F1 0.8500: the mean probability of 2 members" in md
    assert "| `members/0` | 3 | 9 | 2.0 | 0.8000 |" in md
    assert "| `members/1` | 4 | 10 | 0.5 | 0.7500 |" in md
    assert "at epoch 0" not in md and "learning_curves" not in md
    assert "confusion_matrix.png" in md
    one = dict(summary, validation={"best_macro_f1": 0.85, "best_epoch": 7})
    del one["members"]
    assert "at epoch 7 (the weights tested)" in summary_markdown("r1", {}, one, [], {})


def test_status_views_name_the_member_an_ensemble_is_training():
    st = heartbeat(member=2, members=3)
    assert views.eta_lines(st, [], {})[0].startswith("epoch 3 of at most 50 (member 2 of 3);")
    assert "epoch      3 / 50 (member 2 of 3)" in views.status_lines("r1", st)
    assert views.eta_lines(heartbeat(), [], {})[0].startswith("epoch 3 of at most 50;")
