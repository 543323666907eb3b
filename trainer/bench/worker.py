"""One model training on the bench's workload in its own process, measuring on command, so that
the bench can run two (or more) side by side in turn: hybrid epoch, lstm epoch, hybrid epoch...
A drift of this shared machine's speed then hits both sides of a ratio alike.

    python -m trainer.bench.worker --model hybrid --preset quick    # then commands on stdin

The process sets up (a one-weight warm-up step, the memory baseline, the model, one untimed pass
over the batches, since oneDNN builds its kernels per shape the first time), says
``{"ready": ...}``, then answers each command line with one JSON line, each with the machine's
``load`` (trainer.bench.load) over the measurement:

- ``epoch``: one timed epoch through train.py's data path (seconds in the data path and steps);
- ``batches``, ``batch B``: how many batches an epoch has, and batch B of it alone, timed the
  same way: the bench takes the models' epochs batch by batch in turn (``trainer.bench.run``);
- ``memory``: peak of malloc's in-use bytes over a few identical steps on the batch with the
  most padded frames (the sampler can miss a peak that lasts under a millisecond: one quiet
  full run read 86 MB once where eight other readings were 94-99, so each reading is the
  peak over several steps, and the rounds' spread shows a miss that is left);
- ``loader N``: the epoch once with the real data path and once on batches made beforehand,
  in the order N's parity says (hybrid);
- ``matmul``: this machine's fp32 mm rate, then an epoch: the step's FLOP rate as a fraction of
  it (hybrid; FLOPs counted once, by torch.utils.flop_counter);
- ``profile``: where a step's time goes (trainer.bench.breakdown);
- ``done``: the last line (peak RSS, parameters), then the process exits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from trainer.batching import bucket_batches, collate
from trainer.bench.breakdown import profile_steps
from trainer.bench.load import Window
from trainer.bench.measure import (HeapPeak, count_flops, matmul_rate, mm_buffers, peak_rss_mb,
                                   rss_mb)
from trainer.bench.workload import PRESETS, Tiny, build, loader, pooled, training_step, workload
from trainer.config import TrainConfig

WORKER_TIMEOUT_S = 1800  # a worker that never answers fails the bench, never hangs it


def epoch_of(batches: list[dict]) -> dict:
    """One epoch's figures from its batches' answers (``Worker.batch``)."""
    data_s = sum(b["data_seconds"] for b in batches)
    step_s = sum(b["step_seconds"] for b in batches)
    return {"seconds": data_s + step_s, "data_seconds": data_s, "step_seconds": step_s,
            "clips_per_second": sum(b["clips"] for b in batches) / (data_s + step_s)}


class Worker:
    """The state of one model's training: its clips, batches, data path and step."""

    def __init__(self, name: str, preset: str, seed: int, threads: int, overrides: dict):
        self.p = p = PRESETS[preset]
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        cfg = TrainConfig(model=name, **overrides)
        self.clips = pooled(name, workload(p["clips"], seed, p.get("short", False)), **overrides)
        self.lengths = [c.audio.shape[0] for c in self.clips]
        self.batches = bucket_batches(self.lengths, p["batch_size"], seed, 0)
        self.load = loader(self.clips, cfg, seed)
        # One step of a one-weight model first: it imports what every training step imports
        # (the optimiser alone brings 22 MB of Python modules), the same for both models.
        training_step(Tiny(), cfg)(collate(self.clips[:2]))
        self.rss_before = rss_mb()  # interpreter, torch, those modules and the clips
        try:
            self.heap = HeapPeak()
            self.heap_before = self.heap.in_use()
        except (OSError, AttributeError):  # not glibc: the RSS figure alone
            self.heap = None
        self.model = build(name, **overrides).train()
        self.step = training_step(self.model, cfg)
        self.name, self.flops, self.mm = name, None, None
        t0 = time.perf_counter()
        self.epoch()  # untimed: each batch shape met for the first time
        self.first_pass_seconds = time.perf_counter() - t0

    def batch(self, b: int) -> dict:
        """train.py's work on batch ``b`` of the epoch: its clips, seconds in the data path and
        in the step."""
        idx = self.batches[b]
        t0 = time.perf_counter()
        batch = self.load(idx, b)
        t1 = time.perf_counter()
        self.step(batch)
        return {"clips": len(idx), "data_seconds": t1 - t0,
                "step_seconds": time.perf_counter() - t1}

    def epoch(self) -> dict:
        """train.py's loop over the batches: seconds in the data path and in the steps."""
        return epoch_of([self.batch(b) for b in range(len(self.batches))])

    def memory(self) -> dict:
        if self.heap is None:
            return {"allocated_peak_mb": None}
        largest = max(self.batches, key=lambda b: len(b) * max(self.lengths[i] for i in b))
        batch = collate([self.clips[i] for i in largest])
        with self.heap:  # steps after the first pass allocate alike: their peaks are one peak
            for _ in range(self.p["memory_steps"]):
                self.step(batch)
        return {"allocated_peak_mb": (self.heap.peak - self.heap_before) / 2**20}

    def loader_pair(self, n: int) -> dict:
        """The same epoch with the real data path and on batches made beforehand, in turn."""
        ready = [self.load(idx, b) for b, idx in enumerate(self.batches)]
        out, data_s = {}, 0.0
        for kind in (("real", "pre") if n % 2 == 0 else ("pre", "real")):
            t0 = time.perf_counter()
            for i, (b, idx) in enumerate(zip(ready, self.batches)):
                if kind == "real":
                    t1 = time.perf_counter()
                    b = self.load(idx, i)
                    data_s += time.perf_counter() - t1
                self.step(b)
            out[kind] = time.perf_counter() - t0
        # train.py loads in its own thread between steps: the time in the data path is what
        # the epoch waits for it (``share``); the difference of the two epochs also holds any
        # effect of the data path on the steps (caches), but the noise of two whole epochs
        return {"real_seconds": out["real"], "precollated_seconds": out["pre"],
                "data_seconds": data_s, "share": data_s / out["real"],
                "overhead": (out["real"] - out["pre"]) / out["real"]}

    def matmul(self) -> dict:
        """The fp32 mm rate, then an epoch's FLOP rate as a fraction of it: the pair is taken
        back to back because this machine's speed drifts by 10 % over minutes."""
        if self.flops is None:  # allocates for itself: after the memory readings
            self.flops = count_flops(self.model, [collate([self.clips[i] for i in b])
                                                  for b in self.batches])
            self.mm = mm_buffers(self.p["mm"])  # kept: nothing to fault in again each time
        mm = matmul_rate(self.p["mm"], self.p["mm_repeats"], self.mm)
        step_s = self.epoch()["step_seconds"]
        return {"flops": self.flops, "flops_per_second": self.flops / step_s,
                "mm_flops_per_second": mm["flops_per_second"], "mm_size": mm["size"],
                "fraction": self.flops / step_s / mm["flops_per_second"]}

    def profile(self) -> dict:
        return profile_steps(self.step, [self.load(idx, b) for b, idx in enumerate(self.batches)])

    def done(self) -> dict:
        peak = peak_rss_mb()
        return {"clips": len(self.clips), "batches": len(self.batches),
                "batch_size": self.p["batch_size"],
                "clips_per_second_first_pass": len(self.clips) / self.first_pass_seconds,
                "rss_before_training_mb": self.rss_before, "peak_rss_mb": peak,
                "training_peak_mb": peak - self.rss_before, "flops": self.flops,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def serve(name: str, preset: str, seed: int, threads: int, overrides: dict) -> None:
    w = Worker(name, preset, seed, threads, overrides)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "done":
            print(json.dumps(w.done()), flush=True)
            return
        window = Window()
        out = {"epoch": w.epoch, "memory": w.memory, "matmul": w.matmul, "profile": w.profile,
               "loader": lambda: w.loader_pair(int(arg[0])),
               "batch": lambda: w.batch(int(arg[0])), "batches": lambda: {"n": len(w.batches)}
               }[cmd]()
        print(json.dumps(dict(out, load=window.stop())), flush=True)


class Remote:
    """The parent's handle on a worker process: ``ask("epoch")`` returns its answer."""

    def __init__(self, name: str, preset: str, seed: int, threads: int,
                 overrides: dict | None = None):
        self.name = name
        self.err = tempfile.TemporaryFile("w+")  # a file: a full pipe would stall the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.bench.worker", "--model", name, "--preset", preset,
             "--seed", str(seed), "--threads", str(threads),
             "--overrides", json.dumps(overrides or {})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.read()  # ready

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            self.err.seek(0)
            err = self.err.read()
            raise RuntimeError(f"bench worker {self.name} failed: {err.strip()[-800:]}")
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict:
        out = self.ask("done")
        self.proc.wait(timeout=WORKER_TIMEOUT_S)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=("hybrid", "lstm"))
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overrides", default="{}", help="TrainConfig settings, as JSON")
    a = ap.parse_args()
    serve(a.model, a.preset, a.seed, a.threads, json.loads(a.overrides))
