"""AWS Batch for many runs at once: one array job per cross-validation run (issue 11).

    make deploy FOLDS=5 SEEDS=0,1,2     # register a revision, submit an array of 15 children
    make status                         # each fold's Batch state next to its status.json
    make logs FOLD=3                    # the CloudWatch stream of fold 3's child

Every call is a plain boto3 call through ``trainer.ops.aws.client``, so the tests run this
module against a moto server over HTTP, and the local backend (moto's Batch running the
children on the local Docker engine) exercises this very code.

What AWS does and this module relies on:
- A child of array job ``P`` has the id ``P:INDEX`` and gets ``AWS_BATCH_JOB_ARRAY_INDEX``;
  an array has 2 to 10,000 children, so one task is a plain job with the variable set here.
- ``terminate_job`` sends SIGTERM to a running child (SIGKILL 30 s later, ECS's stop timeout):
  the trainer saves its checkpoint and writes ``stopped``. On the parent it ends every child.
- ListJobs without a status lists only RUNNING jobs, so the children are described by their
  ids (``P:0`` ... ``P:N-1``, 100 per DescribeJobs call) instead.

What moto 5 lacks (the local backend): no ``AWS_BATCH_JOB_ARRAY_INDEX`` (the child reads its
index from ``AWS_BATCH_JOB_ID``'s ``:INDEX`` suffix: ``cv --task auto``), no retries (a
retryStrategy is stored, never acted on), a parent that stays SUBMITTED until every child has
SUCCEEDED (so the array's state is computed here from its children), ``terminate_job`` that
SIGKILLs a running container and ignores a parent's children (the local backend sends SIGTERM
itself first, and this module terminates every child by id), and logs that reach its CloudWatch
(group /aws/batch/job) only once a child's container has exited.
"""

from __future__ import annotations

import json
import time

from trainer.cv.plan import task_dir as cv_task_dir
from trainer.ops import OpsError, aws, runs
from trainer.store.s3 import client as s3_client

QUEUED = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING")
FINAL = ("SUCCEEDED", "FAILED")
STATES = QUEUED + ("RUNNING",) + FINAL
MAX_SIZE = 10_000          # AWS's largest array
RUN_TAG = "ave-run-id"     # on every revision deploy registers: destroy deregisters those
DEFAULT_LOG_GROUP = "/aws/batch/job"  # where Batch logs when a definition names no group
RECORD = "batch.json"      # runs/RUN_ID/batch.json: what deploy submitted


def client(out: dict):
    return aws.client("batch", out["region"])


# ------------------------------------------------------------------- the plan of an array
def task_of(index: int, folds: int, seeds: list[int]) -> tuple[int, int]:
    """(fold, seed) of child ``index``, fold-major as ``cv`` plans it: i = (fold-1)*S + s.

    Example:
        >>> task_of(4, folds=5, seeds=[0, 1, 2])
        (2, 1)
    """
    return index // len(seeds) + 1, seeds[index % len(seeds)]


def task_dir(index: int, folds: int, seeds: list[int]) -> str:
    """The run directory (under the cv run's) of child ``index``: fold-2 or fold-2-seed-1."""

    fold, seed = task_of(index, folds, seeds)
    return cv_task_dir(fold, seed, len(seeds))


def command(data_uri: str, out_uri: str, folds: int, seeds: list[int],
            train_args: list[str]) -> list[str]:
    """The children's command (the image's entrypoint is ``python -m trainer``)."""
    return ["cv", "--data", data_uri, "--out", out_uri, "--folds", str(folds), "--seeds",
            ",".join(map(str, seeds)), "--task", "auto", *train_args]


# --------------------------------------------------------------------- job definitions
def definition(batch, ref: str) -> dict:
    """The job definition ``ref`` names (an ARN, or NAME:REVISION); OpsError if none."""
    found = batch.describe_job_definitions(jobDefinitions=[ref])["jobDefinitions"]
    if not found:
        raise OpsError(f"the stack's job definition {ref} does not exist: run `make deploy` "
                       "again (pulumi up registers it)")
    return found[0]


def register_revision(batch, template: str, image: str, run_id: str) -> str:
    """A new revision of the ``template`` job definition running ``image`` (a digest: a later
    deploy never changes what this run runs); its ARN. Every other property is the template's
    (roles, vCPUs, memory, logs, retries, time limit), as Pulumi registered it.

    Example:
        >>> register_revision(batch, out["batch_job_definition"], "REPO@sha256:...", run_id)
        'arn:aws:batch:eu-west-1:123456789012:job-definition/ave-dev-trainer:7'
    """
    t = definition(batch, template)
    props = dict(t.get("containerProperties") or {}, image=image)
    kw = {"jobDefinitionName": t["jobDefinitionName"], "type": t.get("type", "container"),
          "containerProperties": props,
          "tags": {**(t.get("tags") or {}), RUN_TAG: run_id}}
    for key in ("parameters", "retryStrategy", "timeout", "propagateTags",
                "platformCapabilities"):
        if t.get(key) not in (None, {}, []):
            kw[key] = t[key]
    return batch.register_job_definition(**kw)["jobDefinitionArn"]


def log_group(batch, definition_arn: str) -> str:
    """The CloudWatch log group the children of ``definition_arn`` write to."""
    conf = (definition(batch, definition_arn).get("containerProperties") or {}).get(
        "logConfiguration") or {}
    return (conf.get("options") or {}).get("awslogs-group") or DEFAULT_LOG_GROUP


def deregister_revisions(batch, name: str) -> list[str]:
    """Deregister every ACTIVE revision of ``name`` that deploy registered (tagged ``RUN_TAG``);
    the template Pulumi registered is left to Pulumi. The ARNs deregistered."""
    done, token = [], None
    while True:
        page = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE",
                                              **({"nextToken": token} if token else {}))
        for d in page["jobDefinitions"]:
            if RUN_TAG in (d.get("tags") or {}) and d.get("status", "ACTIVE") == "ACTIVE":
                batch.deregister_job_definition(jobDefinition=d["jobDefinitionArn"])
                done.append(d["jobDefinitionArn"])
        token = page.get("nextToken")
        if not token:
            return done


# --------------------------------------------------------------------------- array jobs
def submit(batch, queue: str, definition_arn: str, job_name: str, cmd: list[str],
           size: int) -> str:
    """Submit ``cmd`` as an array of ``size`` children (a plain job when ``size`` is 1, with
    AWS_BATCH_JOB_ARRAY_INDEX=0, since Batch arrays start at 2); the job id."""
    if not 1 <= size <= MAX_SIZE:
        raise OpsError(f"{size} tasks: AWS Batch runs 1 to {MAX_SIZE} in one array job")
    overrides: dict = {"command": cmd}
    kw: dict = {}
    if size > 1:
        kw["arrayProperties"] = {"size": size}
    else:
        overrides["environment"] = [{"name": "AWS_BATCH_JOB_ARRAY_INDEX", "value": "0"}]
    return batch.submit_job(jobName=job_name, jobQueue=queue, jobDefinition=definition_arn,
                            containerOverrides=overrides, **kw)["jobId"]


def child_ids(record: dict) -> list[str]:
    """The job ids of the children, in index order (the job itself when it is not an array)."""
    if record["size"] == 1:
        return [record["job_id"]]
    return [f"{record['job_id']}:{i}" for i in range(record["size"])]


def _child(index: int, job: dict | None) -> dict:
    if job is None:  # not known to Batch (yet, or any more: Batch forgets jobs after a week)
        return {"index": index, "status": "UNKNOWN"}
    container = job.get("container") or {}
    attempts = job.get("attempts") or []
    stream = container.get("logStreamName") or next(
        (a["container"].get("logStreamName") for a in reversed(attempts)
         if (a.get("container") or {}).get("logStreamName")), None)
    return {"index": index, "job_id": job["jobId"], "status": job["status"],
            "reason": job.get("statusReason"), "exit_code": container.get("exitCode"),
            "log_stream": stream, "attempts": len(attempts),
            "started_at": job.get("startedAt"), "stopped_at": job.get("stoppedAt")}


def children(batch, record: dict) -> list[dict]:
    """Each child's Batch state: ``index``, ``job_id``, ``status``, ``reason``, ``exit_code``,
    ``log_stream``, ``attempts``, ``started_at`` and ``stopped_at`` (epoch ms)."""
    ids = child_ids(record)
    jobs: dict[str, dict] = {}
    for start in range(0, len(ids), 100):  # DescribeJobs takes 100 ids at a time
        for job in batch.describe_jobs(jobs=ids[start:start + 100])["jobs"]:
            jobs[job["jobId"]] = job
    return [_child(i, jobs.get(jid)) for i, jid in enumerate(ids)]


def counts(kids: list[dict]) -> dict[str, int]:
    """Children per Batch state, in the order a job goes through them (only states present)."""
    order = STATES + ("UNKNOWN",)
    return {s: n for s in order if (n := sum(1 for k in kids if k["status"] == s))}


def array_state(kids: list[dict]) -> str:
    """The array as a whole: RUNNING while any child runs, QUEUED while any waits, else FAILED
    if any child failed, else SUCCEEDED (moto never moves a parent, AWS does: same answer)."""
    states = {k["status"] for k in kids}
    if "RUNNING" in states:
        return "RUNNING"
    if states & set(QUEUED):
        return "QUEUED"
    if states <= {"SUCCEEDED"}:
        return "SUCCEEDED"
    return "FAILED" if "FAILED" in states else "UNKNOWN"


def is_going(kids: list[dict]) -> bool:
    return any(k["status"] in QUEUED + ("RUNNING",) for k in kids)


def terminate(batch, record: dict, kids: list[dict], reason: str) -> list[int]:
    """Terminate every child not yet final, then the parent; the indexes terminated."""
    ended = []
    for k in kids:
        if k["status"] not in FINAL and k.get("job_id"):
            batch.terminate_job(jobId=k["job_id"], reason=reason[:250])
            ended.append(k["index"])
    if record["size"] > 1:
        batch.terminate_job(jobId=record["job_id"], reason=reason[:250])
    return ended


# ------------------------------------------------------------------------- batch.json
def write_record(bucket: str, run_id: str, record: dict) -> None:
    """``runs/RUN_ID/batch.json``: one PUT, which S3 makes visible whole or not at all."""

    s3_client().put_object(Bucket=bucket, Key=f"runs/{run_id}/{RECORD}",
                           Body=(json.dumps(record, indent=2) + "\n").encode(),
                           ContentType="application/json")


def read_record(bucket: str, run_id: str) -> dict | None:
    """batch.json of ``run_id``, or None for a single-instance run."""

    return runs.read_json(bucket, run_id, RECORD)


def new_record(job_id: str, job_name: str, size: int, folds: int, seeds: list[int], queue: str,
               definition_arn: str, image: str) -> dict:
    return {"job_id": job_id, "job_name": job_name, "size": size, "folds": folds,
            "seeds": seeds, "queue": queue, "definition": definition_arn, "image": image,
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
