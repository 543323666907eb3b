"""Single-clip inference latency of the eager and the exported hybrid, in interleaved blocks.

One clip per call, cycling over 20 clips of the workload; eager is softmax(model(...)) under
inference_mode, exported the artifact of trainer.export (ONNX Runtime, else TorchScript) on
clips pooled as trainer.prepare pools them, with the same threads. The calls are made in
blocks, eager and exported in turn (E, X, E, X...), so that a moment of load hits both; each
block's median is one repeat of the p50 figure.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.batching import collate
from trainer.bench.load import Window, combine
from trainer.bench.workload import PRESETS, build, pooled, workload
from trainer.export import INPUTS, export_model, load_exported


def latency(preset: str, seed: int, threads: int) -> dict:
    """p50 and p95 per block for each model, their agreement, and the load of each block."""
    p = PRESETS[preset]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build("hybrid").eval()
    clips = pooled("hybrid", workload(20, seed + 1, p.get("short", False)))
    batches = [collate([c]) for c in clips]
    try:
        import onnxruntime  # noqa: F401  (optional: the export extra)

        fmt = "onnx"
    except ImportError:
        fmt = "torchscript"
    blocks = p["latency_blocks"]
    per_block = max(1, p["latency_runs"] // blocks)
    out = {"clips": len(clips), "runs": per_block * blocks, "blocks": blocks,
           "threads": threads, "format": fmt}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_model(model, fmt, Path(tmp) / f"hybrid{'.onnx' if fmt == 'onnx' else '.ts'}")
        out["export_seconds"] = time.perf_counter() - t0
        exported = load_exported(path, threads)

        def eager(batch):
            with torch.inference_mode():
                return torch.softmax(model(**batch), -1).numpy()

        feeds = [{k: b[k].numpy() for k in INPUTS} for b in batches]
        out["max_abs_diff"] = max(float(np.abs(exported(f) - eager(b)).max())
                                  for f, b in zip(feeds, batches))
        runs = {"eager": (eager, batches), "exported": (exported, feeds)}
        for fn, args in runs.values():
            for a in args[:3]:
                fn(a)  # warm-up
        res = {k: {"p50_ms": [], "p95_ms": [], "loads": []} for k in runs}
        for blk in range(blocks):
            for key, (fn, args) in runs.items():
                times, window = [], Window()
                for i in range(per_block):
                    t0 = time.perf_counter()
                    fn(args[(blk * per_block + i) % len(args)])
                    times.append((time.perf_counter() - t0) * 1e3)
                res[key]["loads"].append(window.stop())
                res[key]["p50_ms"].append(float(np.median(times)))
                res[key]["p95_ms"].append(float(np.percentile(times, 95)))
    for key, r in res.items():
        out[key] = {"p50_ms_blocks": r["p50_ms"], "p95_ms_blocks": r["p95_ms"],
                    "p50_ms": float(np.median(r["p50_ms"])),
                    "p95_ms": float(np.median(r["p95_ms"])), "load": combine(r["loads"])}
    return out
