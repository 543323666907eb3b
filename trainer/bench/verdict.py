"""Figures with their spread, and each target's verdict: holds, misses, unsure or invalid.

A figure is the median of its repeats; ``spread`` keeps the repeats with their minimum, median
and maximum, and the interval a verdict is judged on: the narrowest pair of order statistics
(the k-th smallest and the k-th largest repeat) that holds the median of the repeats' own
distribution with at least ``LEVEL`` confidence, whatever that distribution is (the sign test's
interval: P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) < k)). With 5 to 7 repeats
it is min to max (94 to 98 %), with 8 to 10 the 2nd to the 2nd largest (93 to 98 %): more
repeats buy a narrower interval of the same confidence, so one stray repeat no longer decides
a verdict. Under 5 repeats no pair reaches ``LEVEL``: the interval is min to max, and says so
with its lower confidence. A target

- **holds** when the whole interval is on the right side of its threshold,
- **misses** when the whole interval is on the wrong side,
- **unsure** when the interval straddles it, or there are fewer than ``MIN_REPEATS`` readings,
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
LEVEL = 0.9  # the confidence of the interval a verdict is judged on
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


def coverage(n: int, k: int) -> float:
    """The confidence that the k-th smallest and k-th largest of n repeats hold the median.

    >>> round(coverage(5, 1), 4), round(coverage(9, 2), 4)
    (0.9375, 0.9609)
    """
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0 ** n


def interval_rank(n: int, level: float = LEVEL) -> int:
    """The largest k whose [k-th smallest, k-th largest] holds the median with ``level``
    confidence; 1 (min to max) when none does.

    >>> [interval_rank(n) for n in (3, 5, 7, 8, 9, 12, 15)]
    [1, 1, 1, 2, 2, 3, 4]
    """
    k = 1
    while 2 * (k + 1) <= n and coverage(n, k + 1) >= level:
        k += 1
    return k


def spread(values: list[float]) -> dict:
    """The repeats of one figure, with their minimum, median and maximum, and the interval
    (``low`` to ``high``, ``coverage`` its confidence) that a verdict is judged on.

    >>> spread([3.0, 1.0, 2.0])["low"], spread([3.0, 1.0, 2.0])["coverage"]
    (1.0, 0.75)
    >>> s = spread([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0])
    >>> s["min"], s["low"], s["median"], s["high"], s["max"]
    (1.0, 2.0, 5.0, 8.0, 9.0)
    """
    v = [float(x) for x in values]
    if not v:
        return {"repeats": [], "n": 0, "min": None, "median": None, "max": None, "low": None,
                "high": None, "coverage": None}
    k, srt = interval_rank(len(v)), sorted(v)
    return {"repeats": v, "n": len(v), "min": srt[0], "median": float(np.median(v)),
            "max": srt[-1], "low": srt[k - 1], "high": srt[-k],
            "coverage": round(coverage(len(v), k), 4)}


def judge(s: dict, key: str, load: dict | None = None) -> dict:
    """Target ``key``'s verdict on the spread ``s`` (and the load it was taken under)."""
    op, thr, kind, means = TARGETS[key]
    ok, words = POSSIBLE[kind]
    out = {"target": f"{op} {thr:.3g}", "value": s["median"], "min": s["min"], "max": s["max"],
           "low": s["low"], "high": s["high"], "coverage": s["coverage"], "n": s["n"],
           "means": means, "possible": words,
           "under_load": bool(load and load.get("under_load"))}
    if s["n"] == 0:
        return dict(out, verdict="not measured", holds=False, reason="not in this mode")
    bad = [x for x in s["repeats"] if not (math.isfinite(x) and ok(x))]
    conf = f"{s['coverage']:.0%} interval of the median"
    good_side = (lambda x: x >= thr) if op == ">=" else (lambda x: x <= thr)
    if not (math.isfinite(s["median"]) and ok(s["median"])):
        v, why = "invalid", (f"median {s['median']:.4g} is not {words}: an error of the "
                             f"measurement ({len(bad)} of {s['n']} repeats impossible)")
    elif bad:
        v, why = "unsure", (f"{len(bad)} of {s['n']} repeats not {words}: the noise is larger "
                            "than the quantity")
    elif s["n"] < MIN_REPEATS:
        v, why = "unsure", f"{s['n']} reading(s): no spread to judge by"
    elif all(good_side(x) for x in (out["low"], out["high"])):
        v, why = "holds", f"the whole interval on the right side ({conf})"
    elif not any(good_side(x) for x in (out["low"], out["high"])):
        v, why = "misses", f"the whole interval on the wrong side ({conf})"
    else:
        v, why = "unsure", (f"the interval {out['low']:.4g} to {out['high']:.4g} straddles "
                            f"{thr:.3g} ({conf})")
    if out["under_load"]:
        why += "; taken under load: not a result"
    return dict(out, verdict=v, holds=v == "holds", reason=why)


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Each round's a / b (the two sides of a ratio measured in turn); 0 / 0 is nan."""
    return [x / y if y else math.nan for x, y in zip(a, b)]


def fmt(s: dict, f: str = ".2f", scale: float = 1.0) -> str:
    """'median (low to high, n)' of a spread: its verdict's interval, e.g.
    '21.3 (20.1 to 22.0, n=5)'."""
    if not s or not s["n"]:
        return "n/a"
    return (f"{s['median'] * scale:{f}} ({s['low'] * scale:{f}} to {s['high'] * scale:{f}}, "
            f"n={s['n']})")
