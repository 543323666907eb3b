"""Speaker k-fold cross-validation end to end: the plan, the fold run directories, the aggregate,
resume, ``--task``, ``--parallel``, a manifest's folds, bad input, and the aggregate on S3.

    .venv/bin/python -m pytest tests/test_cv.py -q
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
from pathlib import Path

import pytest
from util import FAST, tiny_demo

from trainer.cli import main
from trainer.cv.plan import parse_seeds, plan, task_dir, task_from_env
from trainer.cv.report import aggregate, aggregate_dict, fold_predictions
from trainer.data import load_dataset

TINY = [*FAST, "--epochs", "2", "--d-model", "16"]
METRICS = ("accuracy", "macro_f1", "uar")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 speakers (5 CREMA-D-named, 5 RAVDESS-named), 8 clips each."""
    return tiny_demo(tmp_path_factory.mktemp("data"), speakers=10, clips_per_speaker=8)


def cv(data, out, *extra):
    return main(["cv", "--data", str(data), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def five(data, tmp_path_factory):
    """A finished 5-fold cv of the 10 speakers."""
    out = tmp_path_factory.mktemp("cv") / "r"
    assert cv(data, out, "--folds", "5") == 0
    return out


def splits(run: Path) -> dict[str, set[str]]:
    """Speakers per split, from a run directory's splits.csv."""
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    with open(run / "splits.csv", newline="") as f:
        for row in csv.DictReader(f):
            out[row["split"]].add(row["speaker"])
    return out


def mtimes(out: Path, dirs) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in (out / d).rglob("*")
            if p.is_file()}


def test_every_speaker_tested_once_and_never_trained_or_validated_in_its_own_fold(data, five):
    speakers = {c.speaker for c in load_dataset(data).clips}
    assert len(speakers) == 10
    tested = []
    for k in range(1, 6):
        run = five / f"fold-{k}"
        for name in ("config.json", "metrics.jsonl", "status.json", "summary.json", "train.log",
                     "checkpoints/last.pt", "checkpoints/best.pt", "plots/learning_curves.png"):
            assert (run / name).is_file(), name
        who = splits(run)
        assert who["test"] and who["val"] and who["train"]
        assert not who["test"] & (who["train"] | who["val"])
        assert not who["val"] & who["train"]
        assert who["train"] | who["val"] | who["test"] == speakers
        tested += sorted(who["test"])
    assert sorted(tested) == sorted(speakers)  # each exactly once


def test_cv_json_matches_the_fold_summaries(five):
    doc = json.loads((five / "cv.json").read_text())
    fold_summaries = {k: json.loads((five / f"fold-{k}/summary.json").read_text())
                      for k in range(1, 6)}
    assert [f["fold"] for f in doc["folds"]] == [1, 2, 3, 4, 5]
    for f in doc["folds"]:
        s = fold_summaries[f["fold"]]
        assert f["dir"] == f"fold-{f['fold']}" and f["seed"] == 0
        assert f["test_speakers"] == sorted(splits(five / f["dir"])["test"])
        assert f["test"] == {k: s["test"][k] for k in f["test"]}
        assert set(f["test"]) >= {*METRICS, "per_class", "confusion_matrix"}
    for k in METRICS:
        values = [fold_summaries[i]["test"][k] for i in range(1, 6)]
        assert doc["summary"][k]["mean"] == pytest.approx(statistics.mean(values), abs=1e-6)
        assert doc["summary"][k]["std"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    cm = [[sum(fold_summaries[i]["test"]["confusion_matrix"][r][c] for i in range(1, 6))
           for c in range(6)] for r in range(6)]
    assert doc["summary"]["confusion_matrix"] == cm
    assert doc["summary"]["tasks_done"] == doc["summary"]["tasks_total"] == 5
    assert doc["settings"]["folds"] == 5 and doc["settings"]["seeds"] == [0]
    assert doc["settings"]["train"]["epochs"] == 2
    md = (five / "cv.md").read_text()
    mf1 = doc["summary"]["macro_f1"]
    assert f"| macro-F1 | {mf1['mean']:.3f} ± {mf1['std']:.3f} |" in md
    assert md.count("\n| ") == 3 + 5 + 2  # 3 metrics, 5 folds, 2 header rows
    assert (five / "plots/cv_folds.png").read_bytes()[:4] == b"\x89PNG"


def test_the_aggregate_concatenates_each_folds_test_predictions_with_its_number(data, five):
    with open(five / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["fold", "seed", "path", "speaker"]
    for k in range(1, 6):
        with open(five / f"fold-{k}/predictions.csv", newline="") as f:
            fold = list(csv.DictReader(f))
        assert [{"fold": str(k), "seed": "0", **r} for r in fold] == [
            r for r in rows if r["fold"] == str(k)]
        summary = json.loads((five / f"fold-{k}/summary.json").read_text())
        assert len(fold) == summary["data"]["test"]["clips"]
        assert {r["speaker"] for r in fold} == set(splits(five / f"fold-{k}")["test"])
    assert len(rows) == len(load_dataset(data).clips)  # every clip tested once


def test_resume_continues_only_the_unfinished_fold(five, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(five, out)  # copy2: mtimes kept
    (out / "fold-3/summary.json").unlink()  # fold 3 "interrupted" after its last checkpoint
    others = ["fold-1", "fold-2", "fold-4", "fold-5"]
    before = mtimes(out, others)
    data = json.loads((out / "fold-1/config.json").read_text())["data"]
    assert cv(data, out, "--folds", "5") == 1  # without --resume: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds cv tasks" in err[0] and "--resume" in err[0]
    assert cv(data, out, "--folds", "5", "--resume") == 0
    assert (out / "fold-3/summary.json").is_file()
    assert mtimes(out, others) == before
    log = [json.loads(x) for x in (out / "fold-3/train.log").read_text().splitlines()]
    assert [x["resumed_at_epoch"] for x in log if x["event"] == "model"] == [None, 2]
    assert json.loads((out / "cv.json").read_text())["summary"]["tasks_done"] == 5


def test_tasks_alone_then_resume_runs_only_the_rest(data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    for name in ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert cv(data, out, "--folds", "5", "--task", "1") == 0
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "9f1c-parent:3")  # moto's Batch: no index variable
    assert cv(data, out, "--folds", "5", "--task", "auto") == 0
    assert sorted(p.name for p in out.iterdir()) == ["fold-2", "fold-4"]  # nothing else written
    task = json.loads((out / "fold-4/cv-task.json").read_text())
    assert (task["fold"], task["index"], task["settings"]["tasks_total"]) == (4, 3, 5)
    before = mtimes(out, ["fold-2", "fold-4"])
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "1")  # AWS's variable comes first
    assert cv(data, out, "--folds", "5", "--task", "auto") == 0  # done: a no-op
    assert mtimes(out, ["fold-2", "fold-4"]) == before
    assert cv(data, out, "--folds", "5", "--resume") == 0
    assert mtimes(out, ["fold-2", "fold-4"]) == before
    assert all((out / f"fold-{k}/summary.json").is_file() for k in range(1, 6))
    assert json.loads((out / "cv.json").read_text())["summary"]["tasks_done"] == 5


@pytest.mark.slow
def test_parallel_runs_tasks_as_processes_with_a_line_each(data, tmp_path, capsys):
    out = tmp_path / "r"
    settings = tmp_path / "settings.json"  # settings from a file reach the task processes too
    settings.write_text(json.dumps({"data": str(data), "epochs": 2, "d_model": 16, "heads": 2,
                                    "batch_size": 16}))
    # --threads 0 (all cores): each of the 2 processes gets half of them
    assert main(["cv", "--config", str(settings), "--out", str(out), "--folds", "2", "--seeds",
                 "0,1", "--parallel", "2", "--threads", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("cv_task_start") == 4 and err.count("cv_task_end") == 4
    dirs = ["fold-1-seed-0", "fold-1-seed-1", "fold-2-seed-0", "fold-2-seed-1"]
    for d in dirs:
        assert f"dir={d}" in err
        config = json.loads((out / d / "config.json").read_text())
        assert config["threads"] == max(1, (os.cpu_count() or 1) // 2)
        assert (config["epochs"], config["d_model"], config["data"]) == (2, 16, str(data))
    doc = json.loads((out / "cv.json").read_text())
    assert [(f["fold"], f["seed"]) for f in doc["folds"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # the same fold, another seed: the same test speakers, other validation speakers or weights
    assert splits(out / dirs[0])["test"] == splits(out / dirs[1])["test"]


def test_the_manifest_may_name_the_folds(data, tmp_path, capsys):
    clips = load_dataset(data).clips
    speakers = sorted({c.speaker for c in clips})
    fold_of = {s: 1 + i % 3 for i, s in enumerate(speakers)}
    lines = ["path,label,speaker,split"] + [
        f"{data / c.path},{'ANG DIS FEA HAP NEU SAD'.split()[c.label]},{c.speaker},"
        f"fold{fold_of[c.speaker]}" for c in clips]
    manifest = tmp_path / "folds.csv"
    manifest.write_text("\n".join(lines) + "\n")
    named = load_dataset(manifest).clips
    setting, tasks = plan(named, None, [0])
    assert setting == "manifest (3)" and [t.dir for t in tasks] == ["fold-1", "fold-2", "fold-3"]
    for t in tasks:
        assert t.test_speakers == [s for s in speakers if fold_of[s] == t.fold]
    # --folds that disagree, train on a fold manifest, a bad value: each one line, exit 1
    assert cv(manifest, tmp_path / "x", "--folds", "4") == 1
    assert main(["train", "--data", str(manifest), "--out", str(tmp_path / "t"), *TINY]) == 1
    bad = manifest.read_text().replace("fold3", "fold7")
    (tmp_path / "gap.csv").write_text(bad)
    assert cv(tmp_path / "gap.csv", tmp_path / "y") == 1
    (tmp_path / "mixed.csv").write_text(manifest.read_text().replace("fold3", "test"))
    assert cv(tmp_path / "mixed.csv", tmp_path / "z") == 1
    # (train logs its config and data before its split; cv reads the data first)
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert len(err) == 4
    assert "names 3 folds, not --folds 4" in err[0]
    assert "names folds" in err[1] and "cv" in err[1]
    assert "fold1..foldK" in err[2] and "fold1..foldK" in err[3]
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z"))


@pytest.mark.parametrize("args, message", [
    (["--folds", "11"], "11 folds need at least 11 speakers; the data has 10"),
    (["--folds", "1"], "--folds 1: cross-validation needs 2 folds or more"),
    (["--folds", "five"], "--folds 'five' is not a number of folds: give an integer of at least 2 or loso"),
    (["--folds", "5", "--seeds", "0,x"], "--seeds '0,x' is not a list of whole numbers"),
    (["--folds", "5", "--seeds", "1,1"], "--seeds '1,1': seeds must be distinct"),
    (["--folds", "5", "--task", "5"], "--task 5 is out of range: this cv has 5 tasks (0..4)"),
    (["--folds", "5", "--seeds", "0,1", "--task", "10"], "this cv has 10 tasks (0..9)"),
    (["--folds", "5", "--task", "auto"], "neither AWS_BATCH_JOB_ARRAY_INDEX"),
    (["--folds", "5", "--task", "-1"], "--task must be a task index"),
    (["--folds", "5", "--parallel", "0"], "--parallel must be at least 1"),
    (["--folds", "5", "--seed", "3"], "cv takes --seeds"),
    ([], "cv needs --folds K or loso"),
])
def test_bad_input_is_one_line(data, tmp_path, capsys, monkeypatch, args, message):
    for name in ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert main(["cv", "--data", str(data), "--out", str(tmp_path / "r"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_plan_is_fold_major_and_loso_has_a_fold_per_speaker(data):
    clips = load_dataset(data).clips
    _, tasks = plan(clips, 5, [0, 1, 2])
    assert [(t.index, t.fold, t.seed) for t in tasks][:4] == [(0, 1, 0), (1, 1, 1), (2, 1, 2),
                                                               (3, 2, 0)]
    assert tasks[4].dir == task_dir(2, 1, 3) == "fold-2-seed-1"
    assert plan(clips, 5, [0, 1, 2])[1] == tasks  # the same plan in every process
    setting, loso = plan(clips, "loso", [0])
    assert setting == "loso" and [len(t.test_speakers) for t in loso] == [1] * 10
    assert task_from_env({"AWS_BATCH_JOB_ARRAY_INDEX": "7", "AWS_BATCH_JOB_ID": "p:2"}) == 7
    assert task_from_env({"AWS_BATCH_JOB_ID": "abc-123:12"}) == 12
    assert parse_seeds("0, 1,2") == [0, 1, 2]


def test_aggregate_dict_uses_the_sample_deviation_and_the_task_names():
    def summary(f1, speakers):
        per = {y: {"precision": f1, "recall": f1, "f1": f1, "support": 1} for y in "AB"}
        return {"test": {"accuracy": f1, "macro_f1": f1, "uar": f1, "per_class": per,
                         "confusion_matrix": [[1, 0], [0, 1]]},
                "data": {"test": {"speakers": speakers, "clips": 2}}}
    doc = aggregate_dict([("fold-2-seed-1", summary(0.6, ["b"])),
                          ("fold-1-seed-1", summary(0.8, ["a"]))], {"seeds": [1]})
    assert [(f["fold"], f["seed"]) for f in doc["folds"]] == [(1, 1), (2, 1)]
    assert doc["summary"]["macro_f1"] == {"mean": 0.7, "std": pytest.approx(0.141421, abs=1e-6)}
    assert doc["summary"]["confusion_matrix"] == [[2, 0], [0, 2]]
    assert doc["summary"]["per_class_f1"] == {"A": 0.7, "B": 0.7}
    assert "tasks_total" not in doc["summary"]  # not known without the plan
    with pytest.raises(ValueError, match="not a cv task directory"):
        aggregate_dict([("run-1", summary(0.5, ["a"]))])


def test_fold_predictions_lead_each_row_with_its_fold_and_seed():
    text = "path,label\na.npz,ANG\nb.npz,SAD\n"
    got = fold_predictions([({"fold": 2, "seed": None}, text), ({"fold": 3, "seed": 1},
                                                                "path,label\nc.npz,HAP\n")])
    assert got == "fold,seed,path,label\n2,,a.npz,ANG\n2,,b.npz,SAD\n3,1,c.npz,HAP\n"


def test_aggregate_reads_and_writes_an_s3_prefix(five, s3_bucket, capsys):
    import boto3

    s3 = boto3.client("s3")
    prefix = "runs/cv1/"
    for p in five.rglob("*.json"):  # the folds as a Batch array leaves them in S3
        if p.parent.name.startswith("fold-"):
            s3.upload_file(str(p), s3_bucket, prefix + str(p.relative_to(five)))
    uri = f"s3://{s3_bucket}/{prefix}"
    doc = aggregate(uri)
    local = json.loads((five / "cv.json").read_text())
    assert doc["summary"] == local["summary"] and doc["folds"] == local["folds"]
    stored = json.loads(s3.get_object(Bucket=s3_bucket, Key=prefix + "cv.json")["Body"].read())
    assert stored["summary"]["macro_f1"] == local["summary"]["macro_f1"]
    for key in ("cv.md", "plots/cv_folds.png"):
        assert s3.head_object(Bucket=s3_bucket, Key=prefix + key)["ContentLength"] > 0
    assert main(["cv", "--out", uri, "--aggregate"]) == 0
    assert "5 tasks; macro-F1" in capsys.readouterr().out
    assert main(["cv", "--out", f"s3://{s3_bucket}/runs/none/", "--aggregate"]) == 1
    assert "no finished cv task" in capsys.readouterr().err


@pytest.mark.slow
def test_a_batch_child_writes_its_fold_to_s3_and_a_retry_of_a_done_task_is_a_no_op(
        data, s3_bucket, monkeypatch, capsys):
    import boto3

    s3 = boto3.client("s3")
    uri = f"s3://{s3_bucket}/runs/b1/"
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "2")
    assert cv(data, uri, "--folds", "5", "--task", "auto") == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {"runs/b1/fold-3/summary.json", "runs/b1/fold-3/splits.csv",
            "runs/b1/fold-3/cv-task.json", "runs/b1/fold-3/checkpoints/last.pt"} <= keys
    assert all(k.startswith("runs/b1/fold-3/") for k in keys)  # nothing outside its directory
    stamp = s3.head_object(Bucket=s3_bucket, Key="runs/b1/fold-3/summary.json")["LastModified"]
    capsys.readouterr()
    assert cv(data, uri, "--folds", "5", "--task", "auto") == 0  # a retry of a finished task
    assert "state=done" in capsys.readouterr().err
    assert s3.head_object(Bucket=s3_bucket, Key="runs/b1/fold-3/summary.json")[
        "LastModified"] == stamp
    doc = aggregate(uri)
    assert [f["fold"] for f in doc["folds"]] == [3]
    assert doc["summary"]["tasks_done"] == 1 and doc["summary"]["tasks_total"] == 5
