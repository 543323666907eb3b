"""The local backend: the same image on the local Docker engine, a moto server standing in for S3.

    python -m trainer deploy --backend local --data demo-data --args="--epochs 5"
    make deploy BACKEND=local; make monitor BACKEND=local; make results BACKEND=local

State lives in .ave/local.json (AVE_STATE_DIR moves it): the moto server's port and process id,
and a name for this stand-in stack. ``deploy`` starts the server when none answers (its data is
in memory: it lasts as long as the server); ``destroy`` stops it and removes the containers.
Each run is a container ``ave-STACK-RUN_ID`` on the host's network, started as bootstrap.sh
starts one on the instance; its output (docker logs) stands in for CloudWatch Logs, and it is
kept after it exits so that its logs stay readable.

Many runs at once (``make deploy BACKEND=local FOLDS=3``): the stand-in stack also holds, in
moto, what infra/batch.py makes on AWS (a compute environment, a job queue, a template job
definition), and deploy goes through the AWS code path (trainer/ops/batch.py). moto's Batch runs
each child as a container ``JOBNAME-JOBID`` on this engine, on the host's network (the server
runs with MOTO_DOCKER_NETWORK_MODE=host), from the image id the revision names (never pulled).
The template's environment points the children at the moto server with moto's test keys (no
secret: moto accepts any). moto lacks AWS_BATCH_JOB_ARRAY_INDEX (``cv --task auto`` reads the
index from AWS_BATCH_JOB_ID, ``PARENT:INDEX``), retries, and a SIGTERM on terminate_job (it
SIGKILLs): ``stop_children`` sends SIGTERM itself first. moto removes a child's container when
it ends, after copying its output to its CloudWatch Logs (group /aws/batch/job).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from trainer.ops import OpsError, aws, batch, image
from trainer.ops.cloud import child_log_lines
from trainer.ops.pricing import Price
from trainer.ops.runs import run_uri
from trainer.ops.settings import Settings
from trainer.store.files import atomic_write_text
from trainer.store.s3 import client

STOP_SECONDS = 120  # as bootstrap.sh: time for the trainer's checkpoint after SIGTERM
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answers, whatever it says
    except OSError:
        return False


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_path = Path(settings.state_dir) / "local.json"

    # --------------------------------------------------------------- the stand-in "stack"
    def preflight(self, docker: bool = True) -> None:
        if docker:
            image.engine()

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")

    def _start_server(self, stack: str | None = None) -> dict:
        try:
            import moto.server  # noqa: F401  (only to say what is missing)
        except ImportError:
            raise OpsError("the local backend needs moto's server: pip install 'moto[server]' "
                           "(make setup installs it)") from None
        port = _free_port()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["MOTO_DOCKER_NETWORK_MODE"] = "host"  # Batch children: the engine has no bridge
        with open(self.state_path.parent / "moto.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                     str(port)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise OpsError(f"the local S3 stand-in (moto) did not start; see "
                               f"{self.state_path.parent / 'moto.log'}")
            time.sleep(0.2)
        return {"stack": stack or "local-" + secrets.token_hex(3), "endpoint": endpoint,
                "pid": proc.pid,
                "bucket": self.settings.local_bucket, "region": self.settings.local_region}

    def outputs(self, create: bool = False, echo=print) -> dict:
        """The stand-in's outputs; ``create`` starts the moto server and makes the bucket."""
        state = self.read_state()
        if state is None or not answers(state["endpoint"]):
            if not create:
                gone = "" if state is None else (" (the moto server it names is not running "
                                                 "any more, and its runs went with it)")
                raise OpsError(f"no local stack{gone}: start one with `make deploy BACKEND=local`")
            if state is not None:
                echo("    the previous local S3 stand-in is gone (its runs were in memory); "
                     "starting a new one")
            # The same stack name: the old containers stay this stand-in's (destroy removes them).
            state = self._start_server(state["stack"] if state else None)
            self.write_state(state)
            echo(f"    local S3 stand-in: moto at {state['endpoint']} (pid {state['pid']})")
        self.activate(state)
        if create:
            s3 = client()
            if state["bucket"] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
                s3.create_bucket(Bucket=state["bucket"])
            if "batch" not in state:
                state["batch"] = self._make_batch(state)
                self.write_state(state)
        return {"bucket": state["bucket"], "region": state["region"], "stack": state["stack"],
                "endpoint": state["endpoint"], "instance_id": None, "repository_url": None,
                "log_group": None, **state.get("batch", {})}

    def _make_batch(self, state: dict) -> dict:
        """In moto, what infra/batch.py makes on AWS; the same output names."""

        region, name = state["region"], f"ave-{state['stack']}"
        iam, client = aws.client("iam", region), aws.client("batch", region)
        try:
            trust = {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"Service": "batch.amazonaws.com"}}]}
            role = iam.create_role(RoleName=f"{name}-batch",
                                   AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            role = iam.get_role(RoleName=f"{name}-batch")["Role"]["Arn"]
        # UNMANAGED: moto would otherwise "launch" EC2 instances of its own; it runs the jobs on
        # the Docker engine either way.
        found = client.describe_compute_environments(computeEnvironments=[f"{name}-compute"])
        env = (found["computeEnvironments"][0]["computeEnvironmentArn"]
               if found["computeEnvironments"] else client.create_compute_environment(
                   computeEnvironmentName=f"{name}-compute", type="UNMANAGED", state="ENABLED",
                   serviceRole=role)["computeEnvironmentArn"])
        found = client.describe_job_queues(jobQueues=[f"{name}-queue"])["jobQueues"]
        queue = found[0]["jobQueueArn"] if found else client.create_job_queue(
            jobQueueName=f"{name}-queue", state="ENABLED", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}])["jobQueueArn"]
        environment = dict(CREDENTIALS, AWS_ENDPOINT_URL=state["endpoint"],
                           AWS_DEFAULT_REGION=region, AWS_REGION=region, OMP_NUM_THREADS="1")
        definition = client.register_job_definition(
            jobDefinitionName=f"{name}-trainer", type="container",
            containerProperties={"image": self.settings.image, "command": ["--help"],
                                 "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                          {"type": "MEMORY", "value": "2048"}],
                                 "environment": [{"name": k, "value": v}
                                                 for k, v in sorted(environment.items())]},
            # As on AWS (moto stores it and never retries).
            retryStrategy={"attempts": 2, "evaluateOnExit": [
                {"action": "RETRY", "onStatusReason": "Host EC2*"},
                {"action": "EXIT", "onStatusReason": "*"}]})
        return {"batch_job_queue": queue, "batch_job_definition": definition["jobDefinitionArn"],
                "batch_job_definition_name": definition["jobDefinitionName"],
                "batch_compute_environment": env, "batch_max_vcpus": os.cpu_count() or 1,
                "batch_vcpus": 1, "batch_memory_mib": 2048}

    def deployed(self) -> dict | None:
        """The outputs if the stand-in is up, else None (nothing deployed, nothing running)."""
        state = self.read_state()
        return self.outputs() if state and answers(state["endpoint"]) else None

    def activate(self, state: dict) -> None:
        """Point this process's boto3 (trainer.store.s3 included) at the stand-in."""
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=state["endpoint"],
                          AWS_DEFAULT_REGION=state["region"])

    # ------------------------------------------------------------------------ containers
    def _containers(self, out: dict, run_id: str | None = None, running: bool = False) -> list:
        labels = [f"av-emotion.stack={out['stack']}"]
        if run_id:
            labels.append(f"av-emotion.run-id={run_id}")
        return image.engine().containers.list(all=not running, filters={"label": labels})

    def prepare_image(self, out: dict, run_id: str, given: str | None, echo=print) -> str:
        client = image.engine()
        if given:
            try:
                client.images.get(given)
            except Exception:
                raise OpsError(f"no image {given!r} on the local engine (docker images)") from None
            echo(f"    using the image {given}")
            return client.images.get(given).id
        wheel = image.find_wheel(self.settings.torch_wheels)
        echo(f"    docker build -t {self.settings.image} (torch: "
             f"{wheel or 'the PyTorch CPU index'})")
        image.build(client, self.settings.image, wheel=wheel, echo=echo)
        # Its id, as the digest on AWS: the run gets this very image, not a tag a later build
        # moves (and moto's Batch runs an id without trying a registry).
        return client.images.get(self.settings.image).id

    def ensure_host(self, out: dict, echo=print) -> None:
        echo("    the local Docker engine is the instance")

    def active_run(self, out: dict) -> str | None:
        running = self._containers(out, running=True)
        return running[0].labels.get("av-emotion.run-id") if running else None

    def start_run(self, out: dict, run_id: str, image_ref: str, train_args: list[str],
                  echo=print) -> None:
        env = dict(CREDENTIALS, AWS_ENDPOINT_URL=out["endpoint"], AWS_DEFAULT_REGION=out["region"],
                   AVE_RUN_ID=run_id)
        command = ["train", "--out", run_uri(out["bucket"], run_id), *train_args]
        image.engine().containers.run(
            image_ref, command, name=f"ave-{out['stack']}-{run_id}", detach=True, init=True,
            network_mode="host", environment=env,
            labels={"av-emotion.stack": out["stack"], "av-emotion.run-id": run_id})

    def stop_run(self, out: dict, run_id: str, echo=print) -> int | None:
        """SIGTERM, then wait (up to 120 s) for the checkpoint; the exit code."""
        for c in self._containers(out, run_id, running=True):
            c.stop(timeout=STOP_SECONDS)
            c.reload()
            return c.attrs["State"]["ExitCode"]
        return None

    # ------------------------------------------------------- array children (moto's Batch)
    def _child_container(self, record: dict, kid: dict):
        """The container moto runs for a child (``JOBNAME-JOBID``, ':' as '-'), or None."""
        if not kid.get("job_id"):
            return None
        name = f"{record['job_name']}-{kid['job_id'].replace(':', '-')}"
        found = image.engine().containers.list(all=True, filters={"name": f"^{name}$"})
        return found[0] if found else None

    def stop_children(self, out: dict, record: dict, kids: list[dict], echo=print) -> list[int]:
        """terminate_job for the queued children; SIGTERM to each running child's container
        (moto's terminate_job would SIGKILL it), all at once, each waited for up to 120 s;
        then terminate_job for what is left, as on AWS. The indexes ended."""

        client, reason = batch.client(out), "make deploy REPLACE=1"
        waiting = [k for k in kids if k["status"] in ("SUBMITTED", "PENDING", "RUNNABLE")]
        ended = batch.terminate(client, {**record, "size": 1}, waiting, reason)
        running = [(k, c) for k in kids if k["status"] in ("STARTING", "RUNNING")
                   and (c := self._child_container(record, k)) is not None]
        with ThreadPoolExecutor(max_workers=max(len(running), 1)) as pool:
            list(pool.map(lambda kc: kc[1].stop(timeout=STOP_SECONDS), running))
        # moto, seeing a container exit, copies its output to CloudWatch and marks the child;
        # a terminate_job meanwhile would make it kill the exited container and skip the copy.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = batch.children(client, record)
            if all(now[k["index"]]["status"] in batch.FINAL for k, _ in running):
                break
            time.sleep(0.5)
        return sorted(set(ended + [k["index"] for k, _ in running]
                          + batch.terminate(client, record, batch.children(client, record),
                                            reason)))

    def child_log_lines(self, out: dict, record: dict, kid: dict, tail: int = 50,
                        follow: bool = False, done=None):
        """A child's output: its container's while moto runs it, else moto's CloudWatch copy."""
        try:
            c = self._child_container(record, kid)
        except OpsError:
            c = None
        if c is not None:
            if not follow:
                return iter(c.logs(tail=tail).decode(errors="replace").splitlines())
            return _lines(c.logs(stream=True, follow=True, tail=tail))

        return child_log_lines(out, record, kid, tail, follow, done)

    def log_lines(self, out: dict, run_id: str, tail: int = 50, follow: bool = False,
                  done=None):
        """The run container's output (an iterator of lines), or None if it has none (or no
        engine answers: the caller falls back to the run directory's train.log)."""
        try:
            found = self._containers(out, run_id)
        except OpsError:
            return None
        if not found:
            return None
        c = found[0]
        if not follow:
            return iter(c.logs(tail=tail).decode(errors="replace").splitlines())
        return _lines(c.logs(stream=True, follow=True, tail=tail))

    def host(self, out: dict, run_id: str | None = None) -> dict:
        info = {"where": "local Docker engine", "price": Price(0.0, "local: no instance cost")}
        try:
            found = self._containers(out, run_id) if run_id else []
        except OpsError:
            info["state"] = "unknown (no Docker engine answers)"
            return info
        if not found:
            info["state"] = "no container for this run"
            return info
        c = found[0]
        info["state"] = f"container {c.name}: {c.status}" + (
            f" (exit {c.attrs['State']['ExitCode']})" if c.status == "exited" else "")
        if c.status == "running":
            s = c.stats(stream=False)
            cpu, pre = s["cpu_stats"], s["precpu_stats"]
            used = cpu["cpu_usage"]["total_usage"] - pre.get("cpu_usage", {}).get("total_usage", 0)
            system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
            cpus = cpu.get("online_cpus") or 1
            info["container_cpu_percent"] = (round(100.0 * used / system * cpus, 1) if system
                                             else None)
            info["container_memory_mb"] = round(s["memory_stats"].get("usage", 0) / 2**20, 1)
        return info

    # --------------------------------------------------------------------------- destroy
    def describe_loss(self, out: dict, runs: list[str]) -> list[str]:
        return [f"the local S3 stand-in (moto at {out['endpoint']}) and the {len(runs)} run(s) "
                "in it (in memory)",
                f"the run containers of {out['stack']} and their logs"]

    def destroy(self, out: dict, echo=print) -> None:
        for c in self._containers(out):
            c.remove(force=True)
        # Array children (moto removes each when it ends; these were still going).
        children = image.engine().containers.list(
            all=True, filters={"name": f"^ave-{out['stack']}-"})
        for c in children:
            c.remove(force=True)
        pid = (self.read_state() or {}).get("pid")
        try:  # only the server this state started: a pid can be reused
            proc = psutil.Process(pid) if pid else None
            if proc is not None and "moto.server" in proc.cmdline():
                proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
        self.state_path.unlink(missing_ok=True)


def _lines(chunks):
    """Whole lines from a stream of byte chunks."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if buf:
        yield buf.decode(errors="replace")
