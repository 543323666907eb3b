"""Enrolment and prediction as the model was evaluated: a speaker's statistics from a file made by
``enroll``, the lone-clip fallback and its one warning, and ``evaluate``'s per-clip CSV.

    .venv/bin/python -m pytest tests/test_enroll.py

Most tests use a small untrained model (random weights are as good as trained ones for checking
that two paths prepare a clip the same way); the slow ones train one.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from util import FAST, tiny_demo, write_clip

from trainer.batching import Normalizer
from trainer.bench.enroll_memory import run as enroll_memory
from trainer.checkpoint import CheckpointPair, load_trained, read_checkpoint
from trainer.cli import main
from trainer.config import TrainConfig, model_settings, prepare_settings
from trainer.data import LABELS, load_dataset, parse_name
from trainer.enroll import enrol, fit_of, load_enrolment
from trainer.evaluate import evaluate
from trainer.export import preparation
from trainer.fallback import CANDIDATES, fallback_state
from trainer.model import build_model
from trainer.predict import predict
from trainer.prepare import pool_clip, standardise


def untrained(path: Path, clips, norm: str = "speaker", seed: int = 0) -> Path:
    """A checkpoint of a small hybrid with random weights, prepared and scaled on ``clips``."""
    cfg = TrainConfig(d_model=32, heads=2, norm=norm)
    settings = model_settings(cfg, clips[0].audio.shape[1], clips[0].video.shape[1], len(LABELS))
    torch.manual_seed(seed)
    pooled = [pool_clip(c, prepare_settings(cfg)) for c in clips]
    fb = fallback_state(pooled) if norm == "speaker" else None
    if fb:
        fb["validation_macro_f1"] = {"speaker": 0.875, "fallback": 0.25, **{
            m: 0.25 for m in CANDIDATES}}
    torch.save({"model": build_model("hybrid", **settings).state_dict(), "model_name": "hybrid",
                "model_settings": settings, "labels": list(LABELS),
                "normalizer": Normalizer.fit(standardise(pooled, norm)).state_dict(),
                "prepare": prepare_settings(cfg), "fallback": fb}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo data of 6 speakers; ``held`` holds 2 of them (the others made the checkpoint)."""
    root = tmp_path_factory.mktemp("enroll")
    data = tiny_demo(root / "data", speakers=6, clips_per_speaker=6)
    clips = load_dataset(data).clips
    held_speakers = sorted({c.speaker for c in clips})[:2]
    held = root / "held"
    for c in clips:
        if c.speaker in held_speakers:
            (held / c.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / c.path, held / c.path)
    train = [c for c in clips if c.speaker not in held_speakers]
    ckpt = untrained(root / "speaker.pt", train)
    return {"root": root, "data": data, "held": held, "ckpt": ckpt, "train": train,
            "held_files": sorted(held.rglob("*.npz"))}


def cli(capsys, *args) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def by_path(rows):
    return {Path(r["path"]).name: r for r in rows}


def test_a_lone_clip_with_its_speakers_enrolment_predicts_as_evaluate_does(setup, capsys):
    """The acceptance: each held-out clip alone, given its speaker's enrolment from the same
    held-out clips evaluate standardises with: the same label, probabilities to 1e-5."""
    code, out, err = cli(capsys, "enroll", "--checkpoint", setup["ckpt"], "--out",
                         setup["root"] / "speakers.npz", setup["held"])
    assert code == 0 and err == [] and out == [
        f"enrolled 2 speaker(s) from {len(setup['held_files'])} clip(s) into "
        f"{setup['root'] / 'speakers.npz'}"]
    want = by_path(evaluate(setup["ckpt"], setup["held"])["predictions"])
    for f in setup["held_files"]:
        code, out, err = cli(capsys, "predict", "--checkpoint", setup["ckpt"], "--enroll",
                             setup["root"] / "speakers.npz", f)
        assert code == 0 and err == []
        (got,) = [json.loads(line) for line in out]
        row = want[f.name]
        assert got["label"] == row["predicted"]
        assert got["norm"].startswith("speaker (enrolled, ")
        for lab in LABELS:
            assert abs(got["probabilities"][lab] - row[f"p_{lab}"]) <= 1e-5


def test_enrolment_statistics_equal_evaluates_and_on_the_spot_equals_the_file(setup, tmp_path):
    t = load_trained(setup["ckpt"])
    sums = enrol(t, [str(setup["held"])])
    pooled = [pool_clip(c, t.prepare) for c in load_dataset(setup["held"]).clips]
    ready = {c.path: c for c in standardise(pooled, "speaker")}
    for c in pooled:
        am, asd, vm, vsd = sums[c.speaker].stats()
        np.testing.assert_allclose((c.audio - am) / asd, ready[c.path].audio, rtol=0, atol=1e-6)
        np.testing.assert_allclose((c.video - vm) / vsd, ready[c.path].video, rtol=0, atol=1e-6)
    main(["enroll", "--checkpoint", str(setup["ckpt"]), "--out", str(tmp_path / "s.npz"),
          str(setup["held"])])
    files = [str(f) for f in setup["held_files"][::5]]
    from_file = predict(setup["ckpt"], files, enroll=[str(tmp_path / "s.npz")])
    on_the_spot = predict(setup["ckpt"], files, enroll=[str(setup["held"])])
    assert from_file == on_the_spot
    loaded = load_enrolment(tmp_path / "s.npz", t)
    assert {s: a.clips for s, a in loaded.items()} == {s: a.clips for s, a in sums.items()}


def test_clips_given_together_group_by_speaker_as_evaluate_does(setup):
    rows = predict(setup["ckpt"], [str(setup["held"])], warn=pytest.fail)
    want = by_path(evaluate(setup["ckpt"], setup["held"])["predictions"])
    for r in rows:
        row = want[Path(r["path"]).name]
        assert r["label"] == row["predicted"] and r["norm"].endswith("clips given together)")
        assert max(abs(r["probabilities"][lab] - row[f"p_{lab}"]) for lab in LABELS) <= 1e-5


def speaker(f: Path) -> str:
    return parse_name(f.stem)[1]


def test_lone_clips_without_enrolment_fall_back_with_one_warning_per_run(setup, capsys):
    one_each = list({speaker(f): f for f in setup["held_files"]}.values())
    assert len(one_each) == 2
    code, out, err = cli(capsys, "predict", "--checkpoint", setup["ckpt"], *one_each)
    assert code == 0
    rows = [json.loads(line) for line in out]
    assert all(r["norm"].startswith("fallback: clip (") and "label" in r for r in rows)
    assert len(err) == 1  # one line for the whole run, however many clips fell back
    line = err[0]
    assert line.startswith("warning: this model standardises by speaker")
    assert "the fallback, clip (the clip's own statistics)" in line
    assert "validation macro-F1 0.250 against 0.875 with speaker statistics" in line
    assert f"trainer enroll --checkpoint {setup['ckpt']} --out speakers.npz" in line
    assert "predict --enroll speakers.npz" in line


def test_a_speaker_missing_from_the_enrolment_falls_back_and_is_marked(setup, capsys, tmp_path):
    first = setup["held_files"][0]
    mine = [f for f in setup["held_files"] if speaker(f) == speaker(first)]
    other = next(f for f in setup["held_files"] if f not in mine)
    assert main(["enroll", "--checkpoint", str(setup["ckpt"]), "--out",
                 str(tmp_path / "one.npz"), *map(str, mine)]) == 0
    code, out, err = cli(capsys, "predict", "--checkpoint", setup["ckpt"], "--enroll",
                         tmp_path / "one.npz", first, other)
    assert code == 0 and len(err) == 1 and "has no statistics for" in err[0]
    a, b = [json.loads(line) for line in out]
    assert a["norm"].startswith("speaker (enrolled, ")
    assert b["norm"].startswith("fallback: ")


def test_an_enrolment_file_for_another_checkpoint_or_widths_is_one_line(setup, capsys,
                                                                        tmp_path):
    main(["enroll", "--checkpoint", str(setup["ckpt"]), "--out", str(tmp_path / "s.npz"),
          str(setup["held"])])
    other = untrained(tmp_path / "other.pt", setup["train"][::2], seed=1)
    code, out, err = cli(capsys, "predict", "--checkpoint", other, "--enroll",
                         tmp_path / "s.npz", setup["held_files"][0])
    assert code == 1 and out == [] and len(err) == 1
    assert err[0].startswith(f"error: enrolment file {tmp_path / 's.npz'} was made for another "
                             f"checkpoint ({setup['ckpt']}")
    narrow = load_dataset(setup["data"]).clips[:12]
    for c in narrow:
        c.video = c.video[:, :8]
    code, _, err = cli(capsys, "predict", "--checkpoint", untrained(tmp_path / "n.pt", narrow),
                       "--enroll", tmp_path / "s.npz", setup["held_files"][0])
    assert code == 1 and len(err) == 1 and "made for feature widths 40, 64; the model takes " \
                                           "40, 8" in err[0]


def test_bad_enroll_input_is_one_line(setup, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = cli(capsys, "enroll", "--checkpoint", setup["ckpt"], "--out",
                         tmp_path / "s.npz", tmp_path / "empty")
    assert (code, out, err) == (1, [], ["error: no clip files given (an empty folder?)"])
    nameless = write_clip(tmp_path / "x" / "take1.npz", f_a=40, f_v=64)
    code, out, err = cli(capsys, "enroll", "--checkpoint", setup["ckpt"], "--out",
                         tmp_path / "s.npz", nameless)
    assert code == 1 and out == [] and err[-1].startswith("error: nothing to enrol: 1 input(s) "
                                                          "skipped (its name tells no speaker")
    assert "give --speaker NAME" in err[-1]
    code, out, err = cli(capsys, "enroll", "--checkpoint", setup["ckpt"], "--out",
                         tmp_path / "s.npz", "--speaker", "alice", nameless)
    assert code == 0 and "enrolled 1 speaker(s) from 1 clip(s)" in out[0]
    assert list(load_enrolment(tmp_path / "s.npz", load_trained(setup["ckpt"]))) == ["alice"]
    got = predict(setup["ckpt"], [str(nameless)], enroll=[str(tmp_path / "s.npz")],
                  speaker="alice")
    assert got[0]["norm"] == "speaker (enrolled, 1 clips)"
    code, out, err = cli(capsys, "enroll", "--checkpoint", setup["ckpt"], "--out",
                         tmp_path / "s.npz", tmp_path / "missing.npz")
    assert code == 1 and err[-1] == "error: nothing to enrol: 1 input(s) skipped (file not " \
                                    "found)"
    code, out, err = cli(capsys, "predict", "--checkpoint", setup["ckpt"], "--enroll",
                         setup["held_files"][0], setup["held_files"][0])  # a clip: enrols it
    assert code == 0 and err == []
    code, out, err = cli(capsys, "predict", "--checkpoint", setup["ckpt"], "--enroll",
                         tmp_path / "typo.npz", setup["held_files"][0])
    assert (code, out, err) == (1, [], [f"error: --enroll {tmp_path / 'typo.npz'}: no such "
                                        "file or folder"])


def test_a_model_that_standardises_per_clip_needs_no_enrolment(setup, capsys, tmp_path):
    ckpt = untrained(tmp_path / "clip.pt", setup["train"], norm="clip")
    code, out, err = cli(capsys, "enroll", "--checkpoint", ckpt, "--out", tmp_path / "s.npz",
                         setup["held"])
    assert code == 0 and err == ["note: this model standardises with norm clip, not by "
                                 "speaker: predict does not use these statistics"]
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, setup["held_files"][0])
    assert code == 0 and err == [] and json.loads(out[0])["label"] in LABELS


def test_evaluate_out_writes_a_row_per_clip_whose_labels_give_the_confusion_matrix(
        setup, capsys, tmp_path):
    code, out, err = cli(capsys, "evaluate", "--checkpoint", setup["ckpt"], "--data",
                         setup["held"], "--out", tmp_path / "eval.json")
    assert code == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    with open(tmp_path / "eval.predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "speaker", "label", "predicted",
                             *(f"p_{lab}" for lab in LABELS), "norm"]
    assert len(rows) == report["data"]["clips"] == len(setup["held_files"])
    cm = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for r in rows:
        cm[LABELS.index(r["label"]), LABELS.index(r["predicted"])] += 1
        assert r["predicted"] == max(LABELS, key=lambda lab: float(r[f"p_{lab}"]))
        assert r["norm"].startswith("speaker (") and r["speaker"]
    assert cm.tolist() == report["confusion_matrix"]
    assert "predictions" not in report


def test_export_names_the_preparation_and_the_enrolment_key(setup):
    t = load_trained(setup["ckpt"])
    prep = preparation(t)
    assert prep["norm"] == "speaker" and prep["enrolment_key"] == fit_of(t)["key"]
    assert [s.split(":")[0].split(" (")[0] for s in prep["steps"]] == [
        "pool each stream to its rate", "standardise each feature with the speaker's statistics",
        "the training split's scaling"]
    assert prep["fallback"]["method"] == "clip"


@pytest.mark.slow
def test_enrolling_holds_memory_flat():
    report = enroll_memory([20, 200])
    small, big = report["runs"]
    assert (small["n"], big["n"]) == (20, 200) and big["clips"] == 200
    assert 0 < small["tracemalloc_peak_bytes"] and big["rss_peak_bytes"] > 0
    assert report["flat"], report


@pytest.mark.slow
def test_a_trained_speaker_model_records_its_fallback_and_predicts_as_evaluate(
        tmp_path, capsys, monkeypatch):
    """Trained for real: the checkpoint and summary.json hold validation macro-F1 with speaker
    statistics and with the fallback, and the synchrony and linear heads' fits, all added to
    each checkpoint in one rewrite; the run's predictions.csv is its test split; a lone held-out
    clip with its speaker's enrolment predicts as evaluate does."""
    data = tiny_demo(tmp_path / "data", speakers=8, clips_per_speaker=8)
    out = tmp_path / "run"
    amended = []
    amend = CheckpointPair.amend
    monkeypatch.setattr(CheckpointPair, "amend",
                        lambda self, **extra: (amended.append(set(extra)), amend(self, **extra)))
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--norm",
                 "speaker", *FAST]) == 0
    assert amended == [{"sync_weight", "fallback", "linear_head"}]  # each .pt rewritten once
    summary = json.loads((out / "summary.json").read_text())
    lone = summary["lone_clip"]
    for name in ("best.pt", "last.pt"):
        assert read_checkpoint(out / "checkpoints" / name)["sync_weight"] == summary["sync_weight"]
        head = read_checkpoint(out / "checkpoints" / name)["linear_head"]
        assert float(head["mix"]) == pytest.approx(summary["linear_head"]["mix"])
        fb = read_checkpoint(out / "checkpoints" / name)["fallback"]
        assert fb["method"] == lone["fallback"] in CANDIDATES
        assert fb["validation_macro_f1"] == lone["validation"]
        assert set(fb["validation_macro_f1"]) == {"speaker", "fallback", *CANDIDATES}
    v = lone["validation"]  # the finished model's: its heads at their chosen weights
    chosen = summary["linear_head"]["validation_macro_f1"]
    assert v["speaker"] == pytest.approx(chosen, abs=1e-6)
    assert v["fallback"] == max(v[m] for m in CANDIDATES)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["data"]["test"]["clips"]
    cm = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for r in rows:
        cm[LABELS.index(r["label"]), LABELS.index(r["predicted"])] += 1
    assert cm.tolist() == summary["test"]["confusion_matrix"]

    held = tmp_path / "held"
    for r in rows:
        (held / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / r["path"], held / r["path"])
    ckpt = out / "checkpoints" / "best.pt"
    assert main(["enroll", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.npz"),
                 str(held)]) == 0
    want = {r["path"]: r for r in rows}
    for path, row in want.items():
        got = predict(ckpt, [str(held / path)], enroll=[str(tmp_path / "s.npz")],
                      warn=pytest.fail)[0]
        assert got["label"] == row["predicted"]
        assert max(abs(got["probabilities"][lab] - float(row[f"p_{lab}"]))
                   for lab in LABELS) <= 1e-5
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), str(held / rows[0]["path"])]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"the fallback, {lone['fallback']} (" in err[0]
    assert f"validation macro-F1 {v['fallback']:.3f} against {v['speaker']:.3f}" in err[0]
