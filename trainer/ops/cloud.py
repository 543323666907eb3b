"""The AWS backend: the Pulumi stack's instance, run through SSM, logs in CloudWatch.

    python -m trainer deploy            # pulumi up, image to ECR, instance on, run via SSM
    python -m trainer logs --follow     # CloudWatch Logs, stream RUN_ID of the stack's log group

The instance runs scripts/bootstrap.sh, installed as /usr/local/sbin/ave-bootstrap: `run RUN_ID
[train args]` starts the container, `stop` stops it after a checkpoint. Every call here is a
plain boto3 call through ``trainer.ops.aws.client``, so the tests run it against a moto server.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from datetime import datetime, timedelta, timezone

from botocore.exceptions import ClientError

from trainer.ops import OpsError, aws, batch, image, pricing, stack
from trainer.ops.settings import REPO, Settings
from trainer.store.s3 import client

BOOTSTRAP = "/usr/local/sbin/ave-bootstrap"  # where bootstrap.sh's setup mode installs itself
# This checkout's bootstrap, sent before each run as one text in this order, as the user data
# carries it (infra/compute.py's BOOTSTRAP; scripts/bootstrap.sh says why).
SCRIPTS = (REPO / "scripts" / "bootstrap-run.sh", REPO / "scripts" / "bootstrap.sh")
COMMENT = "ave run "                          # SSM command comments: "ave run RUN_ID"
ACTIVE = ("Pending", "InProgress", "Delayed")
# At the first boot the SSM agent is online before cloud-init has run bootstrap.sh's set-up
# (Docker, /usr/local/sbin/ave-bootstrap): every command waits for cloud-init first.
AFTER_BOOT = "cloud-init status --wait >/dev/null 2>&1 || true; "
SSM_HELP = ("the instance's SSM agent has not registered: check that the instance role has "
            "AmazonSSMManagedInstanceCore and the instance can reach the internet (see "
            "`aws ec2 get-console-output --instance-id ID`)")


# ----------------------------------------------------------------------- plain helpers
def describe_instance(ec2, instance_id: str) -> dict:
    try:
        return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    except (ClientError, IndexError) as e:
        raise OpsError(f"the stack's instance {instance_id} is gone ({aws.error_code(e) or e}): "
                       "run `make deploy` to recreate it") from None


def instance_platform(ec2, instance_type: str) -> str:
    """linux/amd64 or linux/arm64, as the instance type's processor needs."""
    info = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"][0]
    return image.platform_for(info["ProcessorInfo"]["SupportedArchitectures"])


def start_instance(ec2, instance_id: str, timeout: float = 600, poll: float = 5,
                   echo=print) -> dict:
    """Start the instance unless it runs; wait until it is running. Its description."""
    deadline = time.monotonic() + timeout
    while True:
        inst = describe_instance(ec2, instance_id)
        state = inst["State"]["Name"]
        if state == "running":
            return inst
        if state == "stopped":
            echo(f"    starting {instance_id}")
            ec2.start_instances(InstanceIds=[instance_id])
        elif state in ("terminated", "shutting-down"):
            raise OpsError(f"instance {instance_id} is {state}: run `make deploy` again (pulumi "
                           "up recreates it)")
        if time.monotonic() > deadline:
            raise OpsError(f"instance {instance_id} still {state} after {timeout:.0f}s: see the "
                           "EC2 console or try again")
        time.sleep(poll)  # pending, stopping: wait


def wait_ssm(ssm, instance_id: str, timeout: float = 600, poll: float = 5) -> None:
    """Wait until SSM sees the instance online (its agent registers a minute after boot)."""
    deadline, last = time.monotonic() + timeout, "not registered yet"
    while True:
        try:
            found = ssm.describe_instance_information(Filters=[
                {"Key": "InstanceIds", "Values": [instance_id]}])["InstanceInformationList"]
            if found and found[0].get("PingStatus") == "Online":
                return
            last = found[0].get("PingStatus", "?") if found else "not registered yet"
        except ClientError as e:
            last = " ".join(str(e).split())[:160]
        if time.monotonic() > deadline:
            raise OpsError(f"SSM does not see instance {instance_id} after {timeout:.0f}s "
                           f"({last}): {SSM_HELP}")
        time.sleep(poll)


def send(ssm, instance_id: str, argv: list[str], comment: str,
         before: list[list[str]] = ()) -> str:
    """Run ``argv`` as root on the instance (AWS-RunShellScript), once it has booted, after each
    command of ``before`` has succeeded; the command id."""
    line = " && ".join(shlex.join(a) for a in [*before, argv])
    return ssm.send_command(
        InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Comment=comment[:100],
        TimeoutSeconds=600, Parameters={"commands": [AFTER_BOOT + line],
                                        "executionTimeout": ["900"]})["Command"]["CommandId"]


def push_bootstrap(out: dict, scripts=SCRIPTS) -> list[list[str]]:
    """Put this checkout's bootstrap in the bucket (``ops/bootstrap-HASH.sh``; the instance
    role reads the bucket) and return the commands that make the instance use it, with the
    stack's idleMinutes and maxRunHours: ``bootstrap.sh update``. User data reaches only a new
    instance (cloud-init runs it once), so this is how a change reaches an existing one."""

    body = b"".join(path.read_bytes() for path in scripts)
    key = f"ops/bootstrap-{hashlib.sha256(body).hexdigest()[:12]}.sh"
    client().put_object(Bucket=out["bucket"], Key=key, Body=body)
    local = "/root/ave-bootstrap.sh"
    settings = [f"AVE_{name.upper()}={out[name]}" for name in ("idle_minutes", "max_run_hours")
                if out.get(name) is not None]
    return [["aws", "s3", "cp", "--quiet", "--region", out["region"],
             f"s3://{out['bucket']}/{key}", local],
            ["env", *settings, "bash", local, "update"]]


def wait_command(ssm, command_id: str, instance_id: str, timeout: float = 900,
                 poll: float = 2) -> dict:
    """Wait for an SSM command; its invocation (status, output). OpsError if it failed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as e:
            if aws.error_code(e) != "InvocationDoesNotExist":  # not yet, right after send
                raise
            inv = {"Status": "Pending"}
        if inv["Status"] not in ACTIVE:
            break
        if time.monotonic() > deadline:
            raise OpsError(f"SSM command {command_id} still {inv['Status']} after {timeout:.0f}s")
        time.sleep(poll)
    if inv["Status"] != "Success":
        out = (inv.get("StandardErrorContent") or inv.get("StandardOutputContent") or "").strip()
        raise OpsError(f"the command on {instance_id} ended {inv['Status']} (exit "
                       f"{inv.get('ResponseCode')}): {' / '.join(out.splitlines()[-3:])[:400]}")
    return inv


def active_command_run(ssm, instance_id: str) -> str | None:
    """The run id of an ``ave run`` SSM command still pending or in progress, if any."""
    for cmd in ssm.list_commands(InstanceId=instance_id)["Commands"]:
        if cmd["Status"] in ACTIVE and cmd.get("Comment", "").startswith(COMMENT):
            return cmd["Comment"][len(COMMENT):]
    return None


def log_events(logs, group: str, stream: str, tail: int = 50, follow: bool = False,
               done=None, poll: float = 2.0):
    """The lines of a CloudWatch stream (an iterator), or None if the stream does not exist.
    With ``follow``, keeps polling until ``done()`` is true and nothing new came."""
    try:
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=tail,
                                   startFromHead=False)
    except ClientError as e:
        if aws.error_code(e) == "ResourceNotFoundException":
            return None
        raise

    def lines():
        nonlocal page
        yield from (e["message"] for e in page["events"])
        token = page["nextForwardToken"]
        while follow:
            page = logs.get_log_events(logGroupName=group, logStreamName=stream,
                                       nextToken=token, startFromHead=True)
            yield from (e["message"] for e in page["events"])
            if not page["events"]:
                if done is not None and done():
                    return
                time.sleep(poll)
            token = page["nextForwardToken"]
    return lines()


def child_log_lines(out: dict, record: dict, kid: dict, tail: int = 50, follow: bool = False,
                    done=None):
    """An array child's CloudWatch stream (Batch's logStreamName, in the group its job
    definition names), as ``log_events``; None before the child has one."""
    if not kid.get("log_stream"):
        return None
    group = batch.log_group(batch.client(out), record["definition"])
    return log_events(aws.client("logs", out["region"]), group, kid["log_stream"], tail, follow,
                      done)


def cancel_spot_requests(ec2, instance_id: str) -> list[str]:
    """Cancel the persistent spot request behind ``instance_id`` (a known provider bug leaves it
    open after destroy, and it would start a new instance). The ids cancelled."""
    reqs = ec2.describe_spot_instance_requests(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}])["SpotInstanceRequests"]
    ids = [r["SpotInstanceRequestId"] for r in reqs if r["State"] in ("open", "active", "disabled")]
    if ids:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=ids)
    return ids


def cpu_utilization(cloudwatch, instance_id: str) -> float | None:
    """The instance's average CPU over the newest 5-minute CloudWatch point (None before one)."""
    now = datetime.now(timezone.utc)
    points = cloudwatch.get_metric_statistics(
        Namespace="AWS/EC2", MetricName="CPUUtilization", Statistics=["Average"], Period=300,
        Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
        StartTime=now - timedelta(minutes=20), EndTime=now)["Datapoints"]
    return round(max(points, key=lambda p: p["Timestamp"])["Average"], 1) if points else None


# ---------------------------------------------------------------------------- backend
class AwsBackend:
    name = "aws"

    def __init__(self, settings: Settings):
        self.settings = settings

    def _client(self, service: str, out: dict):
        return aws.client(service, out["region"])

    def preflight(self, docker: bool = True) -> None:
        aws.check_credentials()
        stack.require_cli()
        if docker:
            image.engine()

    def deployed(self) -> dict | None:
        return stack.deployed(self.settings)

    def outputs(self, create: bool = False, echo=print) -> dict:
        return stack.up(self.settings, on_output=echo) if create else stack.outputs(self.settings)

    def prepare_image(self, out: dict, run_id: str, given: str | None, echo=print) -> str:
        client = image.engine()
        ec2, ecr = self._client("ec2", out), self._client("ecr", out)
        kind = describe_instance(ec2, out["instance_id"])["InstanceType"]
        platform = instance_platform(ec2, kind)
        local = given or self.settings.image
        if not given:
            wheel = image.find_wheel(self.settings.torch_wheels)
            echo(f"    docker build -t {local} --platform {platform} ({kind}; torch: "
                 f"{wheel or 'the PyTorch CPU index'})")
            image.build(client, local, wheel=wheel, platform=platform, echo=echo)
        echo(f"    docker push {out['repository_url']}:{run_id} and :latest")
        pushed = image.push(client, local, out["repository_url"], [run_id, "latest"],
                            login=lambda: image.ecr_auth(ecr, out["repository_url"]), echo=echo)
        # The run gets this very image: its digest (else its own tag), never the moving :latest
        # that a later deploy would move.
        return pushed or f"{out['repository_url']}:{run_id}"

    def ensure_host(self, out: dict, echo=print) -> None:
        start_instance(self._client("ec2", out), out["instance_id"], echo=echo)
        echo("    waiting until SSM sees the instance")
        wait_ssm(self._client("ssm", out), out["instance_id"])

    def active_run(self, out: dict) -> str | None:
        return active_command_run(self._client("ssm", out), out["instance_id"])

    def start_run(self, out: dict, run_id: str, image_ref: str, train_args: list[str],
                  echo=print) -> None:
        ssm = self._client("ssm", out)
        update = push_bootstrap(out)
        cid = send(ssm, out["instance_id"],
                   [BOOTSTRAP, "run", "--image", image_ref, run_id, *train_args], COMMENT + run_id,
                   before=update)
        echo(f"    SSM command {cid}: bootstrap.sh update (this checkout's, with idleMinutes and "
             f"maxRunHours), then {BOOTSTRAP} run --image {image_ref} {run_id} ... (pulls the "
             "image, starts it)")
        wait_command(ssm, cid, out["instance_id"])

    def stop_run(self, out: dict, run_id: str, echo=print) -> int | None:
        ssm = self._client("ssm", out)
        cid = send(ssm, out["instance_id"], [BOOTSTRAP, "stop"], f"ave stop {run_id}")
        echo(f"    SSM command {cid}: {BOOTSTRAP} stop (SIGTERM; up to 120 s for the checkpoint)")
        wait_command(ssm, cid, out["instance_id"], timeout=400)
        return None

    def stop_children(self, out: dict, record: dict, kids: list[dict], echo=print) -> list[int]:
        """terminate_job: SIGTERM to a running child (its checkpoint), the queued never start."""
        return batch.terminate(batch.client(out), record, kids, "make deploy REPLACE=1")

    def child_log_lines(self, out: dict, record: dict, kid: dict, tail: int = 50,
                        follow: bool = False, done=None):
        return child_log_lines(out, record, kid, tail, follow, done)

    def log_lines(self, out: dict, run_id: str, tail: int = 50, follow: bool = False,
                  done=None):
        return log_events(self._client("logs", out), out["log_group"], run_id, tail, follow, done)

    def host(self, out: dict, run_id: str | None = None) -> dict:
        ec2 = self._client("ec2", out)
        inst = describe_instance(ec2, out["instance_id"])
        spot = inst.get("InstanceLifecycle") == "spot"
        zone = inst.get("Placement", {}).get("AvailabilityZone")
        info = {"where": f"EC2 {inst['InstanceId']} ({inst['InstanceType']}"
                         f"{', spot' if spot else ''}, {zone})",
                "state": inst["State"]["Name"],
                "price": pricing.hourly_price(inst["InstanceType"], out["region"], spot, zone)}
        if info["state"] == "running":
            info["launched"] = inst["LaunchTime"].isoformat()
            try:
                info["instance_cpu_percent"] = cpu_utilization(self._client("cloudwatch", out),
                                                               out["instance_id"])
            except ClientError:
                info["instance_cpu_percent"] = None
        return info

    def describe_loss(self, out: dict, runs: list[str]) -> list[str]:
        return [f"bucket {out['bucket']}: the data set and {len(runs)} run(s) (checkpoints, "
                "metrics, logs)",
                f"ECR repository {out['repository_url']} and its images",
                f"instance {out['instance_id']} and its disk; log group {out['log_group']} "
                "(CloudWatch logs of every run)",
                "the role, instance profile and security group"] + (
                    ["AWS Batch: the compute environment, job queue and job definition (every "
                     "run's revision), and any array job still going"]
                    if out.get("batch_job_queue") else [])

    def destroy(self, out: dict, echo=print) -> None:
        ec2 = self._client("ec2", out)
        spot_before = cancel_spot_requests(ec2, out["instance_id"])
        stack.destroy(self.settings, on_output=echo)
        left = cancel_spot_requests(ec2, out["instance_id"])
        for rid in spot_before + left:
            echo(f"    cancelled spot request {rid}")
