"""What a k-fold cross-validation run on a CREMA-D-sized data set would cost and take on AWS
Batch: a projection from the bench's measured training throughput, not a measurement.

    python -m trainer.ops.projection                          # reads bench.json (make bench)
    python -m trainer.ops.projection --bench bench.json --epochs 25,50 --seeds 1,3
    python -m trainer.ops.projection --instances m7i.xlarge,c7i.xlarge --max-vcpus 32

How (each assumption is an argument, and printed under the table):
- A task (one fold, one seed) trains on the fold's training speakers for ``epochs`` epochs at
  the bench's hybrid clips/s, validates every epoch and tests once at the forward-only rate
  (bench.json's ddp.eval_clips_per_second; 3x the training rate if absent), plus a fixed
  overhead (Batch launching an instance, the image pull, the data download and loading).
- vCPU for vCPU: a Batch job of as many vCPUs as the bench used threads runs at the bench's
  rate. On EC2 a vCPU is a hyperthread (c7i.large: 2 vCPUs = 1 core; c7i.xlarge: 4 vCPUs =
  2 cores), whereas the machine the bench ran on may give whole cores; ``--slowdown`` scales.
- Jobs pack onto instances by vCPU (the stack's default, 2 vCPUs and 7 GiB per job, puts two
  on an m7i.xlarge; a c7i.xlarge's 8 GiB holds two only if a job needs under 4 GiB), so a task
  costs the instance price times its share of the vCPUs; at most ``max_vcpus`` run at once
  (the stack's batchMaxVcpus), the rest wait for a slot.
- Prices: trainer.ops.pricing's built-in on-demand table (us-east-1); spot at 30 to 70 % less,
  the range that table's note gives. Compute only: S3, ECR and logs add cents.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path

from trainer.cv.folds import fold_split
from trainer.ops.pricing import FALLBACK

CREMA_D = {"clips": 7442, "speakers": 91}
SPOT_SHARE = (0.3, 0.7)  # of the on-demand price: spot 70 to 30 % below it (trainer.ops.pricing)
EVAL_SPEEDUP = 3.0  # forward only, when bench.json has no measured rate: no backward, no step
SIZES = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}
# cv's validation speakers per fold: the share fold_split draws from the training speakers
VAL_FRACTION = inspect.signature(fold_split).parameters["val_fraction"].default


def instance_vcpus(instance_type: str) -> int:
    """vCPUs of an EC2 type from its size (hyperthreads: 2 per physical core on c7i/m7i).

    >>> instance_vcpus("c7i.xlarge")
    4
    """
    size = instance_type.rpartition(".")[2]
    if size not in SIZES or instance_type not in FALLBACK:
        raise ValueError(f"no price or size known for {instance_type}; known: "
                         f"{', '.join(sorted(FALLBACK))}")
    return SIZES[size]


def read_bench(path: str) -> dict:
    """The figures the projection needs from a bench.json (``make bench``)."""
    text = Path(path).read_text()  # FileNotFoundError: one line from main
    try:
        b = json.loads(text)
        train = float(b["hybrid"]["clips_per_second"])
        threads = int(b["machine"]["threads"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bench.json with hybrid.clips_per_second and "
                         f"machine.threads ({type(e).__name__}: {e})") from None
    if train <= 0 or threads < 1:
        raise ValueError(f"{path}: throughput {train} clips/s on {threads} threads")
    measured = (b.get("ddp") or {}).get("eval_clips_per_second")
    return {"train_clips_per_second": train, "vcpus": threads, "mode": b.get("mode", "?"),
            "cpu": b["machine"].get("cpu", "?"),
            "eval_clips_per_second": float(measured) if measured else train * EVAL_SPEEDUP,
            "eval_measured": bool(measured)}


def task_seconds(bench: dict, clips: int, speakers: int, folds: int, epochs: int,
                 overhead_s: float, slowdown: float = 1.0) -> dict:
    """One task's time: its fold's clips by speaker share (clips per speaker taken as even)."""
    test_spk = speakers / folds
    val_spk = max(1, round(VAL_FRACTION * speakers))  # as fold_split counts them
    per_spk = clips / speakers
    n_test, n_val = test_spk * per_spk, val_spk * per_spk
    n_train = clips - n_test - n_val
    train_r = bench["train_clips_per_second"] / slowdown
    eval_r = bench["eval_clips_per_second"] / slowdown
    epoch = n_train / train_r + n_val / eval_r
    return {"train_clips": n_train, "val_clips": n_val, "test_clips": n_test,
            "epoch_seconds": epoch,
            "seconds": epochs * epoch + n_test / eval_r + overhead_s}


def project(bench: dict, folds: int = 5, seeds: tuple[int, ...] = (1, 3),
            epochs: tuple[int, ...] = (25, 50), instances: tuple[str, ...] = ("m7i.xlarge",),
            max_vcpus: int = 16, overhead_minutes: float = 5.0, slowdown: float = 1.0,
            clips: int = CREMA_D["clips"], speakers: int = CREMA_D["speakers"]) -> list[dict]:
    """One row per (instance type, seeds, epochs): tasks, hours, wall clock and dollars."""
    job = bench["vcpus"]  # vCPU for vCPU with the bench's threads
    if slowdown <= 0 or folds < 2 or min(seeds + epochs) < 1:
        raise ValueError(f"slowdown must be above 0, folds at least 2, seeds and epochs at "
                         f"least 1 (got {slowdown}, {folds}, {seeds}, {epochs})")
    if max_vcpus < job:
        raise ValueError(f"max vCPUs {max_vcpus} is less than one job's {job}")
    rows = []
    for inst in instances:
        share = job / instance_vcpus(inst)  # the part of an instance one job pays for
        if share > 1:
            raise ValueError(f"{inst} has fewer vCPUs than one job's {job}")
        for n_seeds in seeds:
            for e in epochs:
                t = task_seconds(bench, clips, speakers, folds, e, overhead_minutes * 60,
                                 slowdown)
                tasks = folds * n_seeds
                at_once = min(tasks, max_vcpus // job)
                task_h = t["seconds"] / 3600
                on_demand = tasks * task_h * FALLBACK[inst] * share
                rows.append({
                    "instance": inst, "folds": folds, "seeds": n_seeds, "tasks": tasks,
                    "epochs": e, "epoch_minutes": t["epoch_seconds"] / 60, "task_hours": task_h,
                    "at_once": at_once, "wall_hours": math.ceil(tasks / at_once) * task_h,
                    "vcpu_hours": tasks * task_h * job, "usd_on_demand": on_demand,
                    "usd_spot": (on_demand * SPOT_SHARE[0], on_demand * SPOT_SHARE[1]),
                    "usd_per_hour_on_demand": FALLBACK[inst], "clips": t})
    return rows


def table(rows: list[dict], bench: dict, overhead_minutes: float, slowdown: float,
          max_vcpus: int) -> str:
    """A Markdown table (docs/cross-validation.md quotes it), then the assumptions it rests on."""
    lines = ["| instance | folds x seeds | epochs | one task | wall clock | vCPU-hours | "
             "on demand | spot |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['instance']} | {r['folds']} x {r['seeds']} = {r['tasks']} | {r['epochs']} | "
            f"{r['task_hours']:.2f} h | {r['wall_hours']:.2f} h ({r['at_once']} at once) | "
            f"{r['vcpu_hours']:.1f} | ${r['usd_on_demand']:.2f} | "
            f"${r['usd_spot'][0]:.2f}-{r['usd_spot'][1]:.2f} |")
    c = rows[0]["clips"]
    lines += [
        "",
        f"Projected, not measured: {bench['train_clips_per_second']:.1f} training clips/s "
        + ("(given) " if bench.get("rate_given") else f"(bench, {bench['mode']} mode, "
           f"{bench['cpu']}) ") + f"on {bench['vcpus']} threads = "
        f"one job of {bench['vcpus']} vCPUs, vCPU for vCPU"
        + (f", slowed {slowdown:g}x" if slowdown != 1 else "") + "; evaluation "
        f"{bench['eval_clips_per_second']:.1f} clips/s "
        f"({'measured, forward only' if bench['eval_measured'] else 'assumed 3x training'}). "
        f"Per task: {c['train_clips']:.0f} training, {c['val_clips']:.0f} validation, "
        f"{c['test_clips']:.0f} test clips; {rows[0]['epoch_minutes']:.1f} min per epoch; "
        f"{overhead_minutes:g} min overhead (instance launch, image pull, data download). "
        f"At most {max_vcpus} vCPUs at once. On demand: trainer.ops.pricing's table "
        "(us-east-1); spot 30-70 % less. Compute only."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def ints(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s.split(","))

    ap = argparse.ArgumentParser(prog="python -m trainer.ops.projection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="bench.json", help="bench report (default: bench.json)")
    ap.add_argument("--folds", type=int, default=5, help="(default: 5)")
    ap.add_argument("--seeds", type=ints, default=(1, 3), help="seed counts, one row each "
                    "(default: 1,3)")
    ap.add_argument("--epochs", type=ints, default=(25, 50), help="epochs per task, one row each "
                    "(default: 25,50: early stopping's typical end, assumed, and the maximum)")
    ap.add_argument("--instances", default="m7i.xlarge", help="EC2 types to price, separated "
                    "by commas (default: m7i.xlarge, the stack's first batchInstanceTypes)")
    ap.add_argument("--max-vcpus", type=int, default=16, help="Batch's cap (default: 16, the "
                    "stack's batchMaxVcpus)")
    ap.add_argument("--overhead-minutes", type=float, default=5.0, help="per task (default: 5)")
    ap.add_argument("--slowdown", type=float, default=1.0, help="an AWS vCPU against one of the "
                    "bench machine's (default: 1)")
    ap.add_argument("--clips-per-second", type=float, default=0.0, help="training rate to use "
                    "instead of bench.json's, e.g. a quieter run's (default: 0 = bench.json's)")
    ap.add_argument("--clips", type=int, default=CREMA_D["clips"], help="(default: 7442)")
    ap.add_argument("--speakers", type=int, default=CREMA_D["speakers"], help="(default: 91)")
    a = ap.parse_args(argv)
    try:
        bench = read_bench(a.bench)
        if a.clips_per_second > 0:  # same threads, another run of the same workload
            bench.update(train_clips_per_second=a.clips_per_second, rate_given=True)
        rows = project(bench, a.folds, a.seeds, a.epochs, tuple(a.instances.split(",")),
                       a.max_vcpus, a.overhead_minutes, a.slowdown, a.clips, a.speakers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    print(table(rows, bench, a.overhead_minutes, a.slowdown, a.max_vcpus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
