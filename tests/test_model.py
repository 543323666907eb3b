"""Both models: output shapes, and padding never changes a prediction."""

import math

import numpy as np
import pytest
import torch

from trainer.batching import collate
from trainer.data import Clip
from trainer.lean import NormLinear, lean_relu, norm_convs, recomputed_in_backward
from trainer.model import (ChannelDropout, CrossModalAttention, HybridModel, MultiScaleConv,
                           TemporalBlock, build_model, masked)


def clip(t_a, t_v, seed, f_a=20, f_v=30, label=0):
    rng = np.random.default_rng(seed)
    return Clip("x", label, "s", rng.normal(size=(t_a, f_a)).astype(np.float32),
                rng.normal(size=(t_v, f_v)).astype(np.float32),
                ((np.arange(t_a) + 0.5) / 100).astype(np.float32),
                ((np.arange(t_v) + 0.5) / 30).astype(np.float32))


@pytest.mark.parametrize("name,extra", [("hybrid", {}), ("hybrid", {"fusion": "late"}),
                                        ("hybrid", {"input_rank": 8, "input_dropout": 0.3}),
                                        ("hybrid", {"stats_head": True, "center": True}),
                                        ("hybrid", {"members": 2}), ("lstm", {})])
def test_padding_never_changes_a_prediction(name, extra):
    torch.manual_seed(0)
    model = build_model(name, audio_dim=20, video_dim=30, n_classes=6, **extra).eval()
    short = [clip(37, 11, 1), clip(5, 2, 2), clip(1, 1, 3)]
    longer = [clip(150, 45, 4), clip(90, 30, 5)]
    with torch.no_grad():
        for i, c in enumerate(short):
            alone = model(**collate([c]))[0]
            batched = model(**collate(longer + short))[len(longer) + i]
            torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hybrid", "lstm"])
def test_logits_shape_and_gradients_reach_both_branches(name):
    torch.manual_seed(0)
    model = build_model(name, audio_dim=20, video_dim=30, n_classes=6).train()
    batch = collate([clip(40, 12, s) for s in range(4)])
    logits = model(**batch)
    assert logits.shape == (4, 6)
    logits.sum().backward()
    audio_first = next(p for n, p in model.named_parameters() if n.startswith("audio"))
    video_first = next(p for n, p in model.named_parameters() if n.startswith("video"))
    assert audio_first.grad.abs().sum() > 0 and video_first.grad.abs().sum() > 0


def test_cross_modal_attention_uses_time():
    """Moving the video frames in time (same content) changes what audio attends to."""
    torch.manual_seed(0)
    model = HybridModel(audio_dim=20, video_dim=30, n_classes=6).eval()
    b = collate([clip(60, 18, 0)])
    with torch.no_grad():
        base = model(**b)
        shifted = model(**dict(b, video_t=b["video_t"] + 0.4))
    assert not torch.allclose(base, shifted, atol=1e-4)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'gru'.*hybrid, lstm"):
        build_model("gru", audio_dim=2, video_dim=2, n_classes=6)


def test_channel_dropout_drops_whole_channels_per_clip_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = ChannelDropout(0.25).train()
    y = drop(torch.ones(64, 30, 16))  # (B, T, C)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same at every frame
    assert torch.allclose(y.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs((y[:, 0] == 0).float().mean().item() - 0.25) < 0.05
    assert torch.equal(drop.eval()(y), y)


def test_sharpest_head_tells_20_ms_from_200_ms():
    """The default time scales separate the binding window from a near miss: a key 20 ms away
    keeps most of the sharpest head's weight, one 200 ms away almost none."""
    from trainer.model import CrossModalAttention

    att = CrossModalAttention(16, 4, 0.0)
    sharp = att.slope.max().item()
    assert torch.isclose(att.slope, torch.tensor([50.0, 10.772, 2.3208, 0.5]), rtol=1e-3).all()
    assert math.exp(-sharp * 0.02) > 0.3 and math.exp(-sharp * 0.2) < 1e-4


def test_late_fusion_ignores_timing_and_cross_fusion_does_not():
    """Moving the video in time changes the cross-modal model's output, never the late one's."""
    b = collate([clip(60, 18, 0)])
    for fusion, moves in (("cross", True), ("late", False)):
        torch.manual_seed(0)
        model = HybridModel(audio_dim=20, video_dim=30, n_classes=6, fusion=fusion).eval()
        with torch.no_grad():
            base, shifted = model(**b), model(**dict(b, video_t=b["video_t"] + 0.3))
        assert (not torch.allclose(base, shifted, atol=1e-5)) == moves
    with pytest.raises(ValueError, match="fusion must be one of cross, late"):
        HybridModel(audio_dim=2, video_dim=2, n_classes=6, fusion="early")


def test_norm_linear_recomputes_the_layer_norm_and_gets_the_same_gradients():
    torch.manual_seed(0)
    fused = NormLinear(16, 24)
    with torch.no_grad():  # not the identity LayerNorm it starts as
        fused.norm.weight.normal_(), fused.norm.bias.normal_()
    x = torch.randn(3, 7, 16, requires_grad=True)
    g = torch.randn(3, 7, 24)
    fused(x).backward(g)
    got = [t.grad.clone() for t in (x, *fused.parameters())]
    for t in (x, *fused.parameters()):
        t.grad = None
    fused.linear(fused.norm(x)).backward(g)  # the same modules, unfused
    for a, t in zip(got, (x, *fused.parameters())):
        torch.testing.assert_close(a, t.grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), fused.linear(fused.norm(x)))


def test_a_narrow_input_projects_through_rank_dimensions():
    """--input-rank r: each stream's features pass r dimensions, so the first layer has
    (F + d) r weights instead of F d; 0, or a rank at least the width, is the full projection."""
    wide = HybridModel(audio_dim=20, video_dim=512, n_classes=6, d_model=64, input_rank=8)
    full = HybridModel(audio_dim=20, video_dim=512, n_classes=6, d_model=64)
    first = wide.video_in[0]
    assert first.weight.shape == (8, 512) and first.bias is None
    assert sum(p.numel() for p in wide.video_in.parameters()) == 512 * 8 + 8 * 64 + 64
    assert isinstance(full.video_in, torch.nn.Linear)
    assert isinstance(HybridModel(20, 30, 6, d_model=64, input_rank=40).audio_in, torch.nn.Linear)
    batch = collate([clip(40, 12, s, f_v=512) for s in range(2)])
    assert wide(**batch).shape == (2, 6)


def test_input_dropout_drops_whole_input_features_only_in_training():
    torch.manual_seed(0)
    model = HybridModel(audio_dim=20, video_dim=30, n_classes=6, d_model=32,
                        input_dropout=0.5)
    x = torch.ones(4, 10, 30)
    dropped = model.in_drop.train()(x)
    assert ((dropped == 0).all(1) | (dropped == 2).all(1)).all()  # whole features, per clip
    assert (dropped == 0).any()
    torch.testing.assert_close(model.in_drop.eval()(x), x)


def test_a_temporal_block_without_gradients_computes_the_same_causal_outputs():
    """Inference pads only the past (TimeConv.causal); training pads both sides and drops the
    end. Both must give every frame the same value, and no frame may read a later one."""
    torch.manual_seed(0)
    block = TemporalBlock(16, kernel=3, dilation=4, dropout=0.1).eval()
    x = torch.randn(2, 23, 16)
    trained_path = block(x)  # gradients on: the training path
    with torch.no_grad():
        inferred = block(x)
        later_changed = block(torch.cat([x[:, :10], torch.randn(2, 13, 16)], 1))
    assert trained_path.shape == inferred.shape == (2, 23, 16)
    torch.testing.assert_close(inferred, trained_path.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(later_changed[:, :10], inferred[:, :10])  # causal
    assert not torch.allclose(later_changed[:, 10:], inferred[:, 10:])


def grads_of(out: torch.Tensor, g: torch.Tensor, tensors) -> list[torch.Tensor]:
    for t in tensors:
        t.grad = None
    out.backward(g)
    return [t.grad.clone() for t in tensors]


def test_lean_relu_keeps_a_sign_for_backward_and_gets_relus_gradients():
    x = torch.randn(3, 7, 5, requires_grad=True)
    g = torch.randn(3, 7, 5)
    y = lean_relu(x)
    assert y.grad_fn is not None and "Lean" in type(y.grad_fn).__name__
    got = grads_of(y, g, [x])
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)
    torch.testing.assert_close(got, grads_of(torch.relu(x), g, [x]), rtol=0, atol=0)
    with torch.no_grad():
        assert lean_relu(x).grad_fn is None


def test_multi_scale_conv_recomputes_its_layer_norm_and_gets_the_same_gradients():
    """Training keeps the block's input, not the masked LayerNorm the convolutions read: the
    same outputs and gradients as the modules called one by one, padded frames included."""
    torch.manual_seed(0)
    block = MultiScaleConv(16, (3, 5), dropout=0.3).eval()  # dropout off, gradients on
    with torch.no_grad():
        block.norm.weight.normal_(), block.norm.bias.normal_()
    x = torch.randn(3, 11, 16, requires_grad=True)
    m = torch.ones(3, 11, 1)
    m[1, 7:], m[2, 3:] = 0, 0
    g = torch.randn(3, 11, 16)
    tensors = [x, *block.parameters()]
    fused = block(x, m)
    got = grads_of(fused, g, tensors)

    def unfused():
        h = torch.cat([conv(masked(block.norm(x), m)) for conv in block.convs], -1)
        return masked(x + torch.relu(h), m)
    torch.testing.assert_close(fused, unfused())
    for a, b in zip(got, grads_of(unfused(), g, tensors)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(block(x, m), fused.detach())
    dilated = torch.nn.Conv2d(16, 8, (1, 3), padding=(0, 2), dilation=(1, 2))
    with pytest.raises(ValueError, match="stride 1, dilation 1"):
        norm_convs(x, m, block.norm, [dilated])


def test_a_tensor_kept_for_backward_is_made_again_when_backward_needs_it():
    a = torch.randn(4, 5, requires_grad=True)
    made = []

    def make():
        made.append(1)
        return torch.arange(20.0).view(4, 5)
    big = make()
    with recomputed_in_backward(big, make):
        y = (a * big).sum()  # mul keeps big for a's gradient
    del big
    assert made == [1]
    y.backward()
    assert made == [1, 1]
    torch.testing.assert_close(a.grad, torch.arange(20.0).view(4, 5))


def test_cross_modal_attention_makes_its_time_bias_again_and_gets_the_same_gradients():
    torch.manual_seed(0)
    block = CrossModalAttention(16, 4, dropout=0.3).eval()
    x, ctx = torch.randn(2, 9, 16, requires_grad=True), torch.randn(2, 5, 16, requires_grad=True)
    x_m = torch.ones(2, 9, 1)
    x_m[1, 6:] = 0
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[1, ..., 3:] = False
    x_t, ctx_t = torch.rand(2, 9).cumsum(1), torch.rand(2, 5).cumsum(1)
    g = torch.randn(2, 9, 16)
    tensors = [x, ctx, *block.parameters()]
    out = block(x, x_m, x_t, ctx, keep, ctx_t)
    got = grads_of(out, g, tensors)

    def plain():  # the same attention with the bias made once and kept
        bias = -(x_t[:, :, None] - ctx_t[:, None, :]).abs()[:, None] * block.slope[:, None, None]
        y = x + block.attn(x, ctx, bias.masked_fill(~keep, float("-inf")))
        return masked(y + block.ff(y), x_m)
    torch.testing.assert_close(out, plain())
    for a, b in zip(got, grads_of(plain(), g, tensors)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
