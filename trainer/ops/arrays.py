"""A cross-validation run as one AWS Batch array: its inputs, its folds, stopping it.

    make deploy FOLDS=5 SEEDS=0,1,2 ARGS='--epochs 30'   # flow.deploy -> submit_array
    make status                                          # fold_rows -> views.array_lines
    make deploy REPLACE=1                                # stop_array: SIGTERM, checkpoints, wait

The run directory is ``s3://BUCKET/runs/RUN_ID/``: ``batch.json`` (what was submitted) and one
complete run directory per task, ``fold-K/`` (or ``fold-K-seed-S/``), that child K's
``cv --task auto`` writes. Plain functions over ``trainer.ops.batch`` and ``trainer.ops.runs``.
"""

from __future__ import annotations

import math
import time

from trainer.cv import plan
from trainer.ops import OpsError, batch, runs

# Flags the array sets itself: each task's seed, data, run directory and resumption.
OWN_FLAGS = {"--data": "DATA=", "--out": "the run id", "--seed": "SEEDS=",
             "--resume": "cv --task (a retried fold resumes by itself)",
             "--test-fraction": "FOLDS= (each fold's test speakers)"}
# Flags an array cannot take: every child would extract the same media into the same folder,
# after the folds were planned from what was there before.
NOT_IN_ARRAY = ("--media", "--extract-args")


def parse_folds(text: str) -> int:
    """FOLDS as a number of folds (2 or more); loso cannot be an array (its size needs the data).

    Example:
        >>> parse_folds("5")
        5
    """
    value = str(text).strip()
    if value.lower() == "loso":
        raise OpsError("FOLDS=loso: the array's size must be known before the data is read; "
                       "give the number of speakers as FOLDS=N (one fold per speaker), or run "
                       "`python -m trainer cv --folds loso` on one machine")
    try:
        return plan.parse_folds(value, "FOLDS", loso=False)
    except ValueError as e:
        raise OpsError(f"{e} (a single run is `make deploy` without FOLDS)") from None


def parse_seeds(text: str) -> list[int]:
    """SEEDS as a list of distinct seeds, in the order given."""
    try:
        return plan.parse_seeds(text, "SEEDS", "SEEDS=0,1,2")
    except ValueError as e:
        raise OpsError(str(e)) from None


def check(folds: str, seeds: str, train_args: list[str]) -> tuple[int, list[int]]:
    """FOLDS, SEEDS and ARGS of an array deploy, before anything is built: (K, seeds)."""
    k, s = parse_folds(folds), parse_seeds(seeds or "0")
    if k * len(s) > batch.MAX_SIZE:
        raise OpsError(f"FOLDS={k} x SEEDS ({len(s)}) = {k * len(s)} tasks: one array job runs "
                       f"at most {batch.MAX_SIZE}")
    for arg in train_args:
        name = arg.split("=", 1)[0]
        if name in OWN_FLAGS:
            raise OpsError(f"ARGS: {name} is set for each fold by the array ({OWN_FLAGS[name]}); "
                           "leave it out")
        if name in NOT_IN_ARRAY:
            raise OpsError(f"ARGS: {name} goes with a single run, not FOLDS: extract first "
                           "(make deploy MEDIA=... once, or make extract), then FOLDS with "
                           "DATA=s3://BUCKET/features/...")
    return k, s


def submit_array(backend, out: dict, run_id: str, image_ref: str, data_uri: str, folds: int,
                 seeds: list[int], train_args: list[str], echo=print) -> dict:
    """Register the revision with ``image_ref``, submit the array, write batch.json; the record."""
    missing = [k for k in ("batch_job_queue", "batch_job_definition") if not out.get(k)]
    if missing:
        raise OpsError(f"the stack has no AWS Batch resources (no output {', '.join(missing)}): "
                       "update infra/ and run `make deploy FOLDS=...` again (pulumi up adds them)")
    client = batch.client(out)
    definition = batch.register_revision(client, out["batch_job_definition"], image_ref, run_id)
    echo(f"    job definition {definition.rsplit('/', 1)[-1]}: {image_ref}")
    if out.get("batch_vcpus") and not any(a.split("=")[0] == "--threads" for a in train_args):
        # Batch's vCPUs are CPU shares: torch would otherwise start a thread per host core.
        train_args = [*train_args, "--threads", str(out["batch_vcpus"])]
    size = folds * len(seeds)
    cmd = batch.command(data_uri, runs.run_uri(out["bucket"], run_id), folds, seeds, train_args)
    name = f"ave-{out.get('stack') or 'run'}-{run_id}"
    job_id = batch.submit(client, out["batch_job_queue"], definition, name, cmd, size)
    record = batch.new_record(job_id, name, size, folds, seeds, out["batch_job_queue"],
                              definition, image_ref)
    batch.write_record(out["bucket"], run_id, record)
    echo(f"    array job {job_id}: {size} task(s) ({folds} folds x {len(seeds)} seed(s)); "
         f"{runs.run_uri(out['bucket'], run_id)}{batch.RECORD}")
    return record


def fold_rows(bucket: str, run_id: str, record: dict, kids: list[dict]) -> list[dict]:
    """One row per task: ``index``, ``fold``, ``seed``, ``dir``, ``batch`` (the child's Batch
    state) and ``status`` (its run directory's status.json, or None before the first one)."""
    rows = []
    for kid in kids:
        i = kid["index"]
        fold, seed = batch.task_of(i, record["folds"], record["seeds"])
        where = batch.task_dir(i, record["folds"], record["seeds"])
        rows.append({"index": i, "fold": fold, "seed": seed, "dir": where, "batch": kid,
                     "status": runs.read_json(bucket, run_id, f"{where}/status.json")})
    return rows


def overall_eta(rows: list[dict], now: float | None = None) -> float | None:
    """Seconds until every task has ended, estimated: the longest ETA of the running folds, plus,
    for folds still queued, one fold's time per wave of as many folds as run now (they start as
    the running ones end and free their vCPUs). None when nothing tells yet."""
    now = now or time.time()
    running = [r for r in rows if r["batch"]["status"] == "RUNNING"]
    queued = [r for r in rows if r["batch"]["status"] in batch.QUEUED]
    etas = [(r["status"] or {}).get("eta_seconds") for r in running
            if (r["status"] or {}).get("state") not in runs.FINAL_STATES]
    if any(e is None for e in etas):
        return None
    longest = max(etas, default=0.0)
    if not queued:
        return longest if running else 0.0
    spans = [(r["batch"]["stopped_at"] - r["batch"]["started_at"]) / 1000 for r in rows
             if r["batch"]["status"] == "SUCCEEDED" and r["batch"].get("started_at")
             and r["batch"].get("stopped_at")]
    spans += [now - r["batch"]["started_at"] / 1000 + e for r, e in zip(running, etas)
              if r["batch"].get("started_at")]
    if not spans:
        return None
    waves = math.ceil(len(queued) / max(len(running), 1))
    return longest + waves * sum(spans) / len(spans)


def going(bucket: str, out: dict, run_id: str) -> bool | None:
    """Whether array run ``run_id`` has a child queued or running; None if it is no array."""
    record = batch.read_record(bucket, run_id)
    if record is None:
        return None
    return batch.is_going(batch.children(batch.client(out), record))


def stop_array(backend, out: dict, run_id: str, record: dict, echo=print, wait: float = 300,
               poll: float = 2) -> list[dict]:
    """End array run ``run_id``: every running fold gets SIGTERM (the trainer saves its
    checkpoint and writes ``stopped``), queued ones are terminated before they start; then wait
    (up to ``wait`` seconds) for each running fold's status.json to be final. The fold rows.
    OpsError, naming the folds, when one is not final then (its checkpoint may be unsaved)."""
    client = batch.client(out)
    kids = batch.children(client, record)
    watched = [r for r in fold_rows(out["bucket"], run_id, record, kids)
               if r["batch"]["status"] in ("STARTING", "RUNNING")]
    ended = backend.stop_children(out, record, kids, echo=echo)
    echo(f"    array {record['job_id']}: {len(ended)} task(s) terminated (SIGTERM to the "
         f"running ones); waiting for {len(watched)} running fold(s) to checkpoint")
    deadline = time.monotonic() + wait
    while True:
        states = {r["index"]: r for r in batch.children(client, record)}
        for r in watched:
            r["status"] = runs.read_json(out["bucket"], run_id, f"{r['dir']}/status.json")
            r["batch"] = states.get(r["index"], r["batch"])
        # A fold is settled when its status.json is final, or when its container has ended
        # without writing one (nothing will write it any more).
        open_ = [r for r in watched if (r["status"] or {}).get("state") not in runs.FINAL_STATES
                 and r["batch"]["status"] not in batch.FINAL]
        if not open_ or time.monotonic() > deadline:
            break
        time.sleep(poll)
    unsure = [r for r in watched if r["status"] and r["status"].get("state")
              not in runs.FINAL_STATES]
    if unsure:
        names = ", ".join(f"{r['dir']} ({r['status'].get('state')})" for r in unsure)
        raise OpsError(f"run {run_id}: {names} not final {wait:.0f}s after SIGTERM, so a "
                       f"checkpoint may not be saved; nothing else was done: see make status "
                       f"RUN={run_id} and make logs RUN={run_id} FOLD=K, then make deploy "
                       "REPLACE=1 again")
    for r in watched:
        st = r["status"] or {}
        echo(f"    {r['dir']}: {st.get('state', 'no status.json')} at epoch {st.get('epoch', 0)}")
    echo(f"    the folds' artifacts stay in {runs.run_uri(out['bucket'], run_id)}")
    return watched
