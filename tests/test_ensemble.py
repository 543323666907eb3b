"""An ensemble (``--ensemble N``): the mean of its members' probabilities, each member a whole
run of its own on the ensemble's split, resumed as one."""

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from util import FAST, read_jsonl, tiny_demo

import trainer.status
import trainer.train
from trainer.batching import collate
from trainer.checkpoint import read_checkpoint
from trainer.cli import main
from trainer.data import LABELS, Clip
from trainer.ensemble import Ensemble, members
from trainer.model import HybridModel, build_model


def clip(t_a, t_v, seed, label=0):
    rng = np.random.default_rng(seed)
    return Clip(f"c{seed}", label, f"s{seed % 3}",
                rng.normal(size=(t_a, 20)).astype(np.float32),
                rng.normal(size=(t_v, 30)).astype(np.float32),
                ((np.arange(t_a) + 0.5) / 25).astype(np.float32),
                ((np.arange(t_v) + 0.5) / 15).astype(np.float32))


def settings(**extra):
    return dict(audio_dim=20, video_dim=30, n_classes=6, d_model=32, heads=2, **extra)


def test_build_model_makes_members_with_their_own_weights():
    torch.manual_seed(0)
    model = build_model("hybrid", members=3, **settings())
    assert isinstance(model, Ensemble) and len(members(model)) == 3
    first = [m.head[-1].weight for m in members(model)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not isinstance(build_model("hybrid", **settings()), Ensemble)
    lstm = build_model("lstm", audio_dim=20, video_dim=30, n_classes=6)
    assert members(lstm) == [lstm]
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble([HybridModel(**settings())])


def test_the_output_is_the_log_of_the_members_mean_probability():
    torch.manual_seed(0)
    model = build_model("hybrid", members=3, **settings(sync_head=True, sync_pcs=2)).eval()
    batch = collate([clip(40, 24, s, label=s % 6) for s in range(5)])
    with torch.no_grad():
        got = model(**batch).exp()
        want = torch.stack([torch.softmax(m(**batch), -1) for m in members(model)]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(5), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo(tmp_path_factory.mktemp("demo"))


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *FAST, "--epochs", "3", *extra])


def probabilities(run: Path) -> dict[str, list[float]]:
    rows = csv.DictReader((run / "predictions.csv").open())
    return {r["path"]: [float(r[f"p_{c}"]) for c in LABELS] for r in rows}


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "samples_per_second")}
            for r in rows]


@pytest.mark.slow
def test_members_are_whole_runs_and_member_0_is_the_run_without_ensemble(demo, tmp_path,
                                                                         monkeypatch):
    assert train(demo, tmp_path / "one") == 0
    ens, one = tmp_path / "ens", tmp_path / "one"
    told, update = [], trainer.status.Status.update

    def spy(self, **kw):  # what the ensemble's status.json is told, while members train
        if self.run.uri == str(ens):
            told.append(kw)
        update(self, **kw)

    monkeypatch.setattr(trainer.status.Status, "update", spy)
    assert train(demo, ens, "--ensemble", "2") == 0
    runs = [ens / "members" / str(k) for k in (0, 1)]
    # Member 0 is the run with the same seed, to the digit; member 1 a run of its own (seed 1).
    assert without_timing(read_jsonl(runs[0] / "metrics.jsonl")) == without_timing(
        read_jsonl(one / "metrics.jsonl"))
    assert read_jsonl(runs[1] / "metrics.jsonl") != read_jsonl(runs[0] / "metrics.jsonl")
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert summaries[0]["test"] == json.loads((one / "summary.json").read_text())["test"]
    assert [json.loads((r / "config.json").read_text())["seed"] for r in runs] == [0, 1]
    assert (ens / "splits.csv").read_text() == (runs[1] / "splits.csv").read_text()
    summary = json.loads((ens / "summary.json").read_text())
    assert [(m["seed"], m["best_epoch"], m["sync_weight"], m["test_macro_f1"])
            for m in summary["members"]] == [
        (k, s["validation"]["best_epoch"], s["sync_weight"], s["test"]["macro_f1"])
        for k, s in enumerate(summaries)]
    # The ensemble's test probabilities are the mean of its members' (each at 6 digits).
    mine, theirs = probabilities(ens), [probabilities(r) for r in runs]
    assert mine.keys() == theirs[0].keys() == theirs[1].keys()
    for path, p in mine.items():
        assert p == pytest.approx(np.mean([t[path] for t in theirs], 0), abs=2e-6)
    best = read_checkpoint(ens / "checkpoints/best.pt")
    assert best["model_settings"]["members"] == 2 and "members" not in summaries[0]
    assert json.loads((ens / "status.json").read_text())["state"] == "done"
    # Each member's epochs reach the ensemble's status, with the time to go of the later ones.
    epochs = [[t["epoch"] for t in told if t.get("member") == k + 1 and t.get("epoch")]
              for k in (0, 1)]
    assert [max(e) for e in epochs] == [s["epochs"] for s in summaries]
    first = [t for t in told if t.get("member") == 1 and t.get("eta_seconds")]
    alone = [r["epoch_seconds"] for r in read_jsonl(runs[0] / "metrics.jsonl")]
    # member 1's own time to go, then member 2's, estimated as long as member 1's whole run
    assert first and all(t["eta_seconds"] >= (6 - t["epoch"]) * min(alone) for t in first)
    assert any(t["epoch"] == 3 for t in first)  # at its last epoch, member 2's time still to go
    assert not any("state" in t and t.get("epoch") for t in told)  # a member's end is not ours


@pytest.mark.slow
def test_an_ensemble_stopped_inside_a_member_resumes_to_the_same_end(demo, tmp_path, capsys,
                                                                       monkeypatch):
    assert train(demo, tmp_path / "straight", "--ensemble", "2") == 0
    validate, stops = trainer.train.Training.validate, []

    def stop_in_member_1(self):  # a SIGTERM during member 1's second epoch
        if self.cfg.seed == 1 and self.epoch == 1 and not stops:
            stops.append(self.cfg.out)
            self.stop_signal = signal.SIGTERM
        return validate(self)

    monkeypatch.setattr(trainer.train.Training, "validate", stop_in_member_1)
    out = tmp_path / "part"
    assert train(demo, out, "--ensemble", "2") == 143
    assert stops == [str(out / "members" / "1")]
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    assert not (out / "summary.json").exists()
    assert train(demo, out, "--ensemble", "2") == 1  # not over it without --resume
    assert "already holds a run" in capsys.readouterr().err
    assert train(demo, out, "--ensemble", "2", "--resume") == 0
    for k in (0, 1):
        run = f"members/{k}"
        assert without_timing(read_jsonl(out / run / "metrics.jsonl")) == without_timing(
            read_jsonl(tmp_path / "straight" / run / "metrics.jsonl"))
    assert (json.loads((out / "summary.json").read_text())["test"]
            == json.loads((tmp_path / "straight" / "summary.json").read_text())["test"])
