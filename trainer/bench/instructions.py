"""Instructions per training step, hybrid and lstm: work counted, where time is too noisy.

    python -m trainer bench --quick --instructions      # the bench with this section
    python -m trainer.bench.instructions --preset smoke # this section alone

On a shared machine a step's time moves with the neighbours; the number of instructions it
executes does not. Two counters can give it:

- ``perf stat -e instructions,cycles`` reads the CPU's counters. Many virtual machines expose
  none (perf then says ``<not supported>``), and ``kernel.perf_event_paranoid`` above 2 refuses
  them to users: ``probe_perf`` says which, and the section records it.
- valgrind's callgrind runs the program on a simulated CPU and counts every instruction
  (``Ir``). It is 50 to 100 times slower, so it counts only a few steps: the process starts
  with instrumentation off (imports and setup run at a few times native speed), warms up with
  two steps, then switches counting on around each counted step through callgrind's client
  requests (callgrind.h, compiled here into a small library with the C compiler) and dumps the
  count after each. One torch thread: the count does not depend on how threads share work.

The counts are valgrind's simulated CPU's: it exposes no AVX-512, so oneDNN's kernels take
their AVX2 path (this machine's EPYC has no AVX-512 either). A count says what a change saves
in work; whether that work is what bounds the time (memory, dispatch) is for the timed figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from trainer.batching import bucket_batches
from trainer.bench.verdict import spread
from trainer.bench.workload import PRESETS, build, loader, pooled, training_step, workload
from trainer.config import TrainConfig

STEPS = 3  # counted steps per model, each one repeat
CLIENT = r"""
#include <valgrind/valgrind.h>
#include <valgrind/callgrind.h>
int on_valgrind(void) { return RUNNING_ON_VALGRIND; }
void count_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void dump(const char *s) { CALLGRIND_DUMP_STATS_AT(s); }
void count_off(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""
TIMEOUT_S = 3600


def probe_perf() -> dict:
    """Whether ``perf stat`` can count instructions here, and if not, why."""
    out = {"perf": shutil.which("perf")}
    try:
        out["perf_event_paranoid"] = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        out["perf_event_paranoid"] = None
    if not out["perf"]:
        return dict(out, usable=False, why="perf is not installed (Debian: linux-perf)")
    r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions,cycles", "true"],
                       capture_output=True, text=True, check=False)
    if "<not supported>" in r.stderr or r.returncode != 0:
        why = ("the kernel exposes no hardware counters to this (virtual) machine: perf stat "
               "says <not supported>" if "<not supported>" in r.stderr
               else f"perf stat failed: {r.stderr.strip()[-200:]}")
        return dict(out, usable=False, why=why)
    return dict(out, usable=True, why="")


def build_client(folder: Path) -> Path | None:
    """callgrind's client requests as a small shared library, or None without a compiler or
    valgrind's headers."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or not Path("/usr/include/valgrind/callgrind.h").exists():
        return None
    src, lib = folder / "client.c", folder / "client.so"
    src.write_text(CLIENT)
    r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)],
                       capture_output=True, check=False)
    return lib if r.returncode == 0 else None


def count_worker(name: str, preset: str, seed: int, lib: str) -> None:
    """Under callgrind: set up, warm up, then one counted, dumped step at a time."""
    client = ctypes.CDLL(lib)
    if not client.on_valgrind():
        raise SystemExit("count_worker runs under valgrind --tool=callgrind")
    p = PRESETS[preset]
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = TrainConfig(model=name)
    clips = pooled(name, workload(p["clips"], seed, p.get("short", False)))
    batches = bucket_batches([c.audio.shape[0] for c in clips], p["batch_size"], seed, 0)
    idx = batches[len(batches) // 2]  # a batch of middling length, the same every step
    batch = loader(clips, cfg, seed)(idx, 0)
    step = training_step(build(name).train(), cfg)
    step(batch)
    step(batch)
    for i in range(STEPS):
        client.count_on()
        step(batch)
        client.dump(f"step {i}".encode())
        client.count_off()
    print(json.dumps({"clips": len(idx), "frames": int(batch["audio"].shape[1])}), flush=True)


def callgrind(name: str, preset: str, seed: int, lib: Path, folder: Path) -> dict:
    out_file = folder / f"{name}.callgrind"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
           f"--callgrind-out-file={out_file}", sys.executable, "-m",
           "trainer.bench.instructions", "--worker", name, "--preset", preset,
           "--seed", str(seed), "--lib", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"callgrind of {name} failed: {r.stderr.strip()[-400:]}")
    counts = []
    for f in sorted(folder.glob(f"{name}.callgrind.*"), key=lambda f: int(f.suffix[1:])):
        for line in f.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                counts.append(int(line.split()[1]))
                break
    return dict(json.loads(r.stdout.strip().splitlines()[-1]), instructions_per_step=spread(counts))


def measure(preset: str = "quick", seed: int = 0) -> dict:
    """Instructions per training step of each model (callgrind), or why it could not count."""
    out = {"perf": probe_perf(), "steps": STEPS, "batch_size": PRESETS[preset]["batch_size"]}
    if not shutil.which("valgrind"):
        return dict(out, counter=None, why="neither perf counters nor valgrind (Debian: "
                    "valgrind) here; bench.json's hybrid.flops counts the matmul work instead")
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        lib = build_client(Path(tmp))
        if lib is None:
            return dict(out, counter=None, why="no C compiler or valgrind headers to build "
                        "callgrind's client requests")
        out.update(counter="callgrind", models={
            name: callgrind(name, preset, seed, lib, Path(tmp)) for name in ("hybrid", "lstm")})
    h, lm = (out["models"][m]["instructions_per_step"]["median"] for m in ("hybrid", "lstm"))
    out["lstm_over_hybrid"] = lm / h if h else None
    return out


def table(r: dict) -> str:
    if r.get("counter") != "callgrind":
        return f"instructions per step: not counted ({r.get('why')}; perf: {r['perf']['why']})"
    parts = [f"{m} {v['instructions_per_step']['median'] / 1e9:.3f} G (spread "
             f"{v['instructions_per_step']['min'] / 1e9:.3f} to "
             f"{v['instructions_per_step']['max'] / 1e9:.3f}, n={v['instructions_per_step']['n']}"
             f", batch of {v['clips']})" for m, v in r["models"].items()]
    return ("instructions per training step (callgrind, 1 thread): " + "; ".join(parts)
            + f"; lstm/hybrid {r['lstm_over_hybrid']:.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=("hybrid", "lstm"))
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lib", help="the client-request library (--worker)")
    a = ap.parse_args()
    if a.worker:
        count_worker(a.worker, a.preset, a.seed, a.lib)
    else:
        rep = measure(a.preset, a.seed)
        print(json.dumps(rep, indent=2))
        print(table(rep))
