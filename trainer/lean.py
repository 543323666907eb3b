"""Layers that keep less for backward than autograd's own, with the same gradients.

Training's peak memory is what backward keeps at the end of the forward pass. Each piece here
keeps, instead of a tensor, what it is cheap to make the tensor again from, or a smaller
stand-in for it (selective recomputation, Korthikanti et al. 2022); tests/test_model.py checks
each one's gradients against the plain modules'. Without gradients (inference, export) the
callers use the plain modules. What each saves and costs: docs/performance.md.

Example:
    >>> y = lean_relu(x)  # backward keeps a bool per value
    >>> h = norm_convs(x, m, norm, [conv3, conv5])  # LayerNorm, mask, convolutions: keeps x
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _LeanReluFn(torch.autograd.Function):
    """relu, keeping for backward where its output was positive, not the output itself."""

    @staticmethod
    def forward(ctx, x):
        y = F.relu(x)
        ctx.save_for_backward(y > 0)
        return y

    @staticmethod
    def backward(ctx, gy):
        (on,) = ctx.saved_tensors
        return gy * on


def lean_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x) whose backward keeps where it was positive (1 byte a value), not its output (4
    bytes): for a relu whose output no later layer keeps for its own backward (where one does,
    relu's keeping it costs nothing). The same gradients (tests/test_model.py)."""
    return _LeanReluFn.apply(x) if torch.is_grad_enabled() and x.requires_grad else F.relu(x)


class _NormConvsFn(torch.autograd.Function):
    """cat([conv(layer_norm(x) * m) for conv]) of (1 x k) Conv2d weights: backward keeps x,
    which the LayerNorm keeps anyway, and recomputes the masked LayerNorm from it (as
    _NormLinearFn does) rather than also keeping it for the convolutions."""

    @staticmethod
    def forward(ctx, x, m, norm_w, norm_b, eps, pads, *conv_params):
        h, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, eps)
        hv = (h * m).unsqueeze(1).permute(0, 3, 1, 2)  # (B, C, 1, T), channels-last
        ys = [F.conv2d(hv, w, b, padding=(0, p))
              for p, w, b in zip(pads, conv_params[0::2], conv_params[1::2])]
        ctx.save_for_backward(x, m, mean, rstd, norm_w, norm_b, *conv_params[0::2])
        ctx.eps, ctx.pads = eps, pads
        return torch.cat([y.permute(0, 2, 3, 1).squeeze(1) for y in ys], -1)

    @staticmethod
    def backward(ctx, gy):
        x, m, mean, rstd, norm_w, norm_b, *weights = ctx.saved_tensors
        h = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, ctx.eps)[0]
        hv = (h * m).unsqueeze(1).permute(0, 3, 1, 2)
        gh, grads, start = None, [], 0
        for p, w in zip(ctx.pads, weights):
            c = w.shape[0]
            g = gy[..., start:start + c].unsqueeze(1).permute(0, 3, 1, 2)
            start += c
            gi, gw, gb = torch.ops.aten.convolution_backward(
                g, hv, w, [c], [1, 1], [0, p], [1, 1], False, [0, 0], 1, [True, True, True])
            gh = gi if gh is None else gh + gi
            grads += [gw, gb]
        gh = gh.permute(0, 2, 3, 1).squeeze(1) * m
        gx, g_norm_w, g_norm_b = torch.ops.aten.native_layer_norm_backward(
            gh, x, [x.shape[-1]], mean, rstd, norm_w, norm_b, [True, True, True])
        return gx, None, g_norm_w, g_norm_b, None, None, *grads


class _Recompute:
    """What a saved-tensor hook keeps instead of a tensor: how to make it again."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def recomputed_in_backward(t: torch.Tensor, make):
    """Saved-tensor hooks under which whatever keeps ``t`` for backward keeps ``make`` instead,
    and calls it when backward needs ``t``: for a large tensor that is cheap to make again."""
    ptr, shape = t.data_ptr(), t.shape

    def pack(s):
        return _Recompute(make) if s.data_ptr() == ptr and s.shape == shape else s

    def unpack(p):
        return p.make() if isinstance(p, _Recompute) else p
    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class _NormLinearFn(torch.autograd.Function):
    """linear(layer_norm(x)), keeping x for backward and recomputing the LayerNorm from it."""

    @staticmethod
    def forward(ctx, x, norm_w, norm_b, w, b, eps):
        h, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, eps)
        ctx.save_for_backward(x, mean, rstd, norm_w, norm_b, w)
        ctx.eps = eps
        return F.linear(h, w, b)

    @staticmethod
    def backward(ctx, gy):
        x, mean, rstd, norm_w, norm_b, w = ctx.saved_tensors
        h = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, ctx.eps)[0]
        gy2 = gy.reshape(-1, gy.shape[-1])
        gw, gb = gy2.t() @ h.reshape(-1, h.shape[-1]), gy2.sum(0)
        gx, g_norm_w, g_norm_b = torch.ops.aten.native_layer_norm_backward(
            gy @ w, x, [x.shape[-1]], mean, rstd, norm_w, norm_b, [True, True, True])
        return gx, g_norm_w, g_norm_b, gw, gb, None


class NormLinear(nn.Module):
    """LayerNorm then Linear. In training, backward keeps only the LayerNorm's input (as a
    LayerNorm alone does) and recomputes its output in one cheap pass, rather than also keeping
    that output for the Linear: one (B, T, C) tensor fewer per layer; selective recomputation
    as in Korthikanti et al. 2022. Gradients are the unfused modules' (tests/test_model.py)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(d_in), nn.Linear(d_in, d_out)

    def forward(self, x):
        if not torch.is_grad_enabled():  # inference and export: plain modules
            return self.linear(self.norm(x))
        return _NormLinearFn.apply(x, self.norm.weight, self.norm.bias, self.linear.weight,
                                   self.linear.bias, self.norm.eps)


def norm_convs(x: torch.Tensor, m: torch.Tensor, norm: nn.LayerNorm,
               convs: list[nn.Conv2d]) -> torch.Tensor:
    """cat([conv(norm(x) * m) for conv in convs], -1) for (B, T, C) x, each conv a (1 x k)
    Conv2d over time run on the channels-last view (as model.TimeConv runs it), with its own
    padding along time: backward keeps x, not the masked LayerNorm. (B, T, C) ->
    (B, T, sum C_out). Its backward assumes stride 1, dilation 1 and one group, and no padding
    across the unit height: anything else is refused rather than given wrong gradients."""
    if any(c.stride != (1, 1) or c.dilation != (1, 1) or c.groups != 1 or c.padding[0] != 0
           for c in convs):
        raise ValueError("norm_convs takes (1 x k) convolutions of stride 1, dilation 1 and "
                         "one group, padded along time only")
    return _NormConvsFn.apply(x, m, norm.weight, norm.bias, norm.eps,
                              tuple(c.padding[1] for c in convs),
                              *(t for c in convs for t in (c.weight, c.bias)))
