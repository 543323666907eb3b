"""Does one run across processes pay here? The bench's hybrid epoch in 1 process against 2 DDP.

    python -m trainer.bench.ddp                      # the bench's full workload (about a minute)
    python -m trainer.bench.ddp --preset smoke       # tiny shapes, for tests (figures meaningless)
    python -m trainer bench                          # full mode runs it as bench.json's "ddp"

Issue 11: data-parallel training across machines of a model of about 1 M parameters on CPU
was slower than one machine in published measurements (kubeflow/pytorch-operator#271,
speechbrain#1096); measure it here before offering it. The same epoch of the bench's workload
(trainer.bench.workload: its clips, its batches, its data path and training step) runs

- ``single``: 1 process with ``world`` torch threads (the product as it is), and
- ``ddp``: ``world`` processes of 1 thread each, torch.distributed with the gloo backend on
  loopback, DistributedDataParallel.

Each in fresh interpreters, so neither inherits the other's threads or allocator state. Two
variants (full mode's batch sizes): ``same_global_batch``, the same global batches of 24 as
the single process (12 clips per rank: like for like, the same steps and the same
optimisation), and ``same_per_rank_batch``, 24 per rank (global 48: what running the
single-process settings on each rank would do) against a single process at batch 48.

This machine is shared, and its load moves within seconds, so both groups stay alive and run
epochs in turn (one untimed pass each, then alternating pairs), as the bench's loader A/B
does: the speed-up is the median over pairs. An epoch is timed between barriers: the slowest
rank's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.batching import bucket_batches, collate
from trainer.bench.workload import (
    PRESETS,
    build,
    loader,
    pooled,
    training_step,
    workload,
)
from trainer.config import TrainConfig
from trainer.runtime_env import apply
from trainer.store.files import atomic_write_text

WORLD = 2
TIMED_EPOCHS = {"full": 7, "quick": 2, "smoke": 2}  # pairs, after one untimed pass each
# Global batch of each variant, in multiples of the bench's batch (24 in full mode).
VARIANTS = {"same_global_batch": 1, "same_per_rank_batch": WORLD}
WORKER_TIMEOUT_S = 600  # a rank that never meets its peer fails the bench, never hangs it


def shards(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Rank ``rank``'s clips of each global batch: every ``world``-th clip, as DistributedSampler
    interleaves indices. Applied per batch, so the ranks' halves of a bucketed batch have like
    lengths (neither waits long for the other) and every rank takes the same number of steps
    (a rank with a step fewer would leave its peer waiting in all-reduce forever).

    >>> shards([[5, 1, 7], [2, 0]], rank=1, world=2)
    [[1], [0]]
    """
    return [b[rank::world] for b in batches]


def global_batches(preset: str, seed: int, batch: int, world: int):
    """The bench workload's clips (pooled for the hybrid) and its bucketed batches of ``batch``.
    Batches with fewer clips than ``world`` are left out of every mode alike, so that each rank
    has a clip in every step and all modes train on the same clips."""
    p = PRESETS[preset]
    clips = pooled("hybrid", workload(p["clips"], seed, p.get("short", False)))
    lengths = [c.audio.shape[0] for c in clips]
    return clips, [b for b in bucket_batches(lengths, batch, seed, 0) if len(b) >= world]


def serve(preset: str, seed: int, threads: int, batch: int, rank: int, world: int) -> None:
    """One worker process: builds the model and the data, then runs an epoch each time stdin
    says ``epoch`` (one JSON line per epoch on stdout), and at ``done`` its final line. With
    ``world`` > 1 it joins the gloo group (MASTER_ADDR/MASTER_PORT from the environment)."""

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    dist = torch.distributed
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=WORKER_TIMEOUT_S))
    cfg = TrainConfig(model="hybrid")
    clips, batches = global_batches(preset, seed, batch, WORLD)  # same clips in every mode
    mine = shards(batches, rank, world)
    load = loader(clips, cfg, seed, rank)
    torch.manual_seed(seed)
    model = build("hybrid").train()
    net = DistributedDataParallel(model) if world > 1 else model  # broadcasts rank 0's weights
    step = training_step(net, cfg)

    def say(d: dict) -> None:
        print(json.dumps(d), flush=True)

    say({"ready": True})
    while (cmd := sys.stdin.readline().strip()) == "epoch":
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        losses = [step(load(idx, b)) for b, idx in enumerate(mine)]
        if world > 1:
            dist.barrier()  # the epoch ends when the slowest rank's does
        say({"seconds": time.perf_counter() - t0, "loss": float(torch.stack(losses).mean())})
    out = {"rank": rank, "clips": sum(map(len, mine)), "steps": len(mine),
           # equal on every rank if the all-reduce kept the replicas in step
           "weights_sha256": hashlib.sha256(b"".join(
               p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()}
    if world == 1 and cmd == "done":  # forward only, as validation runs: an evaluation pass
        model.eval()
        with torch.inference_mode():
            t0 = time.perf_counter()
            for idx in batches:
                model(**collate([clips[i] for i in idx]))
        out["eval_clips_per_second"] = out["clips"] / (time.perf_counter() - t0)
    if world > 1:
        dist.destroy_process_group()
    say(out)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Group:
    """``world`` worker processes of 1 thread each in a gloo group, or (``world`` 1) one
    process of ``WORLD`` threads. They run an epoch when told, so that the parent can alternate
    the epochs of two groups: on a shared machine both then see the same moments.

    >>> g = Group("smoke", seed=0, batch=2, world=2)
    >>> seconds, losses = g.epoch()      # one epoch, every rank; losses: one per rank
    >>> finals = g.finish()              # per rank: clips, steps, weights_sha256
    """

    def __init__(self, preset: str, seed: int, batch: int, world: int, threads: int = 0):
        self.world, self.batch = world, batch
        self.threads = threads or (WORLD if world == 1 else 1)
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                   GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
                   OMP_NUM_THREADS=str(self.threads))
        apply(env)  # as `python -m trainer` runs the bench
        self.logs = [tempfile.TemporaryFile("w+") for _ in range(world)]  # stderr, for errors
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "trainer.bench.ddp", "--worker", "--preset", preset,
             "--seed", str(seed), "--threads", str(self.threads), "--batch", str(batch),
             "--rank", str(r), "--world", str(world)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logs[r],
            text=True) for r in range(world)]

    def _ask(self, cmd: str | None) -> list[dict]:
        if cmd:
            for p in self.procs:
                p.stdin.write(cmd + "\n")
                p.stdin.flush()
        answers = []
        for p, log in zip(self.procs, self.logs):
            ready, _, _ = select.select([p.stdout], [], [], WORKER_TIMEOUT_S)
            line = p.stdout.readline() if ready else ""
            if not line:
                log.seek(0)
                self.close()
                raise RuntimeError(f"bench ddp worker (world {self.world}) failed: "
                                   f"{log.read().strip()[-800:] or 'no answer'}")
            answers.append(json.loads(line))
        return answers

    def ready(self) -> None:
        self._ask(None)

    def epoch(self) -> tuple[float, list[float]]:
        """Rank 0's epoch seconds (the barriers make every rank's the same) and each loss."""
        answers = self._ask("epoch")
        return answers[0]["seconds"], [a["loss"] for a in answers]

    def finish(self) -> list[dict]:
        answers = self._ask("done")
        for p in self.procs:
            p.wait(timeout=60)
        self.close()
        return answers

    def close(self) -> None:
        for p in self.procs:  # ours only: a failed rank must not leave its peer waiting
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


def summary(group: Group, seconds: list[float], losses: list[list[float]], first: float,
            finals: list[dict]) -> dict:
    clips = sum(f["clips"] for f in finals)
    out = {"processes": group.world, "threads_per_process": group.threads,
           "batch_per_process": -(-group.batch // group.world), "clips": clips,
           "steps": finals[0]["steps"], "first_pass_seconds": first,
           "epoch_seconds": float(np.median(seconds)), "epochs_seconds": seconds,
           "clips_per_second": clips / float(np.median(seconds)),
           "clips_per_second_best": clips / min(seconds),  # the least disturbed epoch
           "losses": losses,  # per epoch (the untimed pass first), per rank
           "replicas_equal": len({f["weights_sha256"] for f in finals}) == 1}
    if "eval_clips_per_second" in finals[0]:
        out["eval_clips_per_second"] = finals[0]["eval_clips_per_second"]
    return out


def compare(preset: str, seed: int, batch: int, epochs: int, control: bool = False) -> dict:
    """The single process and the DDP group at global batch ``batch``: one untimed pass each,
    then ``epochs`` rounds of one epoch each, in turn (AB BA ...), so a moment of load hits
    both. ``control``: also a single process of 1 thread, which tells what the second thread
    gives one process (and, on a loaded machine, what losing a core costs a 2-thread process)."""
    groups = {"single": Group(preset, seed, batch, 1), "ddp": Group(preset, seed, batch, WORLD)}
    if control:
        groups["single_1_thread"] = Group(preset, seed, batch, 1, threads=1)
    try:
        for g in groups.values():
            g.ready()
        seconds = {k: [] for k in groups}
        losses = {k: [] for k in groups}
        first = {}
        for k, g in groups.items():
            first[k], lo = g.epoch()
            losses[k].append(lo)
        for i in range(epochs):
            for k in (list(groups) if i % 2 == 0 else list(groups)[::-1]):
                s, lo = groups[k].epoch()
                seconds[k].append(s)
                losses[k].append(lo)
        out = {k: summary(g, seconds[k], losses[k], first[k], g.finish())
               for k, g in groups.items()}
    finally:
        for g in groups.values():
            g.close()
    # per round: how much faster the DDP epoch was than the single one next to it
    ratios = [a / b for a, b in zip(seconds["single"], seconds["ddp"])]
    out = dict(out, batch_global=batch, speedup=float(np.median(ratios)),
               speedup_per_pair=ratios,
               # each group's fastest epoch: what a machine of its own would come closer to
               speedup_best=min(seconds["single"]) / min(seconds["ddp"]))
    if control:  # medians over rounds of the 1-thread epoch over the others'
        for k in ("single", "ddp"):
            out[f"speedup_{k}_vs_1_thread"] = float(np.median(
                [a / b for a, b in zip(seconds["single_1_thread"], seconds[k])]))
    return out


def measure(preset: str = "full", seed: int = 0, variants: dict | None = None,
            control: bool = True) -> dict:
    """Every variant, single process against DDP; the dict bench.json keeps as ``ddp``."""
    t_start, load_start = time.time(), list(os.getloadavg())
    epochs = TIMED_EPOCHS[preset]
    report: dict = {"world": WORLD, "backend": "gloo", "preset": preset,
                    "clips": PRESETS[preset]["clips"], "timed_epochs": epochs, "variants": {}}
    for key, times in (variants or VARIANTS).items():
        report["variants"][key] = compare(preset, seed, PRESETS[preset]["batch_size"] * times,
                                          epochs, control=control and not report["variants"])
    first = next(iter(report["variants"].values()))
    for v in report["variants"].values():  # against the product's batch (other moments)
        v["speedup_vs_single_at_base_batch"] = v["ddp"]["clips_per_second"] / first["single"][
            "clips_per_second"]
    report.update({
        "speedup": first["speedup"],
        "eval_clips_per_second": first["single"]["eval_clips_per_second"],
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "seconds": time.time() - t_start,
        "method": f"one epoch of the bench workload: single = 1 process, {WORLD} torch threads; "
                  f"ddp = {WORLD} processes x 1 thread, gloo on 127.0.0.1, "
                  "DistributedDataParallel (default buckets); each rank takes every "
                  f"{WORLD}th clip of each bucketed global batch. Both kept alive and told to "
                  "run epochs in turn: one untimed pass each, then timed_epochs alternating "
                  "pairs; an epoch is timed between barriers (the slowest rank's). speedup: "
                  "median over pairs of single epoch seconds / ddp epoch seconds; "
                  "clips_per_second: clips / median epoch seconds; *_best: the fastest epoch's "
                  "(on a loaded machine the 2-thread process loses most: one of its threads "
                  "waits for the other). The first variant also runs "
                  "single_1_thread (1 process, 1 thread) in the rounds: speedup_*_vs_1_thread. "
                  "eval_clips_per_second: one "
                  "forward-only pass (inference_mode) of the single process, first variant"})
    return report


def table(r: dict) -> str:
    lines = [f"DDP ({r['world']} processes x 1 thread, {r['backend']}) against 1 process x "
             f"{r['world']} threads, {r['clips']} clips, {r['timed_epochs']} alternating pairs "
             "of epochs (medians):"]
    for key, v in r["variants"].items():
        s, d = v["single"], v["ddp"]
        lines.append(f"  {key}: global batch {v['batch_global']} ({d['batch_per_process']} per "
                     f"rank): single {s['clips_per_second']:.1f} clips/s "
                     f"({s['epoch_seconds']:.2f} s), ddp {d['clips_per_second']:.1f} clips/s "
                     f"({d['epoch_seconds']:.2f} s): {v['speedup']:.2f}x; fastest epochs "
                     f"{s['clips_per_second_best']:.1f} and {d['clips_per_second_best']:.1f}: "
                     f"{v['speedup_best']:.2f}x")
        if "single_1_thread" in v:
            c = v["single_1_thread"]
            lines.append(f"    control, 1 process x 1 thread: {c['clips_per_second']:.1f} clips/s; "
                         f"over it: {r['world']} threads {v['speedup_single_vs_1_thread']:.2f}x, "
                         f"ddp {v['speedup_ddp_vs_1_thread']:.2f}x")
    lines.append(f"  load average {r['load_average']['start'][0]:.1f} at start, "
                 f"{r['load_average']['end'][0]:.1f} at end ({os.cpu_count()} cores)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.bench.ddp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full", choices=tuple(PRESETS),
                    help="workload size (default: full)")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    ap.add_argument("--out", metavar="FILE", help="also write the JSON here (default: none)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process
    for flag in ("--threads", "--batch", "--rank", "--world"):
        ap.add_argument(flag, type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:  # the subprocess side of ``Group``
        serve(a.preset, a.seed, a.threads, a.batch, a.rank, a.world)
        return 0
    report = measure(a.preset, a.seed)
    print(table(report))
    if a.out:
        atomic_write_text(Path(a.out), json.dumps(report, indent=2) + "\n")
        print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
