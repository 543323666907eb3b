"""Enrolling many clip files holds memory flat: one clip and the running sums, whatever the count.

    python -m trainer.bench.enroll_memory                            # N = 200 and 2,000
    python -m trainer.bench.enroll_memory --counts 20,200 --out enroll-memory.json

For each N, writes N synthetic clip files (3 s each, CREMA-D names, 8 speakers; audio 100
frames/s x 40 features, video 30 frames/s x 32, about 60 KB) into a temp folder, and a small
untrained checkpoint that standardises by speaker; then enrols them all
(``trainer.enroll.enroll``) in a child process of its own, which reports:
- ``tracemalloc_peak_bytes``: the peak of Python's and numpy's allocations while enrolling
  (tracemalloc sees numpy's arrays), the figure that must not grow with N;
- ``rss_peak_bytes``: the child's peak resident set (``ru_maxrss``, its whole life: the
  interpreter and torch included, so mostly a constant).
The folder's file names are listed before the clips are read (sorted, as ``evaluate`` reads
them): that list grows with N, by about a path's length per file, and is the only thing that
should. ``flat`` holds when the largest N's tracemalloc peak is under ``FLAT_RATIO`` times the
smallest's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from trainer.batching import Normalizer
from trainer.config import TrainConfig, model_settings, prepare_settings
from trainer.data import LABELS
from trainer.enroll import enroll
from trainer.model import build_model

AUDIO, VIDEO = (100.0, 40), (30.0, 32)  # frames per second, features
SECONDS, SPEAKERS = 3.0, 8
FLAT_RATIO = 1.25


def write_clips(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` clip files named as CREMA-D names them, over ``SPEAKERS`` speakers."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arrays = {}
        for name, (fps, width) in (("audio", AUDIO), ("video", VIDEO)):
            t = int(SECONDS * fps)
            arrays[f"{name}_features"] = rng.normal(size=(t, width)).astype(np.float32)
            arrays[f"{name}_timestamps"] = ((np.arange(t) + 0.5) / fps).astype(np.float32)
        speaker, k = 1001 + i % SPEAKERS, i // SPEAKERS
        sentence = "".join(chr(65 + k // 26 ** j % 26) for j in (2, 1, 0))  # AAA, AAB, ...
        np.savez(folder / f"{speaker}_{sentence}_{LABELS[k % len(LABELS)]}_XX.npz", **arrays)


def write_checkpoint(path: Path) -> None:
    """An untrained small hybrid that standardises by speaker: enrolment reads only its
    settings (rates, widths, normalisation)."""
    cfg = TrainConfig(d_model=32, heads=2, norm="speaker")
    settings = model_settings(cfg, AUDIO[1], VIDEO[1], len(LABELS))
    norm = Normalizer(*(np.zeros(w, np.float32) if k == 0 else np.ones(w, np.float32)
                        for w in (AUDIO[1], VIDEO[1]) for k in (0, 1)))
    torch.save({"model": build_model("hybrid", **settings).state_dict(), "model_name": "hybrid",
                "model_settings": settings, "normalizer": norm.state_dict(),
                "labels": list(LABELS), "prepare": prepare_settings(cfg)}, path)


def child(folder: str, checkpoint: str, out: str) -> dict:
    """Enrol ``folder`` here, measured; the child process's side."""
    tracemalloc.start()
    t0 = time.perf_counter()
    got = enroll(checkpoint, [folder], out)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"clips": sum(got["speakers"].values()), "speakers": len(got["speakers"]),
            "seconds": round(seconds, 2), "tracemalloc_peak_bytes": peak,
            "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run(counts: list[int]) -> dict:
    """Each N's figures and whether the peak stays flat."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="enroll-memory-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        write_checkpoint(ckpt)
        for n in counts:
            folder = Path(tmp) / f"clips-{n}"
            write_clips(folder, n)
            proc = subprocess.run([sys.executable, "-m", "trainer.bench.enroll_memory", "--child",
                                   str(folder), "--checkpoint", str(ckpt), "--out",
                                   str(Path(tmp) / f"speakers-{n}.npz")],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"enrolling {n} clips failed: {proc.stderr[-500:]}")
            rows.append(dict(json.loads(proc.stdout.splitlines()[-1]), n=n))
    small, big = (r["tracemalloc_peak_bytes"] for r in (rows[0], rows[-1]))
    return {"runs": rows, "flat_ratio": FLAT_RATIO, "peak_ratio": round(big / small, 3),
            "flat": big < FLAT_RATIO * small,
            "bytes_per_file": round((big - small) / max(rows[-1]["n"] - rows[0]["n"], 1), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench.enroll_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="200,2000", help="clip counts, smallest first "
                   "(default: 200,2000)")
    p.add_argument("--out", metavar="FILE", help="also write the report as JSON here "
                   "(default: print only)")
    p.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)  # one measured enrolment
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.out)))
        return 0
    report = run(sorted(int(n) for n in args.counts.split(",")))
    for r in report["runs"]:
        print(f"N={r['n']:>6}: tracemalloc peak {r['tracemalloc_peak_bytes'] / 1e6:7.2f} MB, "
              f"peak RSS {r['rss_peak_bytes'] / 1e6:7.1f} MB, {r['seconds']:.1f} s")
    print(f"peak ratio {report['peak_ratio']} (flat: under {FLAT_RATIO}): "
          f"{'flat' if report['flat'] else 'GROWS'}; {report['bytes_per_file']} bytes per file")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
