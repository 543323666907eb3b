"""Exported models (TorchScript, ONNX) agree with eager on held-out clips of any length (slow)."""

import json

import numpy as np
import pytest
import torch

from trainer.batching import collate
from trainer.cli import main
from trainer.data import load_dataset
from trainer.demo import make_demo_data
from trainer.ensemble import members
from trainer.checkpoint import load_trained
from trainer.export import INPUTS, load_exported
from trainer.prepare import prepare

pytestmark = pytest.mark.slow
TINY = ["--d-model", "32", "--heads", "2", "--threads", "1", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_demo_data(root / "data", seed=0, speakers=6, clips_per_speaker=8)
    out = {}
    for model, flags in (("hybrid", []), ("lstm", ["--model", "lstm"]),
                         ("nosync", ["--no-sync-head"]), ("ensemble", ["--ensemble", "2"])):
        assert main(["train", "--data", str(root / "data"), "--out", str(root / model),
                     *flags, *TINY]) == 0
        out[model] = root / model / "checkpoints" / "best.pt"
    return root, out


def held_out(root, run):
    """The run's test clips (held-out speakers), raw as in the files."""
    test = {line.split(",")[0] for line in (run / "splits.csv").read_text().splitlines()[1:]
            if line.endswith(",test")}
    clips = [c for c in load_dataset(root / "data").clips if c.path in test]
    assert len(clips) >= 4
    return clips


@pytest.mark.parametrize("model,fmt", [("hybrid", "onnx"), ("hybrid", "torchscript"),
                                       ("lstm", "torchscript"), ("nosync", "onnx"),
                                       ("ensemble", "onnx"), ("ensemble", "torchscript")])
def test_exported_model_agrees_with_eager_on_held_out_clips(runs, model, fmt, tmp_path):
    root, ckpt = runs
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(ckpt[model]), "--format", fmt,
                 "--out", str(out)]) == 0
    side = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert side["labels"] == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert set(side["inputs"]) == set(INPUTS)
    prep = side["preparation"]  # what to do before the artifact, in order (docs/training.md)
    assert prep["norm"] == side["prepare"]["norm"] and len(prep["steps"]) == 3
    assert prep["steps"][0].startswith("pool each stream") and "inside" in prep["steps"][2]
    trained = load_trained(ckpt[model])
    if model == "hybrid":  # the heads' weights, chosen after training, go too
        weight = torch.load(ckpt[model], weights_only=True)["sync_weight"]
        assert float(trained.model.sync_weight) == weight
        summary = json.loads((ckpt[model].parent.parent / "summary.json").read_text())
        assert float(trained.model.linear.mix) == pytest.approx(summary["linear_head"]["mix"])
    if model == "ensemble":  # each member's, chosen by its own run
        run = ckpt[model].parent.parent
        assert [float(m.sync_weight) for m in members(trained.model)] == [json.loads(
            (run / f"members/{k}/summary.json").read_text())["sync_weight"] for k in (0, 1)]
    exported = load_exported(out, threads=1)
    clips = held_out(root, ckpt[model].parent.parent)
    # One padded batch of clips of different lengths, then each clip alone (other shapes).
    for group in [clips[:6]] + [[c] for c in clips[:3]]:
        prepared = prepare(group, side["prepare"])  # pooled and standardised, as documented
        raw = collate(prepared)  # the artifact applies the train-set scaling itself
        with torch.no_grad():
            eager = torch.softmax(trained.model(**collate(trained.ready(group))), -1).numpy()
        got = exported({k: raw[k].numpy() for k in INPUTS})
        assert got.shape == (len(group), 6)
        np.testing.assert_allclose(got, eager, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_lstm_to_onnx_is_a_clear_error(runs, tmp_path, capsys):
    _, ckpt = runs
    assert main(["export", "--checkpoint", str(ckpt["lstm"]), "--format", "onnx",
                 "--out", str(tmp_path / "x.onnx")]) == 1
    assert "torchscript" in capsys.readouterr().err


def test_default_path_sits_beside_the_checkpoint(runs):
    _, ckpt = runs
    assert main(["export", "--checkpoint", str(ckpt["hybrid"]), "--format", "torchscript"]) == 0
    assert ckpt["hybrid"].with_suffix(".ts").is_file()
