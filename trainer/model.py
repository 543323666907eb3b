"""The hybrid audio-visual emotion model, built bottom-up.

    audio (B, T_a, F_a) ─ MultiScaleConv x2 (kernels 3 | 5) ──┐
                                                              ├─ CrossModal (a→v, v→a) ─ pool ─ classifier
    video (B, T_v, F_v) ─ TCN (dilations 1,2,4,8) ─ SelfAttn ─┘

Masks are True on real frames, which come first (padding is at the end, as collate makes it).
Padded frames are zeroed before every convolution that looks ahead, masked out of every
attention as keys and out of the pooling, so padding never changes a prediction. The TCN's
convolutions are causal: a real frame only sees earlier frames, never the padding after it.

The streams come pooled to rates set in seconds (``trainer.prepare``: by default audio at 25
and video at 15 frames/s, whatever rate the features were made at), and still run at different
rates: cross-modal attention gets each frame's time in seconds and a fixed per-head penalty on
time distance, with time scales from 20 ms (the audio-visual binding window of speech is of the
order of 100 ms) to 2 s (the whole clip), so it relates what happens at the same moment in both.
``fusion="late"`` leaves cross-modal attention out: each stream is pooled over time alone and the
two are concatenated, the ablation of what relating the streams in time adds.

How each choice paid in ``python -m trainer bench`` is in docs/performance.md.

Example:
    >>> model = HybridModel(audio_dim=88, video_dim=512, n_classes=6)
    >>> logits = model(**batch)  # batch from trainer.batching.collate; (B, 6)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from trainer.baseline import LSTMBaseline
from trainer.ensemble import Ensemble
from trainer.lean import NormLinear, lean_relu, norm_convs, recomputed_in_backward
from trainer.linear_head import LinearHead
from trainer.pooling import masked_max, masked_mean, mean_std
from trainer.synchrony import SyncFeatures

FUSIONS = ("cross", "late")


def masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Zero padded frames. x (B, T, C), m (B, T, 1) float: the mask, converted once per forward."""
    return x * m


class ChannelDropout(nn.Module):
    """Dropout of whole feature channels per clip, the same at every frame (B, T, C).

    Adjacent frames are nearly the same, so element-wise dropout over time is weak
    regularisation (a dropped value is read again from its neighbours) and costs a random
    draw per element; dropping channels (Tompson et al. 2015; keras-tcn's SpatialDropout1D)
    draws B x C values.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1 - self.p).div_(1 - self.p)


def drop_relu(drop: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(drop(x)): the same as drop(relu(x)), since relu(k x) = k relu(x) for k >= 0, but
    backward then keeps one tensor (relu's output, which the next layer keeps anyway), not two."""
    return F.relu(drop(x))


class FeedForward(nn.Module):
    """Pre-norm: LayerNorm, Linear d -> mult d, ReLU, Linear back (dropout after each)."""

    def __init__(self, d: int, dropout: float, mult: int = 2):
        super().__init__()
        self.fc1, self.fc2 = NormLinear(d, mult * d), nn.Linear(mult * d, d)
        self.drop = ChannelDropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(drop_relu(self.drop, self.fc1(x))))


class TimeConv(nn.Module):
    """A convolution over time for (B, T, C) tensors: (B, T, C_in) -> (B, T', C_out).

    It runs as a (1 x k) Conv2d on the channels-last view (B, C, 1, T) of the same memory, which
    oneDNN convolves in place; Conv1d wants (B, C, T) and copies to it, forwards and backwards.
    Forward + backward was 1.5 to 2x faster here at the model's sizes.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, (1, kernel), padding=(0, padding),
                              dilation=(1, dilation))

    def forward(self, x):
        y = self.conv(x.unsqueeze(1).permute(0, 3, 1, 2))  # (B, C_out, 1, T'), channels-last
        return y.permute(0, 2, 3, 1).squeeze(1)  # (B, T', C_out), contiguous

    def causal(self, x):
        """``forward(x)[:, :T]``, with the past padded only: the frames a causal block drops are
        never computed. (B, T, C_in) -> (B, T, C_out)."""
        c = self.conv
        h = F.pad(x, (0, 0, c.padding[1], 0)).unsqueeze(1).permute(0, 3, 1, 2)
        y = F.conv2d(h, c.weight, c.bias, dilation=c.dilation)  # no padding of its own
        return y.permute(0, 2, 3, 1).squeeze(1)


class MultiScaleConv(nn.Module):
    """Convolutions of kernel 3 and 5 side by side over time, concatenated; pre-norm residual."""

    def __init__(self, d: int, kernels: tuple[int, ...] = (3, 5), dropout: float = 0.1):
        super().__init__()
        assert d % len(kernels) == 0, "d must split evenly across the kernels"
        self.norm = nn.LayerNorm(d)
        self.convs = nn.ModuleList(TimeConv(d, d // len(kernels), k, padding=k // 2)
                                   for k in kernels)
        self.drop = ChannelDropout(dropout)

    def forward(self, x, m):
        if torch.is_grad_enabled():  # the same, keeping less for backward
            h = norm_convs(x, m, self.norm, [c.conv for c in self.convs])
        else:
            h = masked(self.norm(x), m)  # zero padding, as if each clip were alone
            h = torch.cat([conv(h) for conv in self.convs], dim=-1)  # (B, T, C)
        return masked(x + lean_relu(self.drop(h)), m)


class TemporalBlock(nn.Module):
    """Bai et al. 2018: two weight-normalised dilated causal convolutions with ReLU and spatial
    dropout, and a residual connection.

    Causal, and padded at the end only, so no real frame reads a padded one: the block needs
    no mask; what it writes on padded frames is zeroed once, after the TCN (``TCN.forward``).
    In training, the convolutions pad both sides themselves and the last ``pad`` outputs are
    dropped (no padded copy to keep for backward); without gradients, only the past is padded
    (``TimeConv.causal``), so the frames dropped are never computed.
    """

    def __init__(self, d: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        pad = (kernel - 1) * dilation  # frame t sees t - pad .. t
        # Zero padding on both sides, and the last ``pad`` outputs dropped: causal, with the
        # padding inside the convolution rather than a padded copy of the input.
        self.conv1, self.conv2 = (TimeConv(d, d, kernel, dilation, pad) for _ in range(2))
        weight_norm(self.conv1.conv), weight_norm(self.conv2.conv)
        self.drop = ChannelDropout(dropout)

    def forward(self, x):
        if not torch.is_grad_enabled():  # inference and export: no dropped frame computed
            # (ONNX Runtime folds the pad into the convolution); an exported clip took 1.92 ->
            # 1.74 ms on 1 thread here, with the same outputs (tests/test_model.py)
            h = drop_relu(self.drop, self.conv1.causal(x))
            return F.relu(x + drop_relu(self.drop, self.conv2.causal(h)))
        t = x.shape[1]
        h = drop_relu(self.drop, self.conv1(x)[:, :t])
        h = lean_relu(self.drop(self.conv2(h)[:, :t]))
        return F.relu(x + h)


class TCN(nn.Module):
    def __init__(self, d: int, levels: int = 4, kernel: int = 3, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(TemporalBlock(d, kernel, 2 ** i, dropout)
                                    for i in range(levels))  # dilations 1, 2, 4, 8

    def forward(self, x, m):
        for block in self.blocks:
            x = block(x)
        return masked(x, m)


class Attention(nn.Module):
    """Pre-norm multi-head attention over scaled_dot_product_attention (its fused CPU kernel).

    Self-attention (``ctx is None``) projects q, k and v in one matrix multiply.
    """

    def __init__(self, d: int, heads: int, cross: bool):
        super().__init__()
        self.heads = heads
        if cross:
            self.q, self.kv = NormLinear(d, d), NormLinear(d, 2 * d)
        else:
            self.qkv = NormLinear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, ctx, attn_mask):
        """attn_mask: (B, 1, 1, Tk) bool, True on real keys, or (B, H, Tq, Tk) additive."""
        B, Tq, C = x.shape
        H = self.heads
        if ctx is None:
            q, k, v = self.qkv(x).view(B, Tq, 3, H, C // H).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).view(B, Tq, H, C // H).transpose(1, 2)  # (B, H, Tq, C/H)
            k, v = self.kv(ctx).view(B, ctx.shape[1], 2, H, C // H).permute(2, 0, 3, 1, 4)
        # No dropout on the attention weights: with it, SDPA on CPU leaves its fused kernel
        # for the math path (B, H, Tq, Tk weights, masks and copies); the output is dropped.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, Tq, C))  # (B, Tq, C)


class SelfAttentionBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn, self.ff = Attention(d, heads, cross=False), FeedForward(d, dropout)
        self.drop = ChannelDropout(dropout)

    def forward(self, x, m, keep):
        x = x + self.drop(self.attn(x, None, keep))  # keep: the bool key mask
        return masked(x + self.ff(x), m)


class CrossModalAttention(nn.Module):
    """One stream queries the other; attention is penalised by time distance, per head.

    bias[b, h, i, j] = -|t_query[b, i] - t_key[b, j]| / tau_h  (seconds)
    The time scales tau_h are fixed and spread geometrically over ``time_scales`` (default 20 ms
    to 2 s), as ALiBi's slopes are (Press et al. 2022): the sharpest head loses 5 logits on a key
    100 ms away and so binds events that happen together; the broadest reads the whole clip.
    (The first version's slopes, 2 to 0.02 per second, lost one logit over half a second at
    best: nothing told 0.1 s from 1 s, and timing-only classes stayed at chance.) Learned
    scales would make the bias need a gradient, which SDPA's fused CPU kernel does not give: the
    math path it falls back to was 2.5x slower here and kept the (B, H, Tq, Tk) weights.
    """

    def __init__(self, d: int, heads: int, dropout: float,
                 time_scales: tuple[float, float] = (0.02, 2.0)):
        super().__init__()
        self.attn, self.ff = Attention(d, heads, cross=True), FeedForward(d, dropout)
        self.drop = ChannelDropout(dropout)
        lo, hi = time_scales
        self.register_buffer("slope", 1.0 / torch.logspace(math.log10(lo), math.log10(hi), heads))

    def forward(self, x, x_m, x_t, ctx, ctx_keep, ctx_t):
        """x_t (B, Tq), ctx_t (B, Tk): frame times in seconds. Attention's backward needs the
        (B, H, Tq, Tk) bias, which is made again from the times then rather than kept: 3.4 MB
        a direction on the bench's largest batch, for a few element-wise passes."""
        def time_bias():
            dist = (x_t[:, :, None] - ctx_t[:, None, :]).abs()  # (B, Tq, Tk), contiguous
            bias = dist[:, None] * -self.slope[None, :, None, None]  # (B, H, Tq, Tk)
            return bias.masked_fill_(~ctx_keep, float("-inf"))

        bias = time_bias()
        if torch.is_grad_enabled():
            with recomputed_in_backward(bias, time_bias):
                attended = self.attn(x, ctx, bias)
        else:
            attended = self.attn(x, ctx, bias)
        x = x + self.drop(attended)
        return masked(x + self.ff(x), x_m)


def input_projection(d_in: int, d: int, rank: int = 0) -> nn.Module:
    """A stream's features to the model's width: (B, T, d_in) -> (B, T, d). With ``rank``, through
    ``rank`` dimensions first: a cue that lives in a small subspace of wide features (expression
    in a face-identity embedding) needs few directions, and a full d_in x d map has the room to
    memorise the background of a few hundred clips instead."""
    if not rank or rank >= min(d_in, d):
        return nn.Linear(d_in, d)
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d))


class HybridModel(nn.Module):
    """Multi-scale Conv1D audio, TCN + self-attention video, bidirectional cross-modal attention."""

    def __init__(self, audio_dim: int, video_dim: int, n_classes: int, d_model: int = 128,
                 heads: int = 4, audio_layers: int = 2, tcn_levels: int = 4, dropout: float = 0.1,
                 fusion: str = "cross", time_scales: tuple[float, float] = (0.02, 2.0),
                 input_rank: int = 0, input_dropout: float = 0.0, center: bool = False,
                 stats_head: bool = False, sync_head: bool = False, sync_pcs: int = 0,
                 linear_head: bool = False):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        self.fusion, self.center = fusion, center
        # The pooled linear path: each stream's per-clip mean and deviation of every input
        # feature, straight to the logits (what a linear model on clip statistics reads).
        self.stats = (nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * (audio_dim + video_dim),
                                                                   n_classes))
                      if stats_head else None)
        # The synchrony head (trainer.synchrony): correlations of the streams along fixed class
        # directions, through a linear map of its own to the logits, weighted by sync_weight
        # (1 while training, then chosen on the validation speakers: trainer.train_sync).
        self.sync = SyncFeatures(audio_dim, video_dim, n_classes, sync_pcs) if sync_head else None
        if sync_head:
            self.register_buffer("sync_weight", torch.ones(()))
            self.sync_out = nn.Sequential(nn.Dropout(dropout), nn.Linear(
                n_classes ** 2 + sync_pcs ** 2, n_classes))
        # The linear head (trainer.linear_head): a logistic regression on clip summaries,
        # fitted after training and mixed into the output in evaluation (trainer.train_linear).
        self.linear = LinearHead(audio_dim, video_dim, n_classes) if linear_head else None
        self.in_drop = ChannelDropout(input_dropout)
        self.audio_in = input_projection(audio_dim, d_model, input_rank)
        self.audio_convs = nn.ModuleList(MultiScaleConv(d_model, (3, 5), dropout)
                                         for _ in range(audio_layers))
        self.video_in = input_projection(video_dim, d_model, input_rank)
        self.tcn = TCN(d_model, tcn_levels, 3, dropout)
        self.video_attn = SelfAttentionBlock(d_model, heads, dropout)
        if fusion == "cross":
            ts = tuple(time_scales)
            self.a2v = CrossModalAttention(d_model, heads, dropout, ts)  # audio queries video
            self.v2a = CrossModalAttention(d_model, heads, dropout, ts)  # video queries audio
        self.head = nn.Sequential(nn.LayerNorm(4 * d_model), nn.Linear(4 * d_model, d_model),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_model, n_classes))

    def forward(self, audio, audio_mask, audio_t, video, video_mask, video_t, parts=False, **_):
        """Logits (B, n_classes); with a synchrony head and ``parts``, (the rest's logits, the
        head's own), which training scores apart (trainer.losses.training_loss). In evaluation
        a linear head's log-probabilities are mixed in (its ``mix``; 0 until it is fitted). A
        head at weight 0 is not computed in evaluation."""
        # Masks once per forward: float (B, T, 1) to zero padding, bool (B, 1, 1, T) for keys.
        am, vm = audio_mask.unsqueeze(-1).to(audio.dtype), video_mask.unsqueeze(-1).to(video.dtype)
        a_keep, v_keep = audio_mask[:, None, None, :], video_mask[:, None, None, :]
        stats = None
        if self.stats is not None:
            stats = self.stats(torch.cat([*mean_std(audio, audio_mask),
                                          *mean_std(video, video_mask)], -1))  # (B, classes)
        # In evaluation a head whose weight validation set to 0 adds nothing: not computed
        # (an exported model then leaves it out of its graph), the output the same to the bit
        sync = None if self.sync is None or not (parts or self.training or bool(
            self.sync_weight)) else self.sync_out(
            self.sync(audio, audio_mask, audio_t, video, video_mask, video_t))  # (B, classes)
        if self.center:  # the temporal branches read each clip's deviations from its mean
            audio = masked(audio - masked_mean(audio, audio_mask)[:, None], am)
            video = masked(video - masked_mean(video, video_mask)[:, None], vm)
        a = self.audio_in(self.in_drop(audio))  # (B, T_a, d), T_a after pooling; convs mask it
        for conv in self.audio_convs:
            a = conv(a, am)
        v = self.video_in(self.in_drop(video))  # (B, T_v, d); the TCN is causal: padding after
        v = self.video_attn(self.tcn(v, vm), vm, v_keep)
        if self.fusion == "cross":
            a, v = (self.a2v(a, am, audio_t, v, v_keep, video_t),  # (B, T_a, d)
                    self.v2a(v, vm, video_t, a, a_keep, audio_t))  # (B, T_v, d)
        pooled = torch.cat([masked_mean(a, audio_mask), masked_max(a, audio_mask),
                            masked_mean(v, video_mask), masked_max(v, video_mask)], -1)
        logits = self.head(pooled)  # (B, 4d) -> (B, n_classes)
        logits = logits if stats is None else logits + stats
        if sync is not None:
            if parts:
                return logits, sync
            logits = logits + self.sync_weight * sync
        if self.linear is None or self.training:
            return logits
        return self.linear.mixed(logits, audio, audio_mask, video, video_mask)


def build_model(name: str, members: int = 1, **settings) -> nn.Module:
    """A model from its name and settings (as stored in a checkpoint); ``members`` > 1: an
    ensemble of that many, each from its own initial weights (trainer.ensemble)."""

    models = {"hybrid": HybridModel, "lstm": LSTMBaseline}
    if name not in models:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(models)}")
    if members > 1:
        return Ensemble([models[name](**settings) for _ in range(members)])
    return models[name](**settings)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
