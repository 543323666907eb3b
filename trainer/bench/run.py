"""Performance benchmark: the hybrid model against the LSTM baseline, on this machine, in one run.

    python -m trainer bench                      # full mode: docs/performance.md's figures (minutes)
    python -m trainer bench --quick              # about a minute, for CI
    python -m trainer bench --out bench.json     # where the JSON goes (written atomically)
    python -m trainer bench --quick --instructions  # also instructions per step (callgrind, slow)

The workload is synthetic and shaped like CREMA-D features: clips of 1.5 to 5 s, audio at 100
frames/s of 88 features, video at 30 frames/s of 512 features, batches of 24 built as train.py
builds them (bucket_batches -> collate). Each model trains in its own process
(trainer.bench.worker), so its peak memory is its own; both stay alive and measure in turn
(hybrid epoch, lstm epoch, hybrid epoch...), so a drift of this shared machine hits both sides
of a ratio. Measured: training throughput and its ratio, peak training memory and its ratio,
the hybrid's FLOP rate (torch.utils.flop_counter) against this machine's fp32 torch.mm rate,
where a step's time goes (trainer.bench.breakdown), padding efficiency of bucketed against
shuffled batches, data-pipeline overhead (real data path against batches collated beforehand),
single-clip inference latency of the eager and the exported model (trainer.bench.latency), the
projected epoch time for a CREMA-D-sized data set, (full mode) a 2-process gloo DDP epoch
against a 1-process one (trainer.bench.ddp), and extraction speed in media seconds per wall
second (trainer.bench.extract_speed).

Every figure is the median of its repeats, kept with them and their spread; each target is
judged on the whole spread (trainer.bench.verdict: holds, misses, unsure, invalid), and each
figure says how loaded the machine was while it was taken (trainer.bench.load). Speed is read
from the figures; nothing here asserts it, and no verdict fails the command.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from trainer.batching import bucket_batches, padding_efficiency
from trainer.bench.breakdown import table as breakdown_table
from trainer.bench.ddp import measure as ddp_measure
from trainer.bench.extract_speed import measure as extract_measure
from trainer.bench.extract_speed import table as extract_table
from trainer.bench.instructions import measure as instructions_measure
from trainer.bench.instructions import table as instructions_table
from trainer.bench.latency import latency
from trainer.bench.load import THRESHOLD_CORES, Window, combine, describe
from trainer.bench.measure import machine
from trainer.bench.tracking_cost import tracking_cost
from trainer.bench.verdict import LEVEL, TARGETS, fmt, judge, ratios, spread
from trainer.bench.worker import Remote, epoch_of
from trainer.bench.workload import AUDIO_FPS, CREMA_D_CLIPS, PRESETS, VARIANTS, durations
from trainer.store.files import atomic_write_text

MIN_WINDOW_S = 1.0  # /proc/stat counts 10 ms ticks: over a second, a few hundredths of a core


def padding(seed: int, batch_size: int, epochs: int = 5) -> dict:
    """Padding efficiency over a CREMA-D-sized list of lengths, each epoch's and their mean."""
    lengths = (durations(CREMA_D_CLIPS, seed) * AUDIO_FPS).astype(int).tolist()
    per = {kind: [padding_efficiency(bucket_batches(lengths, batch_size, seed, e,
                                                    bucket=kind == "bucketed"), lengths)
                  for e in range(epochs)] for kind in ("bucketed", "shuffled")}
    return dict({k: float(np.mean(v)) for k, v in per.items()}, bucketed_epochs=per["bucketed"],
                clips=CREMA_D_CLIPS, batch_size=batch_size, epochs=epochs)


def section(fn, *args) -> dict:
    """``fn(*args)``'s report with the machine's load while it ran (``load``)."""
    window = Window()
    out = fn(*args)
    return dict(out, load=window.stop())


def training(preset: str, seed: int, threads: int) -> dict:
    """The hybrid and the lstm (and, in full mode, the hybrid's variants), each in its own
    worker process, measured in turn: every answer of every round, and each worker's last."""
    p = PRESETS[preset]
    names = {"hybrid": {}, "lstm": {}}
    if preset == "full":
        names.update(VARIANTS)
    workers = {}
    try:
        for key, overrides in names.items():
            workers[key] = Remote("hybrid" if key in VARIANTS else key, preset, seed, threads,
                                  overrides)
        pair = [workers["hybrid"], workers["lstm"]]
        n = {k: w.ask("batches")["n"] for k, w in workers.items()}
        out = {"epochs": [interleaved_epoch(workers, n) for _ in range(p["rounds"])],
               "memory": [{w.name: w.ask("memory") for w in pair}
                          for _ in range(p["memory_rounds"])],
               "loader": [workers["hybrid"].ask(f"loader {i}")
                          for i in range(p["loader_repeats"])],
               "matmul": [workers["hybrid"].ask("matmul") for _ in range(p["mm_pairs"])],
               "profile": workers["hybrid"].ask("profile")}
        out["done"] = {k: w.finish() for k, w in workers.items()}
        return out
    finally:
        for w in workers.values():
            w.close()


def interleaved_epoch(workers: dict, n: dict) -> dict:
    """One epoch of each worker, batch by batch in turn (hybrid batch 0, lstm batch 0, ...,
    hybrid batch 1, ...): each model's epoch then spans the same half-minute of this machine,
    so a change of its speed within it hits both sides of a ratio. Epochs in turn did not:
    the hybrid's took 1.5 s of the lstm's 30, and the ratio's rounds spread 16.3 to 23.9 where
    batches in turn spread 18.3 to 21.2 (6 rounds of each, the same processes, alternating).
    ``n``: each worker's batches per epoch."""
    answers: dict = {k: [] for k in workers}
    for b in range(max(n.values())):
        for k, w in workers.items():
            if b < n[k]:
                answers[k].append(w.ask(f"batch {b}"))
    return {k: dict(epoch_of(a), load=combine([x["load"] for x in a]))
            for k, a in answers.items()}


def figures(t: dict, lat: dict, pad: dict, extract: dict | None) -> dict:
    """Each figure's spread over its repeats and the load over all of its windows (or, when
    these add up to less than MIN_WINDOW_S, too short for /proc's clock ticks, over the
    whole section that took them)."""
    ep, mem = t["epochs"], t["memory"]

    def of(rounds, keys, value):
        return {k: [r[k][value] for r in rounds] for k in keys}

    def loads(rounds, keys=None):
        return combine([r[k]["load"] for r in rounds for k in (keys or r)])

    cps = of(ep, ep[0], "clips_per_second")
    figs = {f"{k}_clips_per_second": dict(spread(cps[k]), load=loads(ep, [k]))
            for k in ("hybrid", "lstm")}
    figs["throughput_ratio"] = dict(spread(ratios(cps["hybrid"], cps["lstm"])),
                                    load=loads(ep, ["hybrid", "lstm"]))
    for key in VARIANTS:
        if key in cps:
            figs[f"relative_{key}"] = dict(spread(ratios(cps[key], cps["hybrid"])),
                                           load=loads(ep, [key, "hybrid"]))
    alloc = of(mem, ("hybrid", "lstm"), "allocated_peak_mb")
    if None in alloc["hybrid"] + alloc["lstm"]:  # not glibc: the RSS growth, one reading each
        d = t["done"]
        figs["memory_ratio"] = dict(spread([d["hybrid"]["training_peak_mb"]
                                            / d["lstm"]["training_peak_mb"]]), basis="RSS")
    else:
        figs["memory_ratio"] = dict(spread(ratios(alloc["hybrid"], alloc["lstm"])),
                                    basis="malloc in use", load=loads(mem))
        for k in ("hybrid", "lstm"):
            figs[f"{k}_allocated_peak_mb"] = dict(spread(alloc[k]), load=loads(mem, [k]))
    figs["matmul_fraction"] = dict(spread([m["fraction"] for m in t["matmul"]]),
                                   load=combine([m["load"] for m in t["matmul"]]))
    figs["loader_overhead"] = dict(spread([x["share"] for x in t["loader"]]),
                                   load=combine([x["load"] for x in t["loader"]]))
    figs["loader_overhead_ab"] = dict(spread([x["overhead"] for x in t["loader"]]),
                                      load=combine([x["load"] for x in t["loader"]]))
    figs["padding_efficiency"] = dict(spread(pad["bucketed_epochs"]), load={})  # not timed
    for key, model in (("latency_ms_p50", "eager"), ("latency_ms_p50_exported", "exported"),
                       ("latency_ms_p50_exported_all_threads", "exported_all_threads")):
        figs[key] = dict(spread(lat[model]["p50_ms_blocks"]), load=lat[model]["load"])
    runs = [r for r in (extract or {}).get("runs", [])
            if r["video"] == "mediapipe" and r["workers"] == 2
            and r["steady_media_seconds_per_second"] is not None]
    figs["extract_speed"] = dict(spread([r["steady_media_seconds_per_second"] for r in runs]),
                                 load=(extract or {}).get("load", {}))
    sections = {"latency": lat.get("load", {}), "extract": (extract or {}).get("load", {})}
    for key, f in figs.items():
        load = f.get("load") or {}
        if load and load["seconds"] < MIN_WINDOW_S:
            f["load"] = dict(sections.get(key.split("_")[0], t.get("load", {})),
                             basis=f"the whole section: its own windows, {load['seconds']:.2f} s"
                                   f" in all, are too short to read")
        f["under_load"] = bool(f.get("load", {}).get("under_load"))
    return figs


def run(preset: str = "full", seed: int = 0, threads: int = 0,
        instructions: bool = False) -> dict:
    """Every measurement; the dict written to bench.json."""
    threads = threads or os.cpu_count() or 1
    t_start, whole = time.time(), Window()
    report: dict = {"mode": preset, "machine": machine(threads), "workload": {
        "shape": "CREMA-D-like: clips 1.5-5 s; audio 100 frames/s x 88; video 30 frames/s x 512",
        "clips": PRESETS[preset]["clips"], "batch_size": PRESETS[preset]["batch_size"],
        "seed": seed}}
    t = section(training, preset, seed, threads)
    lat = section(latency, preset, seed, threads)
    pad = padding(seed, 24)
    if preset == "full":  # 1 process of 2 threads against 2 gloo DDP processes; its five
        # processes would add more than --quick's CI budget allows, for figures of 8 clips
        report["ddp"] = section(ddp_measure, preset, seed)
    if preset in ("full", "quick"):  # extraction speed; quick: about 10 s
        report["extract"] = section(extract_measure, preset, seed)
    track = section(tracking_cost, preset, seed, threads)
    report["tracking"] = dict(track["tracking"], load=track["load"])
    if instructions:  # optional: minutes under valgrind
        report["instructions"] = instructions_measure(preset, seed)
    figs = figures(t, lat, pad, report.get("extract"))
    figs["tracking_overhead"] = dict(track["tracking"]["fraction"], load=track["load"],
                                     under_load=bool(track["load"].get("under_load")))
    d = t["done"]
    hybrid = dict(d["hybrid"], clips_per_second=figs["hybrid_clips_per_second"]["median"],
                  epochs=[r["hybrid"] for r in t["epochs"]], matmul=t["matmul"],
                  loader=t["loader"])
    lstm = dict(d["lstm"], clips_per_second=figs["lstm_clips_per_second"]["median"],
                epochs=[r["lstm"] for r in t["epochs"]])
    for m, name in ((hybrid, "hybrid"), (lstm, "lstm")):
        if f"{name}_allocated_peak_mb" in figs:
            m["allocated_peak_mb"] = figs[f"{name}_allocated_peak_mb"]["median"]
    report.update({key: f["median"] for key, f in figs.items()
                   if key in TARGETS or key == "latency_ms_p50"})
    report.update({
        "memory_basis": figs["memory_ratio"]["basis"],
        "memory_ratio_rss": d["hybrid"]["training_peak_mb"] / d["lstm"]["training_peak_mb"],
        "latency_ms_p95": lat["eager"]["p95_ms"],
        "latency_ms_p95_exported": lat["exported"]["p95_ms"],
        "exported_max_abs_diff": lat["max_abs_diff"],
        "projected_epoch_seconds": {m: CREMA_D_CLIPS / r["clips_per_second"]
                                    for m, r in (("hybrid", hybrid), ("lstm", lstm))},
        "figures": figs, "breakdown": t["profile"],
        "hybrid": hybrid, "lstm": lstm, "latency": lat, "padding": pad,
        "hybrid_variants": {k: {"settings": VARIANTS[k],
                                "relative_to_defaults": figs[f"relative_{k}"]["median"],
                                "clips_per_second": float(np.median(
                                    [r[k]["clips_per_second"] for r in t["epochs"]]))}
                            for k in VARIANTS if f"relative_{k}" in figs},
        "method": METHOD,
    })
    report["targets"] = {k: judge(figs[k], k, figs[k].get("load")) for k in TARGETS}
    report["load"] = dict(whole.stop(), threshold_cores=THRESHOLD_CORES,
                          figures_under_load=sorted(k for k, f in figs.items()
                                                    if f["under_load"]))
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["seconds"] = time.time() - t_start
    return report


METHOD = {
    "spread": "each figure in figures: its repeats, their min, median and max, and low to "
              "high: the narrowest pair of order statistics that holds the median with at "
              f"least {LEVEL:.0%} confidence whatever the distribution (coverage: its own; "
              "min to max under 5 repeats, with its lower coverage); the top-level figure is "
              "the median. Targets (targets): holds when low to high is on the right side of "
              "the threshold, misses when it is on the wrong side, unsure otherwise or with "
              "fewer than 3 repeats, invalid when the median is a value the quantity cannot "
              "take (a fraction outside [0, 1], a ratio <= 0); a spread with some impossible "
              "repeats is at best unsure",
    "load": "per figure, summed over its repeats' windows: CPU seconds other processes took "
            "(/proc/stat busy time minus the measuring process's own) and steal, per wall "
            "second; under_load when either exceeds threshold_cores (load.threshold_cores)",
    "throughput": "clips / seconds of one epoch over the workload (collate and the training "
                  "masks + forward + backward + clip + AdamW step), after an untimed first "
                  "pass; each round times one epoch of each model, batch by batch in turn "
                  "(hybrid, lstm, and in full mode the variants, on batch 0, then batch 1...), "
                  "the ratio is taken per round",
    "memory": "peak of malloc's in-use bytes (glibc mallinfo2, sampled every 0.5 ms, less "
              "often when the sampler's wake-ups come late) over memory_steps identical steps on "
              "the largest batch, minus the same before the model was built (after one step of "
              "a one-weight model, which imports what every step imports): weights, "
              "gradients, Adam state, activations and kernel workspaces; each round reads "
              "hybrid then lstm, the ratio per round. memory_ratio_rss: ru_maxrss at the end "
              "minus the RSS before the model, one reading per process (it also holds library "
              "code pages and allocator slack)",
    "matmul_fraction": "FLOPs of forward + backward (torch.utils.flop_counter: matmuls, "
                       "convolutions, attention) over an epoch's step time, against the "
                       "median rate of torch.mm on square fp32 matrices measured just before "
                       "that epoch; one repeat per (mm, epoch) pair",
    "loader_overhead": "seconds in the data path (bucket_batches -> collate and masks per "
                       "batch, timed around each call) over the epoch's seconds, one repeat "
                       "per loader pair; train.py loads between steps in its one thread, so "
                       "this is the time the epoch waits for data",
    "loader_overhead_ab": "(the same epoch with the data path - on batches made beforehand) / "
                          "the first, the pair's order alternating: also counts the data "
                          "path's effect on the steps, within the noise of two epochs",
    "breakdown": "torch.profiler over one step per batch, each operator's own time by kind "
                 "(trainer.bench.breakdown)",
    "latency": "trainer.bench.latency: one clip per call on one thread, blocks of eager and "
               "exported in turn (and the exported on all threads, for comparison); each "
               "block's median is a repeat",
    "extract_speed": "extract.runs' steady rate of mediapipe (the default) on 2 workers "
                     "(full mode; one run: one reading)",
    "projected_epoch_seconds": f"{CREMA_D_CLIPS} clips / the median clips per second: one "
                               "training pass, validation not included",
}


def table(r: dict) -> str:
    f, h, lm = r["figures"], r["hybrid"], r["lstm"]
    star = {k: " *" if v["under_load"] else "" for k, v in f.items()}
    mm = float(np.median([m["mm_flops_per_second"] for m in h["matmul"]]))
    rows = [
        ("training throughput (clips/s)", fmt(f["hybrid_clips_per_second"]),
         fmt(f["lstm_clips_per_second"]), f"ratio {fmt(f['throughput_ratio'], '.1f')}"
         + star["throughput_ratio"]),
        ("peak training memory (MB)", f"{h.get('allocated_peak_mb') or 0:.0f}",
         f"{lm.get('allocated_peak_mb') or 0:.0f}",
         f"ratio {fmt(f['memory_ratio'], '.3f')} ({r['memory_basis']})" + star["memory_ratio"]),
        ("  process RSS growth (MB)", f"{h['training_peak_mb']:.0f}",
         f"{lm['training_peak_mb']:.0f}", f"ratio {r['memory_ratio_rss']:.2f}"),
        ("projected CREMA-D epoch (s)", f"{r['projected_epoch_seconds']['hybrid']:.0f}",
         f"{r['projected_epoch_seconds']['lstm']:.0f}", f"{CREMA_D_CLIPS} clips"),
        ("FLOP rate / fp32 mm rate", fmt(f["matmul_fraction"], ".0%"), "",
         f"mm {mm / 1e9:.1f} GFLOP/s" + star["matmul_fraction"]),
        ("padding efficiency", f"{r['padding']['bucketed']:.3f}", "",
         f"shuffled {r['padding']['shuffled']:.3f}"),
        ("data-pipeline overhead", fmt(f["loader_overhead"], ".1%"), "",
         "of epoch time" + star["loader_overhead"]),
        ("  as epoch A/B (with - without)", fmt(f["loader_overhead_ab"], ".1%"), "",
         "cross-check" + star["loader_overhead_ab"]),
        ("1-clip latency p50 (ms), eager", fmt(f["latency_ms_p50"], ".2f"), "",
         star["latency_ms_p50"].strip()),
        (f"  exported ({r['latency']['format']})", fmt(f["latency_ms_p50_exported"], ".2f"), "",
         f"p95 {r['latency_ms_p95_exported']:.2f}, diff {r['exported_max_abs_diff']:.1e}"
         + star["latency_ms_p50_exported"]),
        (f"  exported, {r['latency']['all_threads']} threads",
         fmt(f["latency_ms_p50_exported_all_threads"], ".2f"), "", "for comparison"
         + star["latency_ms_p50_exported_all_threads"]),
        ("TensorBoard writer / epoch", fmt(f["tracking_overhead"], ".2%"), "",
         f"the epoch-end call, {r['tracking']['pairs']} pairs" + star["tracking_overhead"]),
    ]
    for key, v in r.get("hybrid_variants", {}).items():
        rows.append((f"  hybrid, {key.replace('_', ' ')} (clips/s)", f"{v['clips_per_second']:.2f}",
                     "", f"{fmt(f['relative_' + key])}x the defaults' ({v['settings']})"))
    for key, v in r.get("ddp", {}).get("variants", {}).items():  # trainer.bench.ddp
        rows.append((f"  hybrid, {r['ddp']['world']}-process DDP, {key.replace('_', ' ')}",
                     f"{v['ddp']['clips_per_second']:.2f}", "",
                     f"{v['speedup']:.2f}x 1 process x {r['ddp']['world']} threads "
                     f"({v['single']['clips_per_second']:.2f}), fastest epochs "
                     f"{v['speedup_best']:.2f}x, global batch {v['batch_global']}"))
    w = [max(len(str(x[i])) for x in rows + [("", "hybrid", "lstm", "")]) for i in range(4)]
    lines = [f"{'':{w[0]}}  {'hybrid':>{w[1]}}  {'lstm':>{w[2]}}  notes (median (low to high: "
             f"the verdict's interval, n))"]
    lines += [f"{a:{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows]
    lines.append(breakdown_table(r["breakdown"]))
    if "extract" in r:  # trainer.bench.extract_speed
        lines.append(extract_table(r["extract"]))
    if "instructions" in r:  # trainer.bench.instructions
        lines.append(instructions_table(r["instructions"]))
    lines.append(f"machine load during the bench: {describe(r['load'])}; * = figure taken "
                 f"under load (others or steal > {r['load']['threshold_cores']:g} cores): "
                 "not a result")
    lines.append(f"targets ({r['mode']} mode):")
    for k, t in r["targets"].items():
        val = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        lo, hi = (None if x is None else format(x, ".4g") for x in (t["low"], t["high"]))
        lines.append(f"  {k:25} {t['target']:>8}  {t['verdict'].upper():12} {val:>8} "
                     f"[{lo} to {hi}, n={t['n']}]  {t['reason']}")
    return "\n".join(lines)


def main(preset: str, out: str, seed: int = 0, threads: int = 0,
         instructions: bool = False) -> dict:
    report = run(preset, seed, threads, instructions)
    atomic_write_text(Path(out), json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="python -m trainer bench, without the CLI")
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--instructions", action="store_true")
    a = ap.parse_args()
    main(a.preset, a.out, instructions=a.instructions)
