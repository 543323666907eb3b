"""Single-clip inference latency of the eager and the exported hybrid, in interleaved blocks.

One clip per call, cycling over 20 clips of the workload; eager is softmax(model(...)) under
inference_mode, exported the artifact of trainer.export (ONNX Runtime, else TorchScript) on
clips pooled as trainer.prepare pools them. The calls are made in blocks, eager and exported in
turn (E, X, E, X...), so that a moment of load hits both; each block's median is one repeat of
the p50 figure.

Both run on one thread (``SINGLE_CLIP_THREADS``), as a server answering one clip per call
would, scaling by one session per core: a clip's operators (about 50 to 125 frames by 128
channels) are small to split. On this 2-vCPU VM, ONNX Runtime on 2 intra-op threads took
either about 1.5 or about 2.3 ms, the mode changing from one process to the next (where its
two threads landed), and 1.7 to 1.9 ms on 1 (eager 5.4 against 5.7 ms on 2). The exported
model on the bench's own thread count is timed in the same blocks (``exported_all_threads``),
for the comparison.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.batching import collate
from trainer.bench.load import Window, combine
from trainer.bench.measure import torch_threads
from trainer.bench.workload import PRESETS, build, pooled, workload
from trainer.export import INPUTS, export_model, load_exported

SINGLE_CLIP_THREADS = 1


def latency(preset: str, seed: int, threads: int) -> dict:
    """p50 and p95 per block for each model, their agreement, and the load of each block."""
    with torch_threads(SINGLE_CLIP_THREADS):
        return _measure(PRESETS[preset], seed, threads)


def _measure(p: dict, seed: int, threads: int) -> dict:
    torch.manual_seed(seed)
    model = build("hybrid").eval()
    # A head at weight 0 is left out of evaluation and export; trained models on the raw media
    # gave theirs 0.3 to 0.9: the figure is taken with it in, the costlier case
    model.linear.mix.fill_(0.5)
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
           "threads": SINGLE_CLIP_THREADS, "all_threads": threads, "format": fmt}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_model(model, fmt, Path(tmp) / f"hybrid{'.onnx' if fmt == 'onnx' else '.ts'}")
        out["export_seconds"] = time.perf_counter() - t0
        exported = load_exported(path, SINGLE_CLIP_THREADS)
        exported_all = load_exported(path, threads)

        def eager(batch):
            with torch.inference_mode():
                return torch.softmax(model(**batch), -1).numpy()

        feeds = [{k: b[k].numpy() for k in INPUTS} for b in batches]
        out["max_abs_diff"] = max(float(np.abs(exported(f) - eager(b)).max())
                                  for f, b in zip(feeds, batches))
        runs = {"eager": (eager, batches), "exported": (exported, feeds),
                "exported_all_threads": (exported_all, feeds)}
        for fn, args in runs.values():
            for a in args:
                fn(a)  # warm-up: each clip's shape met once, as a server meets its lengths
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
