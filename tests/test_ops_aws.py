"""The AWS-facing code of the operator side, against the moto server over real HTTP.

    .venv/bin/python -m pytest tests/test_ops_aws.py

ECR login, SSM Run Command, CloudWatch Logs, EC2 start/describe, spot requests and prices,
credentials. Nothing in boto3 is patched: AWS_ENDPOINT_URL (conftest ``aws_env``) points every
client at moto. What moto cannot do is said where it matters: it has no Price List API (so the
on-demand lookup is tested through its fallback), no DescribeInstanceInformation (so the SSM
wait is tested for its error), and its SSM commands finish at once (so "a command in progress"
is tested only for its absence). The Pulumi CLI is not installed here: the Automation API path
is tested for its errors (no CLI, no stack) with a stand-in `pulumi` script on PATH.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from trainer.ops import OpsError, aws, cloud, image, pricing, stack
from trainer.ops.settings import REPO, load

AMI = "ami-12c6146b"  # one of moto's images


@pytest.fixture
def ec2(aws_env):
    return aws.client("ec2", "us-east-1")


@pytest.fixture
def instance(ec2):
    return ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1,
                             InstanceType="c7i.xlarge")["Instances"][0]["InstanceId"]


@pytest.fixture
def outputs(instance, s3_bucket):
    logs = aws.client("logs", "us-east-1")
    group = f"/ave/{s3_bucket}"
    logs.create_log_group(logGroupName=group)
    repo = aws.client("ecr", "us-east-1").create_repository(
        repositoryName=f"ave-{s3_bucket}")["repository"]["repositoryUri"]
    return {"bucket": s3_bucket, "repository_url": repo, "instance_id": instance,
            "log_group": group, "region": "us-east-1", "idle_minutes": 5, "max_run_hours": 3}


def test_no_credentials_is_one_line_saying_what_to_do(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(OpsError, match="no AWS credentials.*aws configure"):
        aws.check_credentials("us-east-1")


def test_credentials_are_checked_against_sts(aws_env):
    assert aws.check_credentials("us-east-1") == "123456789012"  # moto's account


def test_refused_and_expired_credentials_say_so():
    err = ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "GetCallerIdentity")
    assert "expired or are wrong" in str(aws.explain(err, "deploying"))


def test_ecr_auth_comes_from_get_authorization_token(outputs):
    ecr = aws.client("ecr", "us-east-1")
    auth = image.ecr_auth(ecr, outputs["repository_url"])
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    assert f"{auth['username']}:{auth['password']}" == base64.b64decode(token).decode()
    assert auth["username"] == "AWS"
    assert auth["serveraddress"] == outputs["repository_url"].split("/")[0]


class FakeEngine:
    """Stands in for the Docker engine's push (no registry is reachable here): the first
    ``expired`` pushes answer as ECR does to an expired token."""

    def __init__(self, expired: int):
        self.expired, self.pushes, self.tags = expired, [], []
        self.images, self.api = self, self

    def get(self, name):
        return self

    def tag(self, repo, tag):
        self.tags.append(f"{repo}:{tag}")

    def push(self, repo, tag, auth_config, stream, decode):
        self.pushes.append((tag, auth_config["password"]))
        if len(self.pushes) <= self.expired:
            return iter([{"status": "Preparing"}, {"error": "denied: Your authorization token "
                                                            "has expired. Reauthenticate and try again."}])
        return iter([{"status": "Pushed", "id": "abc"}, {"status": f"{tag}: digest: sha256:1"}])


def test_an_expired_ecr_login_is_renewed_once(outputs):
    ecr = aws.client("ecr", "us-east-1")
    logins = []

    def login():
        logins.append(1)
        return image.ecr_auth(ecr, outputs["repository_url"])

    engine = FakeEngine(expired=1)
    image.push(engine, "av-emotion-trainer", outputs["repository_url"], ["latest"], login,
               echo=lambda s: None)
    assert len(logins) == 2 and len(engine.pushes) == 2
    assert engine.tags == [f"{outputs['repository_url']}:latest"]

    with pytest.raises(OpsError, match="ECR refused the login.*clock"):
        image.push(FakeEngine(expired=2), "x", outputs["repository_url"], ["latest"], login,
                   echo=lambda s: None)


def test_a_push_gives_the_digest_the_run_is_started_with(outputs):
    """The run records and pulls this digest: never :latest, which a later deploy moves."""
    digest = "sha256:" + "f" * 64

    class Engine(FakeEngine):
        def push(self, repo, tag, auth_config, stream, decode):
            return iter([{"status": "Pushed", "id": "abc"},
                         {"status": f"{tag}: digest: {digest} size: 1234"}])

    ecr = aws.client("ecr", "us-east-1")
    ref = image.push(Engine(expired=0), "x", outputs["repository_url"], ["r1", "latest"],
                     lambda: image.ecr_auth(ecr, outputs["repository_url"]), echo=lambda s: None)
    assert ref == f"{outputs['repository_url']}@{digest}"


def test_the_image_platform_follows_the_instance_type(ec2):
    assert cloud.instance_platform(ec2, "c7i.xlarge") == "linux/amd64"
    assert cloud.instance_platform(ec2, "c7g.xlarge") == "linux/arm64"


def test_a_stopped_instance_is_started_and_described(ec2, instance):
    ec2.stop_instances(InstanceIds=[instance])
    said = []
    inst = cloud.start_instance(ec2, instance, timeout=30, poll=0.2, echo=said.append)
    assert inst["State"]["Name"] == "running" and inst["InstanceType"] == "c7i.xlarge"
    assert said == [f"    starting {instance}"]
    with pytest.raises(OpsError, match="is gone.*make deploy"):
        cloud.describe_instance(ec2, "i-0123456789abcdef0")


def test_ssm_wait_names_the_cause_when_ssm_never_sees_the_instance(aws_env, instance):
    # moto has no DescribeInstanceInformation (it answers 500): the wait ends with the hint.
    ssm = aws.client("ssm", "us-east-1", attempts=1)
    with pytest.raises(OpsError, match="SSM does not see instance.*AmazonSSMManagedInstanceCore"):
        cloud.wait_ssm(ssm, instance, timeout=0.5, poll=0.2)


def test_the_run_starts_through_ssm_run_command(outputs, s3_client):
    """After this checkout's bootstrap.sh and the stack's time limits reach the instance
    (cloud-init ran the user data once, at its first boot)."""
    backend = cloud.AwsBackend(load(backend="aws"))
    args = ["--data", f"s3://{outputs['bucket']}/data/demo/", "--epochs", "5", "--lr", "1e-3"]
    digest = f"{outputs['repository_url']}@sha256:{'e' * 64}"
    backend.start_run(outputs, "20250101-120000-ab12", digest, args, echo=lambda s: None)
    ssm = aws.client("ssm", "us-east-1")
    [cmd] = ssm.list_commands(InstanceId=outputs["instance_id"])["Commands"]
    assert cmd["DocumentName"] == "AWS-RunShellScript"
    assert cmd["Comment"] == "ave run 20250101-120000-ab12"
    [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=outputs["bucket"],
                                                         Prefix="ops/")["Contents"]]
    assert key.startswith("ops/bootstrap-") and key.endswith(".sh")
    body = s3_client.get_object(Bucket=outputs["bucket"], Key=key)["Body"].read()
    # bootstrap-run.sh, then bootstrap.sh: one text, as the user data carries them
    assert body == b"".join((REPO / "scripts" / name).read_bytes()
                            for name in ("bootstrap-run.sh", "bootstrap.sh"))
    assert cmd["Parameters"]["commands"] == [
        "cloud-init status --wait >/dev/null 2>&1 || true; "
        f"aws s3 cp --quiet --region us-east-1 s3://{outputs['bucket']}/{key} "
        "/root/ave-bootstrap.sh && "
        "env AVE_IDLE_MINUTES=5 AVE_MAX_RUN_HOURS=3 bash /root/ave-bootstrap.sh update && "
        f"/usr/local/sbin/ave-bootstrap run --image {digest} 20250101-120000-ab12 --data "
        f"s3://{outputs['bucket']}/data/demo/ --epochs 5 --lr 1e-3"]
    # moto finishes commands at once, so none is left in progress to report as a run going.
    assert backend.active_run(outputs) is None

    backend.stop_run(outputs, "20250101-120000-ab12", echo=lambda s: None)
    last = ssm.list_commands(InstanceId=outputs["instance_id"])["Commands"][-1]
    assert last["Parameters"]["commands"][0].endswith("; /usr/local/sbin/ave-bootstrap stop")


def test_a_failed_ssm_command_reports_its_output(aws_env):
    class Ssm:  # a failed invocation, as SSM reports one (moto's always succeed)
        def get_command_invocation(self, **kw):
            return {"Status": "Failed", "ResponseCode": 3, "StandardErrorContent":
                    "ave-bootstrap: ERROR: run r1 is going; stop it first (bootstrap.sh stop)"}

    with pytest.raises(OpsError, match=r"ended Failed \(exit 3\).*run r1 is going"):
        cloud.wait_command(Ssm(), "cmd", "i-1", timeout=5)


def test_cloudwatch_logs_tail_and_follow(outputs):
    logs = aws.client("logs", "us-east-1")
    group, stream = outputs["log_group"], "20250101-120000-ab12"
    assert cloud.log_events(logs, group, stream) is None  # no stream yet: no logs
    logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def put(first, n):
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": now + i, "message": f"line {first + i}"} for i in range(n)])

    put(0, 5)
    assert list(cloud.log_events(logs, group, stream, tail=3)) == ["line 2", "line 3", "line 4"]

    polls = []

    def done():  # first poll: two more lines arrive; second: the run has ended
        polls.append(1)
        if len(polls) == 1:
            put(5, 2)
        return len(polls) > 1

    lines = list(cloud.log_events(logs, group, stream, tail=2, follow=True, done=done, poll=0))
    assert lines == ["line 3", "line 4", "line 5", "line 6"]


def test_prices_spot_from_history_on_demand_falls_back_with_a_note(aws_env):
    spot = pricing.hourly_price("c7i.xlarge", "us-east-1", spot_market=True, zone="us-east-1a")
    assert spot.source.startswith("spot, EC2 spot price history") and spot.usd_per_hour > 0
    # moto has no Price List API: the lookup fails and the built-in table answers, saying so.
    od = pricing.hourly_price("c7i.xlarge", "us-east-1")
    assert od.usd_per_hour == pricing.FALLBACK["c7i.xlarge"]
    assert "lookup unavailable" in od.note and "built-in table" in od.source
    unknown = pricing.hourly_price("x9.huge", "us-east-1")
    assert unknown.usd_per_hour is None and "not in the built-in table" in unknown.note
    assert pricing.cost(od, 7200) == pytest.approx(2 * pricing.FALLBACK["c7i.xlarge"])


def test_host_facts_of_the_aws_backend(outputs):
    host = cloud.AwsBackend(load(backend="aws")).host(outputs)
    assert host["state"] == "running" and "c7i.xlarge" in host["where"]
    assert host["price"].usd_per_hour == pricing.FALLBACK["c7i.xlarge"]
    assert host["instance_cpu_percent"] is None  # no CloudWatch point in moto


def test_destroy_cancels_the_persistent_spot_request(ec2):
    req = ec2.request_spot_instances(Type="persistent", LaunchSpecification={
        "ImageId": AMI, "InstanceType": "c7i.xlarge"})["SpotInstanceRequests"][0]
    rid = req["SpotInstanceRequestId"]
    iid = ec2.describe_spot_instance_requests(
        SpotInstanceRequestIds=[rid])["SpotInstanceRequests"][0]["InstanceId"]
    assert cloud.cancel_spot_requests(ec2, iid) == [rid]
    left = ec2.describe_spot_instance_requests(
        Filters=[{"Name": "instance-id", "Values": [iid]}])["SpotInstanceRequests"]
    assert [r for r in left if r["State"] in ("open", "active")] == []  # moto drops it
    assert cloud.cancel_spot_requests(ec2, iid) == []


# --- Pulumi: the Automation API's arguments and its first-day errors ---------------------------

def test_the_automation_api_drives_the_program_in_infra():
    args = stack.workspace_args(load(stack="prod"))
    assert args == {"stack_name": "prod", "work_dir": str(REPO / "infra")}
    assert (Path(args["work_dir"]) / "Pulumi.yaml").is_file()


def test_no_pulumi_cli_is_one_line_saying_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OpsError, match="Pulumi CLI is not installed.*get.pulumi.com"):
        stack.select(load())


def fake_pulumi(folder: Path, stderr: str) -> None:
    """A `pulumi` on PATH that reports a version and then fails as the real CLI does."""
    script = folder / "pulumi"
    script.write_text("#!/bin/sh\n"
                      'if [ "$1" = version ]; then echo v3.200.0; exit 0; fi\n'
                      f"echo '{stderr}' >&2\nexit 255\n")
    script.chmod(0o755)


def test_a_stack_not_yet_created_says_pulumi_stack_init(monkeypatch, tmp_path):
    fake_pulumi(tmp_path, "error: no stack named 'dev' found")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(OpsError, match=r"no Pulumi stack 'dev' yet.*pulumi stack init dev"):
        stack.select(load(stack="dev"))


def test_a_cli_not_logged_in_says_pulumi_login(monkeypatch, tmp_path):
    fake_pulumi(tmp_path, "error: PULUMI_ACCESS_TOKEN must be set for login during "
                          "non-interactive CLI sessions")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(OpsError, match="not logged in.*pulumi login --local"):
        stack.select(load())


def test_deploy_on_aws_without_pulumi_names_the_step(aws_env, tmp_path):
    env = dict(aws_env, PATH=str(Path(sys.executable).parent))  # python, no pulumi
    (tmp_path / "demo-data").mkdir()  # the default DATA, checked before anything else
    proc = subprocess.run([sys.executable, "-m", "trainer", "deploy", "--backend", "aws"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: step 1/7 (checking credentials, tools and the Docker "
                                  "engine) failed: the Pulumi CLI is not installed")
    assert "Traceback" not in proc.stderr


def test_no_docker_engine_is_one_line_saying_how_to_start_one(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(OpsError, match="no Docker engine answers.*scripts/docker-engine.sh"):
        image.engine()


def test_deploy_without_a_docker_engine_names_the_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DOCKER_HOST="unix:///nonexistent/docker.sock", AVE_STATE_DIR=str(tmp_path))
    (tmp_path / "demo-data").mkdir()  # the default DATA, checked before anything else
    proc = subprocess.run([sys.executable, "-m", "trainer", "deploy", "--backend", "local"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: step 1/7 (checking credentials, tools and the Docker "
                                  "engine) failed: no Docker engine answers")


def test_the_build_context_is_what_dockerignore_lets_in(tmp_path):
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    files = image.context_files(REPO, wheel)
    assert {"Dockerfile", "pyproject.toml", "trainer/cli.py", "trainer/ops/cli.py",
            f"wheels/{wheel.name}"} <= set(files)
    assert not any(n.startswith(("tests/", "infra/", ".venv/")) or n.endswith(".pyc")
                   for n in files)
    assert image.find_wheel([str(tmp_path / "torch-*+cpu-*.whl")]) == wheel
    assert image.find_wheel([str(tmp_path / "nothing-*.whl")]) is None


def test_boto3_here_talks_to_moto_only(aws_env):
    # Guard for the tests above: a client from the default session would reach moto too.
    assert boto3.session.Session().client("s3").meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


class FakeStack:
    """The Automation API's Stack, as far as ``stack.destroy`` uses it; ``fail`` names the call
    that raises CommandError (the Pulumi CLI is not installed here)."""

    def __init__(self, config: dict, fail: str | None = None):
        self.config, self.fail, self.calls = dict(config), fail, []

    def _call(self, name):
        from pulumi import automation as auto

        self.calls.append(name)
        if name == self.fail:
            raise auto.CommandError(auto.CommandResult("", f"error: {name} failed", 255))

    def get_all_config(self):
        return dict(self.config)

    def set_config(self, key, value):
        self.config[f"ave:{key}"] = value

    def remove_config(self, key):
        self.config.pop(f"ave:{key}", None)

    def up(self, on_output=None):
        self._call("up")

    def destroy(self, on_output=None):
        self._call("destroy")


@pytest.mark.parametrize("fail", [None, "up", "destroy"])
def test_destroy_never_leaves_force_destroy_set(fail):
    from pulumi import automation as auto

    fake = FakeStack({"aws:region": auto.ConfigValue("eu-west-1")}, fail=fail)
    if fail:
        with pytest.raises(OpsError, match=f"pulumi failed on stack 'dev': .*{fail} failed"):
            stack.destroy(load(stack="dev"), on_output=lambda s: None, stack=fake)
    else:
        stack.destroy(load(stack="dev"), on_output=lambda s: None, stack=fake)
    assert fake.calls == (["up"] if fail == "up" else ["up", "destroy"])
    assert {k: v.value for k, v in fake.config.items()} == {"aws:region": "eu-west-1"}


def test_destroy_puts_back_a_force_destroy_the_user_set():
    from pulumi import automation as auto

    fake = FakeStack({"ave:forceDestroy": auto.ConfigValue("false")}, fail="destroy")
    with pytest.raises(OpsError):
        stack.destroy(load(stack="dev"), on_output=lambda s: None, stack=fake)
    assert {k: v.value for k, v in fake.config.items()} == {"ave:forceDestroy": "false"}
