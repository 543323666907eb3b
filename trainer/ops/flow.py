"""The deploy and destroy flows: numbered steps over a backend (AWS, or local Docker + moto).

    python -m trainer deploy --data demo-data --args="--epochs 30"
    python -m trainer deploy --replace      # the run going is stopped after its checkpoint
    python -m trainer deploy --folds 5 --seeds 0,1,2   # cv as one AWS Batch array job (arrays.py)
    python -m trainer deploy --media media/crema   # raw media: extracted by the run, then trained
    python -m trainer destroy --keep-runs   # every run to results/ first, then pulumi destroy

Each step says what it does; a failure names the step and what to do about it.
"""

from __future__ import annotations

import shlex
import time
from contextlib import contextmanager
from pathlib import Path

from trainer.flags import check_train_args
from trainer.ops import OpsError, arrays, aws, batch, report, runs
from trainer.ops.cloud import AwsBackend
from trainer.ops.local import LocalBackend
from trainer.ops.settings import Settings
from trainer.ops.upload import (
    check_data,
    check_media,
    features_uri,
    upload_data,
    upload_media,
    upload_models,
)


def with_extract_args(train_args: list[str], extract_args: str) -> list[str]:
    """``train_args`` with its ``--extract-args`` (if any) replaced by ``extract_args``.

    Example:
        >>> with_extract_args(["--epochs", "3", "--extract-args", "--audio-model m"],
        ...                   "--audio-model s3://b/models/m-0123/")
        ['--epochs', '3', '--extract-args', '--audio-model s3://b/models/m-0123/']
    """
    out, skip = [], False
    for a in train_args:
        if skip:
            skip = False
        elif a == "--extract-args":
            skip = True
        elif not a.startswith("--extract-args="):
            out.append(a)
    return out + (["--extract-args", extract_args] if extract_args else [])


def backend_for(settings: Settings):
    """The backend ``settings.backend`` names: cloud.AwsBackend or local.LocalBackend."""
    if settings.backend == "local":
        return LocalBackend(settings)

    return AwsBackend(settings)


def as_ops_error(exc: BaseException, doing: str) -> OpsError | None:
    """OpsError for what a user can act on (AWS, S3, Docker, bad input); None for a bug."""
    err = aws.explain(exc, doing)
    if err is not None:
        return err
    if type(exc).__module__.startswith("docker."):
        return OpsError(f"Docker failed while {doing}: {' '.join(str(exc).split())[:300]}")
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return OpsError(f"{doing}: {exc}")
    return None


class Steps:
    """Numbered steps: ``with steps("uploading the data set"): ...`` prints the step, its time,
    and turns a failure into an OpsError that names the step."""

    def __init__(self, total: int, echo=print):
        self.n, self.total, self.echo = 0, total, echo

    @contextmanager
    def __call__(self, what: str, hint: str = ""):
        self.n += 1
        label = f"step {self.n}/{self.total}"
        self.echo(f"[{self.n}/{self.total}] {what}")
        t0 = time.monotonic()
        try:
            yield
        except Exception as e:
            err = as_ops_error(e, what)
            if err is None:
                raise
            raise OpsError(f"{label} ({what}) failed: {err}" + (f"; {hint}" if hint else "")) \
                from None
        self.echo(f"      ok ({time.monotonic() - t0:.0f}s)")


def host_facts(backend, out: dict, run_id: str | None, say=print) -> dict | None:
    """``backend.host(...)``, or None with a note: status, results and the menu go on without."""
    try:
        return backend.host(out, run_id)
    except Exception as e:
        say(f"(host unavailable: {' '.join(str(e).split())[:160]})")
        return None


def going_run(backend, out: dict) -> str | None:
    """The run going on this stack: one being started (SSM command, container), the newest
    run if it is an array with a child queued or running, or the newest run whose status.json
    has a non-final state and a fresh heartbeat. (Every deploy refuses while a run goes, so
    only the newest can.)"""

    active = backend.active_run(out)
    if active:
        return active
    newest = runs.latest(out["bucket"])
    if not newest:
        return None
    array_going = arrays.going(out["bucket"], out, newest)
    if array_going is not None:
        return newest if array_going else None
    return newest if runs.is_going(runs.status(out["bucket"], newest)) else None


def stop_going(backend, out: dict, run_id: str, echo=print) -> None:
    """Stop ``run_id``, an array (each running fold after its checkpoint) or a single run."""

    record = batch.read_record(out["bucket"], run_id)
    if record is not None:
        arrays.stop_array(backend, out, run_id, record, echo=echo)
    else:
        stop_run(backend, out, run_id, echo=echo)


def stop_run(backend, out: dict, run_id: str, echo=print, wait: float = 300,
             poll: float = 2) -> dict:
    """Stop ``run_id`` and wait (up to ``wait`` seconds) until its status.json is final (the
    trainer writes ``stopped`` once its checkpoint is saved); that status. OpsError when the
    run is still not final then: its checkpoint may be unsaved, so the caller must not go on."""
    backend.stop_run(out, run_id, echo=echo)
    deadline = time.monotonic() + wait
    st = runs.status(out["bucket"], run_id)
    while (not st or st.get("state") not in runs.FINAL_STATES) and time.monotonic() < deadline:
        time.sleep(poll)
        st = runs.status(out["bucket"], run_id)
    state = (st or {}).get("state", "unknown")
    if state not in runs.FINAL_STATES:
        age = runs.age_seconds(st)
        raise OpsError(f"run {run_id} is still {state} {wait:.0f}s after it was asked to stop "
                       f"(status.json {'missing' if age is None else f'{age:.0f}s old'}), so its "
                       f"checkpoint may not be saved; nothing else was done: see make status "
                       f"RUN={run_id} and make logs RUN={run_id}, then make deploy REPLACE=1 again")
    echo(f"    run {run_id}: {state} at epoch {(st or {}).get('epoch', '?')}; its artifacts stay "
         f"in {runs.run_uri(out['bucket'], run_id)}")
    return st


def deploy(settings: Settings, replace: bool = False, image: str | None = None,
           echo=print) -> str:
    """Start a training run of ``settings.data`` with ``settings.args``; the new run id.

    The inputs are checked first, before any network call: a bad DATA or ARGS is one line,
    and nothing is built, made or uploaded. With ``replace``, the run going is stopped (and its
    checkpoint waited for) before anything else changes, `pulumi up` included."""

    try:
        train_args = shlex.split(settings.args)
    except ValueError as e:  # an unclosed quote
        raise OpsError(f"ARGS {settings.args!r} cannot be split into flags: {e}") from None
    folds, seeds = (arrays.check(settings.folds, settings.seeds, train_args)
                    if str(settings.folds).strip() else (None, None))
    media = settings.media.strip()
    if media:  # extracted by the run itself (train --media): one run, with --data set here
        if folds:
            raise OpsError("MEDIA goes with a single run: extract first (make deploy MEDIA=... "
                           "once, or make extract), then FOLDS with DATA=s3://BUCKET/features/...")
        set_here = [a.split("=")[0] for a in train_args if a.split("=")[0] in ("--data", "--media")]
        if set_here:
            raise OpsError(f"ARGS {settings.args!r}: {set_here[0]} is set by deploy with MEDIA")
        check_media(media)
        extract = settings.extract.strip()
        if extract and any(a.split("=")[0] == "--extract-args" for a in train_args):
            raise OpsError("extract flags given twice: in EXTRACT and in ARGS' --extract-args; "
                           "keep EXTRACT")
        if extract:
            train_args += ["--extract-args", extract]
    else:
        if settings.extract.strip():
            raise OpsError("EXTRACT (extract flags) goes with MEDIA, the raw media to extract")
        check_data(settings.data)
    try:
        cfg = check_train_args(train_args + (["--media", "s3://checked/media/"] if media else []))
    except ValueError as e:
        raise OpsError(f"ARGS {settings.args!r}: {e}") from None
    backend = backend_for(settings)
    step = Steps(7, echo)
    aws_side = backend.name == "aws"
    with step("checking credentials, tools and the Docker engine"):
        backend.preflight()
    with step("looking for a run already going" + (" (and stopping it)" if replace else "")):
        current = backend.deployed()
        going = going_run(backend, current) if current else None
        echo(f"    run {going} is going" if going else "    none")
        if going and replace:  # before pulumi up, which may restart the instance
            stop_going(backend, current, going, echo=echo)
    if going and not replace:
        raise OpsError(f"run {going} is going on this stack; wait for it to end (make status), "
                       "or replace it: make deploy REPLACE=1 (it is stopped after a checkpoint; "
                       "its artifacts stay)")
    with step("pulumi up (the stack in infra/)" if aws_side else "starting the local S3 stand-in",
              hint="see the output above; fix and run make deploy again" if aws_side else ""):
        out = backend.outputs(create=True, echo=echo)
    run_id = runs.new_run_id()
    with step("building the image" + (" and pushing it to ECR" if aws_side else ""),
              hint="is the Docker engine up? (docker info)"):
        image_ref = backend.prepare_image(out, run_id, image, echo=echo)
    media_args = []
    if media:
        with step(f"uploading the media ({media})"):
            media_uri = upload_media(out["bucket"], media, echo=echo)
            # Local model files go up once (models/NAME-HASH/): the run reads them from S3.
            extract_args = upload_models(out["bucket"], cfg.extract_args, echo=echo)
            train_args = with_extract_args(train_args, extract_args)
            data_uri = features_uri(out["bucket"], media_uri, extract_args)
            media_args = ["--media", media_uri]
            echo(f"    the run extracts them into {data_uri} (skipped when already there)")
    else:
        with step(f"uploading the data set ({settings.data})"):
            data_uri = upload_data(out["bucket"], settings.data, echo=echo)
    if folds:
        with step("registering the job definition revision and submitting the array job"):
            arrays.submit_array(backend, out, run_id, image_ref, data_uri, folds, seeds,
                                train_args, echo=echo)
        with step("checking the children"):
            kids = batch.children(batch.client(out), batch.read_record(out["bucket"], run_id))
            if all(k["status"] == "UNKNOWN" for k in kids):  # AWS makes them a moment later
                echo("    the children are not listed yet (Batch makes them as the array job "
                     "leaves SUBMITTED): make status shows them")
            else:
                echo(f"    {', '.join(f'{n} {s.lower()}' for s, n in batch.counts(kids).items())}")
        _next_steps(settings, out, run_id, echo, fold=True)
        return run_id
    with step("starting the instance and waiting for SSM" if aws_side else "checking the host",
              hint="make deploy again retries" if aws_side else ""):
        backend.ensure_host(out, echo=echo)
        # Again: a run interrupted by a stop resumes when its instance boots.
        going = going_run(backend, out)
        if going and not replace:
            raise OpsError(f"run {going} is going (an interrupted run resumes when the instance "
                           "starts); make deploy REPLACE=1 replaces it")
        if going:
            stop_going(backend, out, going, echo=echo)
    with step(f"starting run {run_id}"):
        backend.start_run(out, run_id, image_ref, ["--data", data_uri, *media_args, *train_args],
                          echo=echo)
    _next_steps(settings, out, run_id, echo)
    return run_id


def _next_steps(settings: Settings, out: dict, run_id: str, echo, fold: bool = False) -> None:
    b = "" if settings.backend == "aws" else f" BACKEND={settings.backend}"
    what = "each fold's Batch state, epoch, best, ETA" if fold else "state, epoch, best, ETA, cost"
    results = "cv.json and summary.md over the folds" if fold else "summary.md"
    logs = f"make logs{b}{' FOLD=1' if fold else ''} FOLLOW=1"
    echo(f"\nrun {run_id} started: {runs.run_uri(out['bucket'], run_id)}\nnext:\n"
         f"  make status{b}              {what}\n"
         f"  {logs:<25}  its log, live\n"
         f"  make monitor{b}             a menu of the above, metrics per epoch, time to go\n"
         f"  make results{b}             results/{run_id}/{'' if fold else 'summary.md'}"
         f"{': ' + results if fold else ''} (also while it runs)\n"
         f"run id: {run_id}")


def destroy(settings: Settings, yes: bool = False, keep_runs: bool = False, read=input,
            echo=print) -> int:
    """Remove the stack after a confirmation that says what is lost; 0 done, 1 not confirmed."""

    backend = backend_for(settings)
    backend.preflight(docker=backend.name == "local")
    out = backend.deployed()
    if out is None:
        leftover = backend.read_state() if backend.name == "local" else None
        if leftover:  # the moto server died: remove its containers and state all the same
            backend.destroy(leftover, echo=echo)
        echo(f"nothing to destroy: no {backend.name} stack is deployed")
        return 0
    run_ids = runs.list_runs(out["bucket"])
    word = settings.stack if backend.name == "aws" else "local"  # what the user types
    echo(f"This destroys the {backend.name} stack {out.get('stack', settings.stack)}:")
    for line in backend.describe_loss(out, run_ids):
        echo(f"  - {line}")
    if keep_runs:
        echo(f"The {len(run_ids)} run(s) are downloaded to {settings.results_dir}/ first.")
    elif run_ids:
        echo(f"The runs are lost: keep them with KEEP=1 (downloads all {len(run_ids)} to "
             f"{settings.results_dir}/ first) or `make results RUN=ID` for one.")
    if not yes:
        try:
            answer = read(f"Type {word!r} to destroy it: ").strip()
        except EOFError:
            answer = ""
        if answer != word:
            echo("not destroyed")
            return 1
    step = Steps(2 if keep_runs else 1, echo)
    if keep_runs:
        with step(f"downloading {len(run_ids)} run(s) to {settings.results_dir}/"):
            for run_id in run_ids:
                fetch = (report.fetch_cv if batch.read_record(out["bucket"], run_id) is not None
                         else report.fetch)  # an array: every fold and the aggregate
                fetch(out["bucket"], run_id, Path(settings.results_dir))
    with step("pulumi destroy" if backend.name == "aws" else "stopping the local stand-in",
              hint="run make destroy again; the stack is left as `pulumi destroy` left it"):
        if out.get("batch_job_definition_name"):  # deploy's revisions are not Pulumi's
            gone = batch.deregister_revisions(batch.client(out), out["batch_job_definition_name"])
            echo(f"    {len(gone)} job definition revision(s) of the runs deregistered")
        backend.destroy(out, echo=echo)
    echo("destroyed")
    return 0
