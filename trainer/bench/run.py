"""Performance benchmark: the hybrid model against the LSTM baseline, on this machine, in one run.

    python -m trainer bench                      # full mode: docs/performance.md's figures (minutes)
    python -m trainer bench --quick              # under a minute, for CI
    python -m trainer bench --out bench.json     # where the JSON goes (written atomically)

The workload is synthetic and shaped like CREMA-D features: clips of 1.5 to 5 s, audio at 100
frames/s of 88 features, video at 30 frames/s of 512 features, batches of 24 built as train.py
builds them (bucket_batches -> collate). Each model trains in a fresh subprocess, so its peak
memory (ru_maxrss) is its own. Measured: training throughput and its ratio, peak training
memory and its ratio, the hybrid's FLOP rate (torch.utils.flop_counter) against this machine's
fp32 torch.mm rate, padding efficiency of bucketed against shuffled batches, data-pipeline
overhead (real data path against batches collated beforehand), single-clip inference latency of
the eager and the exported (ONNX Runtime, else TorchScript) model, the projected epoch
time for a CREMA-D-sized data set, and (full mode) a 2-process gloo DDP epoch against a
1-process one (trainer.bench.ddp), and extraction speed in media seconds per wall second
(trainer.bench.extract_speed; --quick: one short run per face kind). Speed is read from the figures;
nothing here asserts it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.batching import bucket_batches, collate, padding_efficiency
from trainer.bench.ddp import measure as ddp_measure
from trainer.bench.extract_speed import measure as extract_measure
from trainer.bench.extract_speed import table as extract_table
from trainer.bench.measure import (
    HeapPeak,
    count_flops,
    machine,
    matmul_rate,
    mm_buffers,
    peak_rss_mb,
    rss_mb,
)
from trainer.bench.tracking_cost import tracking_cost
from trainer.bench.workload import (
    AUDIO_FPS,
    CREMA_D_CLIPS,
    PRESETS,
    VARIANTS,
    Tiny,
    build,
    durations,
    loader,
    pooled,
    training_step,
    workload,
)
from trainer.config import TrainConfig
from trainer.export import INPUTS, export_model, load_exported
from trainer.store.files import atomic_write_text

TARGETS = {  # key: (comparison, threshold, what it means)
    "throughput_ratio": (">=", 10.0, "hybrid training clips/s over the lstm's"),
    "memory_ratio": ("<=", 1 / 3, "hybrid peak training memory over the lstm's"),
    "matmul_fraction": (">=", 0.6, "hybrid training FLOP/s over this machine's fp32 mm FLOP/s"),
    "padding_efficiency": (">=", 0.9, "real over padded frames, bucketed batches"),
    "loader_overhead": ("<=", 0.05, "share of epoch time the data path costs"),
    "latency_ms_p50_exported": ("<=", 10.0, "single-clip inference median, exported model"),
    "tracking_overhead": ("<=", 0.01, "share of epoch time writing TensorBoard events costs"),
}


# ------------------------------------------------------------------- training (subprocess)


def train_worker(name: str, preset: str, seed: int, threads: int,
                 overrides: dict | None = None) -> dict:
    """Train ``name`` on the workload; runs in its own process (see ``run``). With
    ``overrides`` (settings of a variant), throughput only."""
    p = PRESETS[preset]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    overrides = overrides or {}
    cfg = TrainConfig(model=name, **overrides)
    clips = pooled(name, workload(p["clips"], seed, p.get("short", False)), **overrides)
    lengths = [c.audio.shape[0] for c in clips]
    batches = bucket_batches(lengths, p["batch_size"], seed, 0)
    load = loader(clips, cfg, seed)

    # One step of a one-weight model first: it imports what every training step imports
    # (the optimiser alone brings 22 MB of Python modules), the same for both models.
    training_step(Tiny(), cfg)(collate(clips[:2]))
    rss_before = rss_mb()  # interpreter, torch, those modules and the clips
    try:
        heap = HeapPeak()
        heap_before = heap.in_use()
    except (OSError, AttributeError):  # not glibc: the RSS figure alone
        heap = None
    model = build(name, **overrides).train()
    step = training_step(model, cfg)

    def epoch():  # the real data path, as train.py's loop
        data_s, step_s = [], []
        for b, idx in enumerate(batches):
            t0 = time.perf_counter()
            batch = load(idx, b)
            t1 = time.perf_counter()
            step(batch)
            data_s.append(t1 - t0)
            step_s.append(time.perf_counter() - t1)
        return sum(data_s), sum(step_s)

    # The first pass meets each batch shape for the first time (oneDNN builds its kernels per
    # shape); a long training meets them again and again, so it is not timed. Of the timed
    # epochs, the median (by total time): one epoch varied by 10 % from run to run here.
    cold = sum(epoch())
    data_s, step_s = sorted((epoch() for _ in range(p.get("epochs", 1))), key=sum)[
        p.get("epochs", 1) // 2]
    out = {"clips": len(clips), "batches": len(batches), "batch_size": p["batch_size"],
           "timed_epochs": p.get("epochs", 1),
           "epoch_seconds": data_s + step_s, "step_seconds": step_s, "data_seconds": data_s,
           "clips_per_second": len(clips) / (data_s + step_s),
           "clips_per_second_first_pass": len(clips) / cold,
           "rss_before_training_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
           "parameters": sum(p.numel() for p in model.parameters())}
    out["training_peak_mb"] = out["peak_rss_mb"] - rss_before
    if overrides:
        return dict(out, settings=overrides)
    if heap is not None:  # three more steps, on the batch with the most padded frames: the
        # sampler can miss a peak that lasts under a millisecond; three chances, not one
        largest = max(batches, key=lambda b: len(b) * max(lengths[i] for i in b))
        batch = collate([clips[i] for i in largest])
        with heap:
            for _ in range(3):
                step(batch)
        out["allocated_peak_mb"] = (heap.peak - heap_before) / 2**20
    if name == "hybrid":  # after the memory reading: what follows allocates for itself
        out["flops"] = count_flops(model, [collate([clips[i] for i in b]) for b in batches])
        out["flops_per_second"] = out["flops"] / out["step_seconds"]
        out["loader"] = loader_ab(step, load, batches, p["loader_repeats"])
        # This machine's speed drifts by 10 % over minutes, so the FLOP rate is compared with
        # the matmul rate measured just before it: (mm, epoch) pairs, the median fraction.
        pairs, buffers = [], mm_buffers(p["mm"])
        for _ in range(p.get("epochs", 1)):
            mm = matmul_rate(p["mm"], p["mm_repeats"], buffers)
            pairs.append((out["flops"] / epoch()[1] / mm["flops_per_second"], mm))
        fraction, out["matmul"] = sorted(pairs, key=lambda x: x[0])[len(pairs) // 2]
        out["matmul_fraction"] = fraction
        out["matmul_fractions"] = [f for f, _ in pairs]
    return out


def loader_ab(step, load, batches, repeats: int) -> dict:
    """The same epoch with the real data path (``load``: collate and masks) and on batches
    made beforehand."""
    ready = [load(idx, b) for b, idx in enumerate(batches)]
    real, pre = [], []
    for r in range(repeats):
        for kind in (("real", "pre") if r % 2 == 0 else ("pre", "real")):
            t0 = time.perf_counter()
            for i, (b, idx) in enumerate(zip(ready, batches)):
                step(load(idx, i) if kind == "real" else b)
            (real if kind == "real" else pre).append(time.perf_counter() - t0)
    t_real, t_pre = float(np.median(real)), float(np.median(pre))
    return {"epoch_seconds_real_path": t_real, "epoch_seconds_precollated": t_pre,
            "overhead": (t_real - t_pre) / t_real, "repeats": repeats}


def in_subprocess(name: str, preset: str, seed: int, threads: int,
                  overrides: dict | None = None) -> dict:
    """``train_worker`` in a fresh interpreter; its JSON is the last line of stdout."""
    cmd = [sys.executable, "-m", "trainer.bench.run", "--worker", name, "--preset", preset,
           "--seed", str(seed), "--threads", str(threads),
           "--overrides", json.dumps(overrides or {})]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {name} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ in the parent process


def padding(seed: int, batch_size: int, epochs: int = 5) -> dict:
    """Padding efficiency over a CREMA-D-sized list of lengths, averaged over epochs."""
    lengths = (durations(CREMA_D_CLIPS, seed) * AUDIO_FPS).astype(int).tolist()
    eff = {kind: float(np.mean([padding_efficiency(bucket_batches(
        lengths, batch_size, seed, e, bucket=kind == "bucketed"), lengths) for e in range(epochs)]))
        for kind in ("bucketed", "shuffled")}
    return dict(eff, clips=CREMA_D_CLIPS, batch_size=batch_size, epochs=epochs)


def latency(preset: str, seed: int, threads: int) -> dict:
    """Single-clip inference of the eager and the exported hybrid, and their agreement."""

    p = PRESETS[preset]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build("hybrid").eval()
    clips = pooled("hybrid", workload(20, seed + 1, p.get("short", False)))
    batches = [collate([c]) for c in clips]
    try:
        import onnxruntime  # noqa: F401

        fmt = "onnx"
    except ImportError:
        fmt = "torchscript"
    out = {"clips": len(clips), "runs": p["latency_runs"], "threads": threads, "format": fmt}
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
        for key, fn, args in (("eager", eager, batches), ("exported", exported, feeds)):
            for a in args[:3]:
                fn(a)  # warm-up
            times = []
            for i in range(p["latency_runs"]):
                t0 = time.perf_counter()
                fn(args[i % len(args)])
                times.append((time.perf_counter() - t0) * 1e3)
            out[key] = {"p50_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}
    return out


def run(preset: str = "full", seed: int = 0, threads: int = 0) -> dict:
    """Every measurement; the dict written to bench.json."""
    threads = threads or os.cpu_count() or 1
    t_start = time.time()
    report: dict = {"mode": preset, "machine": machine(threads), "workload": {
        "shape": "CREMA-D-like: clips 1.5-5 s; audio 100 frames/s x 88; video 30 frames/s x 512",
        "clips": PRESETS[preset]["clips"], "batch_size": PRESETS[preset]["batch_size"],
        "seed": seed}}
    hybrid = in_subprocess("hybrid", preset, seed, threads)
    lstm = in_subprocess("lstm", preset, seed, threads)
    lat = latency(preset, seed, threads)
    pad = padding(seed, 24)
    variants = {}
    if preset == "full":
        for key, settings in VARIANTS.items():
            v = in_subprocess("hybrid", preset, seed, threads, settings)
            variants[key] = {"settings": settings, "clips_per_second": v["clips_per_second"],
                             "relative_to_defaults": v["clips_per_second"]
                             / hybrid["clips_per_second"]}
        # 1 process of 2 threads against 2 gloo DDP processes (issue 11); full mode only: its
        # five processes would add more than --quick's CI budget allows, for figures of 8 clips

        report["ddp"] = ddp_measure(preset, seed)
    if preset in ("full", "quick"):  # extraction speed (issue 10); quick: about 10 s
        report["extract"] = extract_measure(preset, seed)
    report.update(tracking_cost(preset, seed, threads))  # issue 19 (trainer.bench.tracking_cost)
    report.update({
        "throughput_ratio": hybrid["clips_per_second"] / lstm["clips_per_second"],
        **memory_ratios(hybrid, lstm),
        "matmul_fraction": hybrid["matmul_fraction"],
        "padding_efficiency": pad["bucketed"],
        "loader_overhead": hybrid["loader"]["overhead"],
        "latency_ms_p50": lat["eager"]["p50_ms"],
        "latency_ms_p95": lat["eager"]["p95_ms"],
        "latency_ms_p50_exported": lat["exported"]["p50_ms"],
        "latency_ms_p95_exported": lat["exported"]["p95_ms"],
        "exported_max_abs_diff": lat["max_abs_diff"],
        "projected_epoch_seconds": {
            m: CREMA_D_CLIPS / r["clips_per_second"] for m, r in (("hybrid", hybrid),
                                                                   ("lstm", lstm))},
        "hybrid": hybrid, "lstm": lstm, "latency": lat, "padding": pad,
        "hybrid_variants": variants,
        "method": {
            "throughput": "clips / seconds of an epoch over the workload (collate and the "
                          "training masks + forward + backward + clip + AdamW step), the "
                          "median of timed_epochs epochs after a first, untimed pass over "
                          "the same batches "
                          "(clips_per_second_first_pass: that pass)",
            "memory": "each model trains in a fresh subprocess. memory_ratio compares "
                      "allocated_peak_mb (below) where glibc can report it, else training_peak_mb "
                      "(memory_basis says which): what training allocates grows with the model, "
                      "the batch and the clip length, whereas RSS also holds the library code "
                      "pages each model's kernels touch and memory the allocator keeps after a "
                      "free. training_peak_mb = ru_maxrss "
                      "after the timed epochs minus the RSS just before the model was built (the "
                      "interpreter, torch, the clips and what one training step of a one-weight "
                      "model imports, the same for both models): everything "
                      "the process came to hold, including library code pages and allocator "
                      "slack; memory_ratio_rss uses it. allocated_peak_mb: peak of malloc's in-use "
                      "bytes (glibc mallinfo2, sampled every 0.5 ms) during three steps on the "
                      "largest batch, minus the same before the model was built: weights, "
                      "gradients, Adam state, activations and kernel workspaces; "
                      "memory_ratio uses it",
            "matmul_fraction": "FLOPs of forward + backward counted by torch.utils.flop_"
                               "counter.FlopCounterMode (matmuls, convolutions, attention; "
                               "elementwise work is not counted) over an epoch's step time, "
                               "against the median rate of torch.mm on square fp32 matrices "
                               "measured just before that epoch, in the same process and "
                               "thread count; the median over timed_epochs such pairs "
                               "(matmul_fractions: each pair's)",
            "loader_overhead": "(epoch with bucket_batches -> collate and masks per batch - the "
                               "same epoch on batches made beforehand) / the first; medians of "
                               "loader.repeats alternating pairs (with 3, one epoch of about a "
                               "second moved it between 2 and 14 %); hybrid.data_seconds over "
                               "hybrid.epoch_seconds is the data path's own time alone",
            "latency": "one clip per call, cycling over 20 clips of 1.5-5 s; eager is "
                       "softmax(model(...)) under inference_mode; exported is the artifact of "
                       "trainer.export on clips pooled as trainer.prepare pools them, same threads",
            "hybrid_variants": "full mode: throughput of the hybrid with these settings "
                               "changed, measured as the throughput above",
            "projected_epoch_seconds": f"{CREMA_D_CLIPS} clips / measured clips per second: "
                                       "one training pass, validation not included"},
    })
    report["targets"] = {k: {"target": f"{op} {thr:.3g}", "value": report[k],
                             "holds": bool(report[k] >= thr if op == ">=" else report[k] <= thr),
                             "means": what} for k, (op, thr, what) in TARGETS.items()}
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["seconds"] = time.time() - t_start
    return report


def memory_ratios(hybrid: dict, lstm: dict) -> dict:
    """memory_ratio on allocated memory where it was measured (glibc), else on RSS growth."""
    rss = hybrid["training_peak_mb"] / lstm["training_peak_mb"]
    if "allocated_peak_mb" in hybrid and "allocated_peak_mb" in lstm:
        return {"memory_ratio": hybrid["allocated_peak_mb"] / lstm["allocated_peak_mb"],
                "memory_basis": "malloc in use", "memory_ratio_rss": rss}
    return {"memory_ratio": rss, "memory_basis": "RSS", "memory_ratio_rss": rss}


def table(r: dict) -> str:
    h, lm = r["hybrid"], r["lstm"]
    rows = [
        ("training throughput (clips/s)", f"{h['clips_per_second']:.2f}",
         f"{lm['clips_per_second']:.2f}", f"ratio {r['throughput_ratio']:.1f}x"),
        ("peak training memory (MB)", f"{h.get('allocated_peak_mb', 0):.0f}",
         f"{lm.get('allocated_peak_mb', 0):.0f}", f"ratio {r['memory_ratio']:.2f} "
         f"({r['memory_basis']})"),
        ("  process RSS growth (MB)", f"{h['training_peak_mb']:.0f}",
         f"{lm['training_peak_mb']:.0f}", f"ratio {r['memory_ratio_rss']:.2f}"),
        ("projected CREMA-D epoch (s)", f"{r['projected_epoch_seconds']['hybrid']:.0f}",
         f"{r['projected_epoch_seconds']['lstm']:.0f}", f"{CREMA_D_CLIPS} clips"),
        ("achieved GFLOP/s vs fp32 mm",
         f"{r['matmul_fraction'] * h['matmul']['flops_per_second'] / 1e9:.1f}", "",
         f"mm {h['matmul']['flops_per_second'] / 1e9:.1f}: {r['matmul_fraction']:.1%}"),
        ("padding efficiency", f"{r['padding']['bucketed']:.3f}", "",
         f"shuffled {r['padding']['shuffled']:.3f}"),
        ("data-pipeline overhead", f"{r['loader_overhead']:.1%}", "", "of epoch time"),
        ("1-clip latency p50/p95 (ms)",
         f"{r['latency_ms_p50']:.1f}/{r['latency_ms_p95']:.1f}", "",
         f"{r['latency']['format']} {r['latency_ms_p50_exported']:.1f}/"
         f"{r['latency_ms_p95_exported']:.1f}, diff {r['exported_max_abs_diff']:.1e}"),
    ]
    for key, v in r.get("hybrid_variants", {}).items():
        rows.append((f"  hybrid, {key.replace('_', ' ')} (clips/s)", f"{v['clips_per_second']:.2f}",
                     "", f"{v['relative_to_defaults']:.2f}x the defaults' ({v['settings']})"))
    for key, v in r.get("ddp", {}).get("variants", {}).items():  # trainer.bench.ddp
        rows.append((f"  hybrid, {r['ddp']['world']}-process DDP, {key.replace('_', ' ')}",
                     f"{v['ddp']['clips_per_second']:.2f}", "",
                     f"{v['speedup']:.2f}x 1 process x {r['ddp']['world']} threads "
                     f"({v['single']['clips_per_second']:.2f}), fastest epochs "
                     f"{v['speedup_best']:.2f}x, global batch {v['batch_global']}"))
    w = [max(len(str(x[i])) for x in rows + [("", "hybrid", "lstm", "")]) for i in range(4)]
    lines = [f"{'':{w[0]}}  {'hybrid':>{w[1]}}  {'lstm':>{w[2]}}  notes"]
    lines += [f"{a:{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows]
    held = [f"{k} {'holds' if t['holds'] else 'MISSED'}" for k, t in r["targets"].items()]
    lines.append(f"targets ({r['mode']} mode): " + ", ".join(held))
    if "extract" in r:  # trainer.bench.extract_speed
        lines.append(extract_table(r["extract"]))
    return "\n".join(lines)


def main(preset: str, out: str, seed: int = 0, threads: int = 0) -> dict:
    report = run(preset, seed, threads)
    atomic_write_text(Path(out), json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written: {out}")
    return report


if __name__ == "__main__":  # the subprocess side of ``in_subprocess``
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True, choices=("hybrid", "lstm"))
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overrides", default="{}", help="TrainConfig settings, as JSON")
    a = ap.parse_args()
    print(json.dumps(train_worker(a.worker, a.preset, a.seed, a.threads,
                                  json.loads(a.overrides))))
