"""The hybrid's linear head: fitted after training, read only in evaluation, padding-proof,
given weight where clip summaries carry the class and none where they do not, and carried by
the checkpoint into evaluate and export."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.batching import collate
from trainer.export import INPUTS, export_model, load_exported
from trainer.config import TrainConfig
from trainer.data import Clip
from trainer.model import HybridModel
from trainer.train_linear import MIXES, fit_linear_head

K, F_A, F_V = 6, 12, 20


def clip(label: int, speaker: str, seed: int, cue: float, t_a: int | None = None) -> Clip:
    """A clip whose class shifts the clip mean of a few dimensions by ``cue`` (0: no cue)."""
    rng = np.random.default_rng(seed)
    t_a = t_a or int(rng.integers(20, 60))
    t_v = max(2, t_a // 3)
    audio = rng.normal(size=(t_a, F_A)).astype(np.float32)
    video = rng.normal(size=(t_v, F_V)).astype(np.float32)
    video[:, label] += cue  # a level, as a pooled linear model reads it
    return Clip(f"{speaker}-{seed}", label, speaker, audio, video,
                ((np.arange(t_a) + 0.5) / 25).astype(np.float32),
                ((np.arange(t_v) + 0.5) / 8).astype(np.float32), "train")


def clips(n_per_class: int, cue: float, first_seed: int) -> list[Clip]:
    return [clip(i % K, f"s{i % 4}", first_seed + i, cue) for i in range(n_per_class * K)]


def model() -> HybridModel:
    torch.manual_seed(0)
    return HybridModel(F_A, F_V, K, d_model=16, heads=2, linear_head=True).eval()


def accuracy(m: HybridModel, cs: list[Clip]) -> float:
    with torch.no_grad():
        return float((m(**collate(cs)).argmax(1) == torch.tensor([c.label for c in cs])).float()
                     .mean())


CFG = TrainConfig(batch_size=16)


def test_a_head_fitted_where_summaries_carry_the_class_is_given_weight_and_pays():
    m = model()
    train, val, test = clips(20, 1.5, 0), clips(6, 1.5, 1000), clips(6, 1.5, 2000)
    before = accuracy(m, test)  # an untrained rest: about chance
    r = fit_linear_head(m, {"train": train, "val": val}, CFG)
    assert r["mix"] > 0 and r["mix"] == float(m.linear.mix)
    assert r["validation_log_loss"][str(r["mix"])] == min(r["validation_log_loss"].values())
    assert before < 0.4 and accuracy(m, test) > 0.8


def test_a_head_that_reads_nothing_gets_no_weight():
    m = model()
    with torch.no_grad():  # the rest says "any class, equally": log-loss log(6) on validation
        m.head[-1].weight.zero_()
        m.head[-1].bias.zero_()
    r = fit_linear_head(m, {"train": clips(20, 0.0, 0), "val": clips(20, 0.0, 1000)}, CFG)
    assert r["mix"] == 0.0  # no cue in the summaries: its guesses cost more than they give
    assert r["validation_log_loss"]["0.0"] == pytest.approx(np.log(K))
    assert set(r["validation_log_loss"]) == {str(w) for w in MIXES}


def test_training_never_reads_the_head_and_at_weight_0_evaluation_says_what_the_rest_says():
    torch.manual_seed(0)
    m = HybridModel(F_A, F_V, K, d_model=16, heads=2, dropout=0.0, linear_head=True).eval()
    fit_linear_head(m, {"train": clips(20, 1.5, 0), "val": clips(6, 1.5, 1000)}, CFG)
    assert float(m.linear.mix) > 0
    batch = collate(clips(2, 1.5, 3000))
    with torch.no_grad():
        mixed = m(**batch)
        rest = m.train()(**batch)  # training mode (no dropout here): the rest's logits alone
        m.linear.mix.zero_()
        rest_at_0 = m(**batch)
        alone = m.eval()(**batch)
    torch.testing.assert_close(rest, rest_at_0)  # whatever the weight
    torch.testing.assert_close(alone, F.log_softmax(rest, -1))  # the same probabilities
    assert not torch.allclose(mixed, alone, atol=1e-3)


def test_padding_never_changes_what_the_head_says():
    m = model()
    with torch.no_grad():
        for buf in (m.linear.mu, m.linear.weight, m.linear.bias):
            buf.normal_()
        m.linear.sd.uniform_(0.5, 2.0)
        m.linear.mix.fill_(0.5)
    short = [clip(0, "a", 1, 1.0, t_a=7), clip(1, "a", 2, 1.0, t_a=3)]
    longer = [clip(2, "b", 3, 1.0, t_a=90)]
    with torch.no_grad():
        for i, c in enumerate(short):
            alone = m(**collate([c]))[0]
            batched = m(**collate(longer + short))[len(longer) + i]
            torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)


def test_the_exported_model_mixes_the_head_in_as_eager_does(tmp_path):
    pytest.importorskip("onnxruntime")
    m = model()
    fit_linear_head(m, {"train": clips(20, 1.5, 0), "val": clips(6, 1.5, 1000)}, CFG)
    assert float(m.linear.mix) > 0
    exported = load_exported(export_model(m, "onnx", tmp_path / "m.onnx"), threads=1)
    for group in (clips(1, 1.5, 4000), clips(1, 1.5, 5000)[:1]):
        batch = collate(group)
        with torch.no_grad():
            eager = torch.softmax(m(**batch), -1).numpy()
        got = exported({k: batch[k].numpy() for k in INPUTS})
        np.testing.assert_allclose(got, eager, atol=1e-5, rtol=0)


def test_a_head_at_weight_0_is_left_out_of_evaluation_and_export_with_the_same_output(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    m = HybridModel(F_A, F_V, K, d_model=16, heads=2, dropout=0.0, linear_head=True).eval()
    with torch.no_grad():
        for buf in (m.linear.weight, m.linear.bias):
            buf.normal_()
    batch = collate(clips(1, 1.5, 6000))
    calls, nodes = [], {}
    m.linear.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        rest = m.train()(**batch)  # training mode (no dropout here): the rest's logits alone
        linear = m.linear(batch["audio"], batch["audio_mask"], batch["video"], batch["video_mask"])
    m.eval()
    for mix in (0.0, 0.5):
        m.linear.mix.fill_(mix)
        calls.clear()
        with torch.no_grad():
            eager = m(**batch)
        assert bool(calls) == (mix > 0)  # read only when it has weight
        torch.testing.assert_close(eager, m.linear.combine(rest, linear))  # the same output
        path = export_model(m, "onnx", tmp_path / f"m{mix}.onnx")
        nodes[mix] = len(onnx.load(str(path)).graph.node)
        got = load_exported(path, threads=1)({k: batch[k].numpy() for k in INPUTS})
        np.testing.assert_allclose(got, torch.softmax(eager, -1).numpy(), atol=1e-5, rtol=0)
    assert nodes[0.0] < nodes[0.5]  # the exported graph leaves it out at weight 0
