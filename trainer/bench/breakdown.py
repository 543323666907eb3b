"""Where the time of a training step goes: matmuls, attention, element-wise work, dispatch.

torch.profiler records every operator of a few training steps; each operator's own time (its
children's left out) goes to one kind by its name:

- ``matmul``: matrix products and convolutions (mm, addmm, bmm, the oneDNN convolutions and
  their backward);
- ``attention``: scaled-dot-product attention, forward and backward (its fused kernel);
- ``elementwise``: everything else that computes: activations, dropout, masks, norms,
  reductions, copies, the fused AdamW update;
- ``dispatch``: the operators that only pass work on (autograd's nodes, ``linear``,
  ``matmul``, ``conv2d``, views and reshapes), plus the wall time in which no operator ran
  (Python, the autograd engine).

Shares are of the steps' wall time under the profiler, which adds a few microseconds to every
operator: dispatch is overstated somewhat, the kinds' order is what carries over.
"""

from __future__ import annotations

import time
from collections import defaultdict

from torch.profiler import ProfilerActivity, profile

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv",
          "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_mkldnn_",
          "aten::mkldnn_rnn", "aten::_thnn_fused_lstm", "aten::dot")
ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention")
PASS_ON = ("aten::linear", "aten::matmul", "aten::conv2d", "aten::conv1d", "aten::convolution",
           "aten::_convolution", "aten::view", "aten::reshape", "aten::_reshape_alias",
           "aten::transpose", "aten::permute", "aten::expand", "aten::as_strided",
           "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::t",
           "aten::unflatten", "aten::flatten", "aten::detach", "aten::alias", "aten::lift_fresh",
           "aten::empty", "aten::empty_strided", "aten::result_type", "aten::numpy_T",
           "aten::expand_as", "aten::view_as", "aten::split", "aten::chunk", "aten::unbind",
           "aten::lstm", "aten::dropout", "aten::layer_norm")
KINDS = ("matmul", "attention", "elementwise", "dispatch")


def kind(name: str) -> str:
    """The kind of work an operator (by its profiler name) does.

    >>> kind("aten::addmm"), kind("aten::_scaled_dot_product_flash_attention_for_cpu")
    ('matmul', 'attention')
    >>> kind("aten::relu"), kind("autograd::engine::evaluate_function: MmBackward0")
    ('elementwise', 'dispatch')
    """
    if any(a in name for a in ATTENTION):
        return "attention"
    if name.startswith(MATMUL):
        return "matmul"
    if (name in PASS_ON or name.startswith(("autograd::", "Optimizer.", "torch::autograd"))
            or name.endswith(("Backward0", "Backward1"))):
        return "dispatch"
    return "elementwise"


def profile_steps(step, batches: list[dict]) -> dict:
    """Seconds and shares of wall time per kind over one step on each of ``batches`` (made
    beforehand: the data path is the loader figure's), and the ten most costly operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        wall = time.perf_counter() - t0
    seconds, ops = defaultdict(float), defaultdict(float)
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6
        seconds[kind(e.key)] += s
        ops[e.key] += s
    ran = sum(seconds.values())
    seconds["dispatch"] += max(0.0, wall - ran)  # no operator ran: Python, autograd's engine
    total = max(wall, ran)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
    return {"steps": len(batches), "wall_seconds": wall,
            "seconds": {k: seconds[k] for k in KINDS},
            "shares": {k: seconds[k] / total for k in KINDS},
            "top_ops": [{"op": k, "kind": kind(k), "seconds": v, "share": v / total}
                        for k, v in top]}


def table(b: dict) -> str:
    """One line: each kind's share of a step."""
    return (f"where a step's time goes ({b['steps']} steps, {b['wall_seconds'] / b['steps'] * 1e3:.1f}"
            " ms each under the profiler): " + ", ".join(
                f"{k} {b['shares'][k]:.0%}" for k in KINDS))
