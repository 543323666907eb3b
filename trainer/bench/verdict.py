"""Figures with their spread, and each target's verdict: holds, misses, unsure or invalid.

A figure is the median of its repeats; ``spread`` keeps the repeats with their minimum, median
and maximum. A target

- **holds** when the whole spread is on the right side of its threshold,
- **misses** when the whole spread is on the wrong side,
- **unsure** when the spread straddles it, or there are fewer than ``MIN_REPEATS`` readings,
- **invalid** when the median is a value the quantity cannot take (a fraction below 0 or above
  1, a ratio of two positive quantities at 0 or below): an error of the measurement. A spread
  with some repeats outside the possible range, the median inside, is noisier than the
  quantity itself: never "holds", at best "unsure".

Examples:
    >>> judge(spread([0.02, 0.025, 0.028]), "loader_overhead")["verdict"]
    'holds'
    >>> judge(spread([-5.13, -4.0, -6.2]), "loader_overhead")["verdict"]
    'invalid'
"""

from __future__ import annotations

import math

import numpy as np

MIN_REPEATS = 3
# What each kind of quantity can be: (test, in words).
POSSIBLE = {
    "positive": (lambda v: v > 0, "> 0"),
    "fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}
# key: (comparison, threshold, kind of quantity, what it means)
TARGETS = {
    "throughput_ratio": (">=", 20.0, "positive", "hybrid training clips/s over the lstm's, "
                         "epochs in turn"),
    "memory_ratio": ("<=", 1 / 4, "positive", "hybrid peak training memory over the lstm's"),
    "matmul_fraction": (">=", 0.7, "fraction", "hybrid training FLOP/s over this machine's "
                        "fp32 mm FLOP/s"),
    "padding_efficiency": (">=", 0.9, "fraction", "real over padded frames, bucketed batches"),
    "loader_overhead": ("<=", 0.03, "fraction", "share of epoch time the data path costs"),
    "latency_ms_p50_exported": ("<=", 2.0, "positive", "single-clip inference median, "
                                "exported model"),
    "extract_speed": (">=", 8.0, "positive", "extraction at the defaults (mediapipe), 2 "
                      "workers: media seconds per wall second, the workers' start left out"),
    "tracking_overhead": ("<=", 0.01, "fraction", "share of epoch time writing TensorBoard "
                          "events costs (the writer's epoch-end call over its epoch)"),
}


def spread(values: list[float]) -> dict:
    """The repeats of one figure, with their minimum, median and maximum.

    >>> spread([3.0, 1.0, 2.0])
    {'repeats': [3.0, 1.0, 2.0], 'n': 3, 'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    v = [float(x) for x in values]
    if not v:
        return {"repeats": [], "n": 0, "min": None, "median": None, "max": None}
    return {"repeats": v, "n": len(v), "min": min(v), "median": float(np.median(v)),
            "max": max(v)}


def judge(s: dict, key: str, load: dict | None = None) -> dict:
    """Target ``key``'s verdict on the spread ``s`` (and the load it was taken under)."""
    op, thr, kind, means = TARGETS[key]
    ok, words = POSSIBLE[kind]
    out = {"target": f"{op} {thr:.3g}", "value": s["median"], "min": s["min"], "max": s["max"],
           "n": s["n"], "means": means, "possible": words,
           "under_load": bool(load and load.get("under_load"))}
    rep = [x for x in s["repeats"] if math.isfinite(x)]
    if s["n"] == 0:
        return dict(out, verdict="not measured", holds=False, reason="not in this mode")
    bad = [x for x in s["repeats"] if not (math.isfinite(x) and ok(x))]
    good_side = (lambda x: x >= thr) if op == ">=" else (lambda x: x <= thr)
    if not (math.isfinite(s["median"]) and ok(s["median"])):
        v, why = "invalid", (f"median {s['median']:.4g} is not {words}: an error of the "
                             f"measurement ({len(bad)} of {s['n']} repeats impossible)")
    elif bad:
        v, why = "unsure", (f"{len(bad)} of {s['n']} repeats not {words}: the noise is larger "
                            "than the quantity")
    elif s["n"] < MIN_REPEATS:
        v, why = "unsure", f"{s['n']} reading(s): no spread to judge by"
    elif all(good_side(x) for x in rep):
        v, why = "holds", "the whole spread on the right side"
    elif not any(good_side(x) for x in rep):
        v, why = "misses", "the whole spread on the wrong side"
    else:
        v, why = "unsure", f"the spread {s['min']:.4g} to {s['max']:.4g} straddles {thr:.3g}"
    if out["under_load"]:
        why += "; taken under load: not a result"
    return dict(out, verdict=v, holds=v == "holds", reason=why)


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Each round's a / b (the two sides of a ratio measured in turn); 0 / 0 is nan."""
    return [x / y if y else math.nan for x, y in zip(a, b)]


def fmt(s: dict, f: str = ".2f", scale: float = 1.0) -> str:
    """'median (min-max, n)' of a spread, e.g. '21.3 (20.1-22.0, n=5)'."""
    if not s or not s["n"]:
        return "n/a"
    return (f"{s['median'] * scale:{f}} ({s['min'] * scale:{f}} to {s['max'] * scale:{f}}, "
            f"n={s['n']})")
