"""Run directories in the stack's bucket, ``s3://BUCKET/runs/RUN_ID/`` (DESIGN.md section 4).

    >>> new_run_id()                                  # UTC time and 4 hex digits
    '20250101-120000-ab12'
    >>> latest("my-bucket")                           # the newest run id, or None
    >>> status("my-bucket", "20250101-120000-ab12")   # status.json as a dict, or None
    >>> download("my-bucket", run_id, Path("results") / run_id)   # only what changed

Every S3 call goes through ``trainer.store.s3.client()``: AWS, or the moto server that
AWS_ENDPOINT_URL names (the local backend and the tests).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from botocore.exceptions import ClientError

from trainer.ops import OpsError
from trainer.store import s3 as s3lib

# status.json's states (trainer/train.py): a run goes through these, then ends in a final one.
# extracting: train --media (make deploy MEDIA=...) turning raw media into clip files first.
GOING_STATES = ("starting", "extracting", "training", "evaluating")
FINAL_STATES = ("done", "failed", "stopped")
FRESH_SECONDS = 120  # status.json is rewritten every 15 s (30 s by contract): 4 missed beats
ID_FORMAT = "%Y%m%d-%H%M%S"


def new_run_id(now: float | None = None) -> str:
    """A new run id: sortable by time, unique enough for one team (UTC time + 4 hex digits)."""
    return time.strftime(ID_FORMAT, time.gmtime(now)) + "-" + secrets.token_hex(2)


def started_at(run_id: str) -> datetime | None:
    """When a run made by ``new_run_id`` started (None for other ids)."""
    try:
        return datetime.strptime(run_id[:15], ID_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def run_uri(bucket: str, run_id: str) -> str:
    return f"s3://{bucket}/runs/{run_id}/"


def first_writes(bucket: str) -> dict[str, datetime]:
    """Each run id under ``runs/`` with the time S3 gives its oldest object."""
    s3 = s3lib.client()
    first: dict[str, datetime] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/"):
        for obj in page.get("Contents", []):
            run_id, sep, _ = obj["Key"][len("runs/"):].partition("/")
            if run_id and sep:
                when = obj["LastModified"]
                first[run_id] = min(first.get(run_id, when), when)
    return first


def list_runs(bucket: str) -> list[str]:
    """Run ids under ``runs/``, oldest first by creation time, not by name: the time in the id
    (``new_run_id``, when deploy made it), else, for an id of another form, the time of the
    run's oldest object; runs made in the same second by that time too.

    By name, an id of another form (``final``, ``manual-1``) sorted after or before every run,
    and two ids of one second sorted by their random digits.
    """
    first = first_writes(bucket)

    def created(run_id: str) -> tuple:
        return (started_at(run_id) or first[run_id], first[run_id], run_id)

    return sorted(first, key=created)


def latest(bucket: str) -> str | None:
    """The most recently created run (see ``list_runs``), or None when there is none."""
    runs = list_runs(bucket)
    return runs[-1] if runs else None


def resolve(bucket: str, run_id: str | None = None) -> str:
    """``run_id`` if that run exists, else the newest run; OpsError naming the runs there."""
    runs = list_runs(bucket)
    if not run_id:
        if not runs:
            raise OpsError(f"no runs yet in s3://{bucket}/runs/: start one with `make deploy`")
        return runs[-1]
    if run_id not in runs:
        known = ", ".join(runs[-5:]) if runs else "none yet"
        raise OpsError(f"there is no run {run_id!r} in s3://{bucket}/runs/ (newest runs: {known})")
    return run_id


def read_bytes(bucket: str, key: str) -> bytes | None:
    """An object's bytes, or None when it does not exist."""
    try:
        return s3lib.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def read_json(bucket: str, run_id: str, name: str):
    data = read_bytes(bucket, f"runs/{run_id}/{name}")
    return json.loads(data) if data else None


def status(bucket: str, run_id: str) -> dict | None:
    return read_json(bucket, run_id, "status.json")


def metrics(bucket: str, run_id: str) -> list[dict]:
    """metrics.jsonl as a list of rows (one per epoch); [] before the first epoch ends."""
    data = read_bytes(bucket, f"runs/{run_id}/metrics.jsonl") or b""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def age_seconds(st: dict | None, now: float | None = None) -> float | None:
    """Seconds since status.json was last written (its ``updated_at``)."""
    try:
        updated = datetime.strptime(st["updated_at"], "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, KeyError, ValueError):
        return None
    return (now or time.time()) - updated.replace(tzinfo=timezone.utc).timestamp()


def is_going(st: dict | None, now: float | None = None) -> bool:
    """A run is going when its state is not final and its heartbeat is fresh."""
    age = age_seconds(st, now)
    return bool(st) and st.get("state") not in FINAL_STATES and age is not None \
        and age <= FRESH_SECONDS


def is_event_file(rel: str) -> bool:
    """A TensorBoard event file of a run directory (``tb/...``, ``fold-K/tb/...``)."""
    parts = Path(rel).parts
    return "tb" in parts[:-1] and parts[-1].startswith("events.out.tfevents.")


def download(bucket: str, run_id: str, dest: Path, select=None) -> dict:
    """Copy ``runs/RUN_ID/`` into ``dest``; a file already there with the object's ETag is kept.
    ``select``: a test of the file's path in the run (e.g. ``is_event_file``); default: all.

    Example:
        >>> download("my-bucket", "20250101-120000-ab12", Path("results/20250101-120000-ab12"))
        {'downloaded': 9, 'unchanged': 0}
    """
    s3 = s3lib.client()
    prefix = f"runs/{run_id}/"
    objects = s3lib.retry(lambda: s3lib.list_objects(s3, bucket, prefix), f"list {prefix}")
    counts = {"downloaded": 0, "unchanged": 0}
    for rel, (size, etag) in sorted(objects.items()):
        if select is not None and not select(rel):
            continue
        path = dest / rel
        if path.is_file() and path.stat().st_size == size and s3lib.local_etag(path) == etag:
            counts["unchanged"] += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # skipped by sync_up and us
        try:
            s3lib.retry(lambda: s3.download_file(bucket, prefix + rel, str(tmp),  # noqa: B023
                                                 Config=s3lib.TRANSFER), f"get {rel}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        counts["downloaded"] += 1
    return counts
