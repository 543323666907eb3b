"""Unit tests of the Pulumi program in infra/ (DESIGN.md section 5), run under Pulumi's mocks.

The Pulumi engine cannot run here (no AWS account), so each config case runs infra/__main__.py
the way the Pulumi CLI does (runpy over the folder, infra/ first on sys.path) after
`pulumi.runtime.set_mocks`. The mocks record every resource the program registers (type,
logical name, inputs, ignore_changes) and answer its invokes (getAmi, getCallerIdentity,
getPartition; any other invoke fails the run). `deploy(config)` runs the program inside
`@pulumi.runtime.test`, which returns only once every registration has finished, and resolves
the exports with `Output.all(...).apply`; the tests then check policies over *all* resources
of a type, so an added ingress rule or a wildcard grant anywhere fails them.

    .venv/bin/python -m pytest tests/test_infra.py -q

Input keys are the engine's camelCase names (`metadataOptions.httpTokens`), as the mocks see them.
"""

from __future__ import annotations

import base64
import gzip
import importlib
import inspect
import json
import re
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pytest
import yaml
from pulumi.runtime.mocks import MockMonitor

# pulumi_aws warns at import about classes this program does not use.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")

INFRA = Path(__file__).resolve().parent.parent / "infra"
PULUMI_YAML = yaml.safe_load((INFRA / "Pulumi.yaml").read_text())
PROJECT = PULUMI_YAML["name"]
STACK = "test"
TAGS = {"project": PROJECT, "stack": STACK, "managed-by": "pulumi"}
INFRA_MODULES = sorted(p.stem for p in INFRA.glob("*.py") if p.stem != "__main__")

ACCOUNT, REGION, AMI = "123456789012", "us-east-1", "ami-0a1b2c3d4e5f67890"
EXPORTS = {"bucket", "repository_url", "instance_id", "log_group", "region", "idle_minutes",
           "max_run_hours"}
# The AWS Batch part of the stack (tests/test_infra_batch.py checks its resources and exports).
BATCH_EXPORTS = {"batch_job_queue", "batch_job_definition", "batch_job_definition_name",
                 "batch_compute_environment", "batch_max_vcpus", "batch_vcpus", "batch_memory_mib"}

BUCKET = "aws:s3/bucket:Bucket"
INSTANCE = "aws:ec2/instance:Instance"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
# The single instance's role, profile and policy, among the Batch ones of the same types.
INSTANCE_ROLE, INSTANCE_PROFILE, INSTANCE_POLICY = "ave-instance-role", "ave-instance-profile", "ave-instance-policy"

INVOKES = {
    "aws:ec2/getAmi:getAmi": {
        "id": AMI, "imageId": AMI, "architecture": "x86_64",
        "name": "al2023-ami-2023.6.20250101.0-kernel-6.1-x86_64",
    },
    "aws:index/getCallerIdentity:getCallerIdentity": {
        "id": ACCOUNT, "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "userId": "AIDACI",
    },
    "aws:index/getPartition:getPartition": {
        "id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsSuffix": "com.amazonaws",
    },
    "aws:ec2/getVpc:getVpc": {"id": "vpc-0default", "default": True, "cidrBlock": "172.31.0.0/16"},
    "aws:ec2/getSubnets:getSubnets": {"id": REGION, "ids": ["subnet-0a", "subnet-0b", "subnet-0c"]},
}


# ---- the mocks -------------------------------------------------------------------------------

@dataclass
class Resource:
    type: str
    name: str
    inputs: dict
    ignore_changes: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # what the mocks answered (names, ARNs)


def computed_state(typ: str, name: str) -> dict:
    """What AWS would fill in: the physical names and ARNs the program reads back."""
    physical = f"{name}-7c3d2a1"  # Pulumi's auto-naming adds a random suffix like this
    if typ == BUCKET:
        return {"bucket": physical, "arn": f"arn:aws:s3:::{physical}"}
    if typ == "aws:ecr/repository:Repository":
        return {"name": physical, "arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{physical}",
                "repositoryUrl": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{physical}"}
    if typ == "aws:cloudwatch/logGroup:LogGroup":
        return {"name": physical, "arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{physical}"}
    if typ == "aws:iam/role:Role":
        return {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT}:role/{physical}"}
    if typ == "aws:iam/instanceProfile:InstanceProfile":
        return {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/{physical}"}
    if typ == "aws:ec2/launchTemplate:LaunchTemplate":
        return {"arn": f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0{name}", "latestVersion": 1}
    if typ == "aws:batch/computeEnvironment:ComputeEnvironment":
        return {"name": physical, "arn": f"arn:aws:batch:{REGION}:{ACCOUNT}:compute-environment/{physical}",
                "ecsClusterArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/AWSBatch-{physical}-4f1e"}
    if typ == "aws:batch/jobQueue:JobQueue":
        return {"name": physical, "arn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/{physical}"}
    if typ == "aws:batch/jobDefinition:JobDefinition":
        return {"name": physical, "revision": 1,
                "arn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/{physical}:1"}
    return {}


class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: list[Resource] = []
        self.calls: list[tuple[str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = computed_state(args.typ, args.name)
        self.resources.append(Resource(args.typ, args.name, args.inputs, state=state))
        # Each resource's id is what `instance_id`/`id` resolve to.
        return f"{args.name}-id", {**args.inputs, **state}

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, args.args))
        if args.token not in INVOKES:
            raise NotImplementedError(f"the test mocks have no answer for the invoke {args.token}")
        return INVOKES[args.token], []


class Monitor(MockMonitor):
    """The mocks' monitor, also noting each resource's ignore_changes (the Mocks never see options)."""

    def __init__(self, mocks: Mocks):
        super().__init__(mocks)
        self.ignore_changes: dict[str, list[str]] = {}

    def RegisterResource(self, request):
        self.ignore_changes[request.name] = list(request.ignoreChanges)
        return super().RegisterResource(request)


@dataclass
class Stack:
    """One run of the program: every resource it made, the invokes it asked, its exports."""

    resources: list[Resource]
    calls: list[tuple[str, dict]]
    exports: dict

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Resource:
        """The one resource of `typ` (of that logical name, if given)."""
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def policy(self, typ: str, name: str | None = None) -> dict:
        return json.loads(self.one(typ, name).inputs["policy"])


@pytest.fixture(scope="module")
def deploy():
    """`deploy(config)` runs infra/ under the mocks with that stack config and returns a Stack."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(INFRA))  # as the Pulumi CLI runs it; the program never edits sys.path
        for name in INFRA_MODULES:
            mp.delitem(sys.modules, name, raising=False)
        yield run_program
        for name in INFRA_MODULES:  # before the context puts back any same-named module
            sys.modules.pop(name, None)


def run_program(config: dict[str, str] | None = None, mocks: Mocks | None = None) -> Stack:
    mocks = mocks or Mocks()
    monitor = Monitor(mocks)
    pulumi.runtime.reset_options()  # a fresh root stack, so no export survives from a run before
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config({
        (key if ":" in key else f"{PROJECT}:{key}"): str(value) for key, value in (config or {}).items()
    })
    exports: dict = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(INFRA), run_name="__main__")
        outputs = pulumi.runtime.get_root_resource().outputs
        return pulumi.Output.all(**outputs).apply(exports.update)

    program()  # returns when every resource registration has finished
    for r in mocks.resources:
        r.ignore_changes = monitor.ignore_changes.get(r.name, [])
    return Stack(mocks.resources, mocks.calls, exports)


@pytest.fixture(scope="module")
def stack(deploy) -> Stack:
    """The program with no config at all: every default."""
    return deploy()


# ---- the checks, as functions so that their own failing is tested too ------------------------

def ingress_problems(stack: Stack) -> list[str]:
    problems = [f"{g.name} has ingress {g.inputs['ingress']}"
                for g in stack.of_type(SECURITY_GROUP) if g.inputs.get("ingress")]
    problems += [f"{r.name} is an ingress rule" for r in stack.of_type(
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]
    problems += [f"{r.name} is an ingress rule" for r in stack.of_type(
        "aws:ec2/securityGroupRule:SecurityGroupRule") if r.inputs.get("type") == "ingress"]
    return problems


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# Actions AWS gives no resource-level permissions, so that only Resource "*" grants them.
UNSCOPABLE = {"ecr:GetAuthorizationToken",
              "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
              "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
              "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
              "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply"}
# The SSM agent's registration and heartbeat, on EC2 instances of this account and region.
SSM_AGENT = {"ssm:UpdateInstanceInformation"}
# S3 actions that change objects: only ever under runs/, where the run directories live, and
# features/, where train --media writes the clip files it extracts.
S3_WRITES = {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload",
             "s3:ListMultipartUploadParts", "s3:PutObjectAcl", "s3:RestoreObject"}


def grant_problems(policy: dict, *, bucket_arn: str, repo_arn: str, log_group_arn: str) -> list[str]:
    """Every grant scoped to this stack's bucket (writes to its runs/), repository, log group, or
    the SSM agent's own calls; nothing else, and nothing of SSM's parameters."""
    problems = []
    for st in policy["Statement"]:
        actions, resources = as_list(st["Action"]), as_list(st["Resource"])
        sid = st.get("Sid", actions)
        if st["Effect"] != "Allow" or "NotAction" in st or "NotResource" in st:
            problems.append(f"{sid}: only plain Allow statements expected")
        if any(a == "*" or a.endswith(":*") for a in actions):
            problems.append(f"{sid}: wildcard action in {actions}")
        if "*" in resources and not set(actions) <= UNSCOPABLE:
            problems.append(f"{sid}: Resource '*' for {sorted(set(actions) - UNSCOPABLE)}")
        for action in actions:
            service = action.split(":")[0]
            if action in UNSCOPABLE:
                allowed = {"*"}
            elif action in S3_WRITES:
                allowed = {f"{bucket_arn}/runs/*", f"{bucket_arn}/features/*"}
            elif service == "s3":
                allowed = {bucket_arn, f"{bucket_arn}/*"}
            elif service == "ecr":
                allowed = {repo_arn}
            elif service == "logs":
                allowed = {log_group_arn, f"{log_group_arn}:log-stream:*"}
            elif action in SSM_AGENT:
                allowed = {f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"}
            else:
                problems.append(f"{sid}: unexpected action {action}")
                continue
            if not set(resources) <= allowed:
                problems.append(f"{sid}: {action} on {sorted(set(resources) - allowed)}")
    return problems


def _iam_match(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM's wildcards: `*` any run of characters (slashes too), `?` any one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement of `policy` grants `action` on `resource` in some request,
    matching as IAM does (actions ignore case, resources do not). A statement with a Condition
    counts as granting: some request meets it."""
    return any(
        st["Effect"] == "Allow"
        and any(_iam_match(a, action, ignore_case=True) for a in as_list(st["Action"]))
        and any(_iam_match(r, resource, ignore_case=False) for r in as_list(st["Resource"]))
        for st in policy["Statement"])


def taggable(typ: str) -> bool:
    """True if the pulumi-aws resource class of this type token takes `tags`."""
    module, name = typ.split(":")[1].split("/")[0], typ.split(":")[2]
    package = importlib.import_module("pulumi_aws" if module == "index" else f"pulumi_aws.{module}")
    return "tags" in inspect.signature(getattr(package, name)._internal_init).parameters


# ---- exports and config ------------------------------------------------------------------------

def test_exports_are_exactly_what_the_operator_reads(stack):
    assert set(stack.exports) == EXPORTS | BATCH_EXPORTS
    bucket = stack.one(BUCKET).state["bucket"]
    repo = stack.one("aws:ecr/repository:Repository").state
    log_group = stack.one("aws:cloudwatch/logGroup:LogGroup").state["name"]
    assert {k: v for k, v in stack.exports.items() if k in EXPORTS} == {
        "bucket": bucket,
        "repository_url": repo["repositoryUrl"],
        "instance_id": "ave-trainer-id",
        "log_group": log_group,
        "region": "us-east-1",
        "idle_minutes": 20,
        "max_run_hours": 12,
    }


def test_pulumi_yaml_defaults_are_the_programs_defaults(deploy, stack):
    """Pulumi.yaml and settings.py state each default twice; a run with either gives one stack."""
    config = {}
    for key, entry in PULUMI_YAML["config"].items():
        value = entry["default"] if isinstance(entry, dict) else entry
        config[key] = str(value).lower() if isinstance(value, bool) else str(value)  # as `config set`
    assert set(config) == {"aws:region", "instanceType", "spot", "rootVolumeGb", "idleMinutes",
                           "maxRunHours", "logRetentionDays", "keepImages", "forceDestroy",
                           "batchSpot", "batchMaxVcpus", "batchVcpus", "batchMemoryMib",
                           "batchInstanceTypes", "batchAttempts"}
    with_yaml = deploy(config)
    assert {(r.type, r.name): r.inputs for r in with_yaml.resources} == \
        {(r.type, r.name): r.inputs for r in stack.resources}
    assert with_yaml.exports == stack.exports


def test_invalid_config_fails_before_anything_is_made(deploy):
    mocks = Mocks()
    with pytest.raises(pulumi.RunError, match="logRetentionDays=8"):
        deploy({"logRetentionDays": "8"}, mocks=mocks)
    assert mocks.resources == []


def test_region_comes_from_aws_region(deploy):
    s = deploy({"aws:region": "eu-west-1"})
    assert s.exports["region"] == "eu-west-1"
    assert "AVE_REGION=eu-west-1 " in user_data(s.one(INSTANCE).inputs)


# ---- network: nothing comes in -------------------------------------------------------------

def test_no_ingress_anywhere(stack):
    assert stack.of_type(SECURITY_GROUP), "the program should make a security group"
    assert ingress_problems(stack) == []


def test_the_ingress_check_catches_an_added_rule(stack):
    rule = Resource("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "ssh",
                    {"fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"})
    opened = Stack(stack.resources + [rule], stack.calls, stack.exports)
    assert "ssh is an ingress rule" in ingress_problems(opened)


def test_egress_is_open_for_s3_ecr_and_ssm(stack):
    (rule,) = stack.one(SECURITY_GROUP).inputs["egress"]
    assert rule["protocol"] == "-1" and rule["cidrBlocks"] == ["0.0.0.0/0"]


def test_instance_is_reached_only_through_ssm(stack):
    instance = stack.one(INSTANCE).inputs
    assert "keyName" not in instance  # no SSH key pair
    assert instance["vpcSecurityGroupIds"] == [f"{stack.one(SECURITY_GROUP).name}-id"]


# ---- the instance ----------------------------------------------------------------------------

def test_instance_requires_imdsv2_with_a_hop_for_the_container(stack):
    metadata = stack.one(INSTANCE).inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata["httpPutResponseHopLimit"] == 2
    assert metadata.get("httpEndpoint", "enabled") == "enabled"


def test_root_volume_is_encrypted_gp3_sized_from_config(deploy, stack):
    root = stack.one(INSTANCE).inputs["rootBlockDevice"]
    assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["volumeSize"] == 30
    assert deploy({"rootVolumeGb": "80"}).one(INSTANCE).inputs["rootBlockDevice"]["volumeSize"] == 80


def test_instance_stops_rather_than_terminates_on_shutdown(stack):
    assert stack.one(INSTANCE).inputs["instanceInitiatedShutdownBehavior"] == "stop"


def test_instance_runs_current_amazon_linux_2023_and_keeps_it(stack):
    (args,) = [a for token, a in stack.calls if token == "aws:ec2/getAmi:getAmi"]
    assert args["owners"] == ["amazon"] and args["mostRecent"] is True
    assert {"name": "name", "values": ["al2023-ami-2023.*-x86_64"]} in args["filters"]
    instance = stack.one(INSTANCE)
    assert instance.inputs["ami"] == AMI
    assert "ami" in instance.ignore_changes  # a new release must not replace the instance


def test_instance_type_defaults_to_a_current_cpu_type(deploy, stack):
    assert stack.one(INSTANCE).inputs["instanceType"] == "c7i.xlarge"
    assert deploy({"instanceType": "c7i.2xlarge"}).one(INSTANCE).inputs["instanceType"] == "c7i.2xlarge"


def test_on_demand_by_default_and_persistent_stopping_spot_when_asked(deploy, stack):
    assert "instanceMarketOptions" not in stack.one(INSTANCE).inputs
    spot = deploy({"spot": "true"}).one(INSTANCE).inputs
    assert spot["instanceMarketOptions"] == {
        "marketType": "spot",
        "spotOptions": {"instanceInterruptionBehavior": "stop", "spotInstanceType": "persistent"},
    }
    assert spot["instanceInitiatedShutdownBehavior"] == "stop"


def test_instance_gets_the_stack_role(stack):
    profile = stack.one("aws:iam/instanceProfile:InstanceProfile", INSTANCE_PROFILE)
    role = stack.one("aws:iam/role:Role", INSTANCE_ROLE)
    assert stack.one(INSTANCE).inputs["iamInstanceProfile"] == profile.state["name"]
    assert profile.inputs["role"] == role.state["name"]
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]


# ---- user data ----------------------------------------------------------------------------------

def bootstrap_text() -> str:
    """The bootstrap as the instance gets it: its files as one text, bootstrap-run.sh first."""
    return "".join(path.read_text() for path in importlib.import_module("compute").BOOTSTRAP)


def user_data(inputs: dict) -> str:
    """The instance's user data as the instance sees it: base64, then gunzip (as cloud-init)."""
    packed = base64.b64decode(inputs["userDataBase64"])
    assert len(packed) <= 16 * 1024  # EC2's limit
    return gzip.decompress(packed).decode()


def test_user_data_is_the_env_line_then_the_bootstrap_script(stack):
    instance = stack.one(INSTANCE).inputs
    shebang, env, rest = user_data(instance).split("\n", 2)
    assert shebang == "#!/bin/bash"
    assert env == (
        f"export AVE_BUCKET={stack.exports['bucket']} AVE_REGION=us-east-1 "
        f"AVE_REPO_URL={stack.exports['repository_url']} AVE_LOG_GROUP={stack.exports['log_group']} "
        "AVE_MAX_RUN_HOURS=12 AVE_IDLE_MINUTES=20"
    )
    assert rest == bootstrap_text()
    assert [path.name for path in importlib.import_module("compute").BOOTSTRAP] == [
        "bootstrap-run.sh", "bootstrap.sh"]
    assert instance["userDataReplaceOnChange"] is False


def test_user_data_carries_the_time_limits_from_config(deploy):
    s = deploy({"maxRunHours": "3", "idleMinutes": "5"})
    assert " AVE_MAX_RUN_HOURS=3 AVE_IDLE_MINUTES=5\n" in user_data(s.one(INSTANCE).inputs)
    # and the exports, which deploy brings to an existing instance (bootstrap.sh update)
    assert (s.exports["max_run_hours"], s.exports["idle_minutes"]) == (3, 5)


def test_a_user_data_change_never_stops_or_replaces_the_instance(stack):
    """cloud-init reads user data at the first boot only; an update of it would stop and start
    the instance (cutting a run short) for nothing. deploy pushes bootstrap.sh and the settings
    through SSM instead."""
    instance = stack.one(INSTANCE)
    assert instance.inputs["userDataReplaceOnChange"] is False
    assert "userDataBase64" in instance.ignore_changes


@pytest.mark.parametrize("name", ["bootstrap.sh", "bootstrap-run.sh"])
def test_missing_bootstrap_script_fails_with_a_clear_error(deploy, monkeypatch, tmp_path, name):
    compute = importlib.import_module("compute")
    monkeypatch.setattr(compute, "BOOTSTRAP", tuple(tmp_path / name if path.name == name else path
                                                    for path in compute.BOOTSTRAP))
    mocks = Mocks()
    with pytest.raises(pulumi.RunError, match=rf"{re.escape(name)} is missing"):
        deploy(mocks=mocks)
    assert mocks.resources == []


# ---- the bucket ----------------------------------------------------------------------------------

def bucket_settings(stack: Stack, typ: str) -> dict:
    """The one settings resource of `typ`, checked to point at the stack's bucket."""
    found = stack.one(typ).inputs
    assert found["bucket"] == f"{stack.one(BUCKET).name}-id"
    return found


def test_bucket_blocks_every_kind_of_public_access(stack):
    block = bucket_settings(stack, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for key in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block[key] is True, key


def test_bucket_is_encrypted_at_rest(stack):
    sse = bucket_settings(stack, "aws:s3/bucketServerSideEncryptionConfiguration:"
                                 "BucketServerSideEncryptionConfiguration")
    (rule,) = sse["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in ("AES256", "aws:kms")


def test_bucket_is_versioned(stack):
    versioning = bucket_settings(stack, "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["versioningConfiguration"]["status"] == "Enabled"


def test_bucket_policy_denies_requests_without_tls(stack):
    bucket_settings(stack, "aws:s3/bucketPolicy:BucketPolicy")
    arn = stack.one(BUCKET).state["arn"]
    denies = [s for s in stack.policy("aws:s3/bucketPolicy:BucketPolicy")["Statement"]
              if s["Effect"] == "Deny"
              and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert denies, "no statement denies aws:SecureTransport=false"
    (deny,) = denies
    assert deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert set(deny["Resource"]) == {arn, f"{arn}/*"}


def test_old_checkpoint_versions_expire(stack):
    lifecycle = bucket_settings(stack, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    runs = [r for r in lifecycle["rules"] if r["status"] == "Enabled" and r["filter"]["prefix"] == "runs/"]
    assert runs and runs[0]["noncurrentVersionExpiration"]["noncurrentDays"] > 0


def test_force_destroy_is_off_unless_configured(deploy, stack):
    assert stack.one(BUCKET).inputs["forceDestroy"] is False
    assert stack.one("aws:ecr/repository:Repository").inputs["forceDelete"] is False
    forced = deploy({"forceDestroy": "true"})
    assert forced.one(BUCKET).inputs["forceDestroy"] is True
    assert forced.one("aws:ecr/repository:Repository").inputs["forceDelete"] is True


# ---- registry and logs -----------------------------------------------------------------------------

def test_repository_scans_on_push_and_keeps_the_last_images(deploy, stack):
    repo = stack.one("aws:ecr/repository:Repository")
    assert repo.inputs["imageScanningConfiguration"]["scanOnPush"] is True
    lifecycle = stack.one("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle.inputs["repository"] == repo.state["name"]
    (rule,) = json.loads(lifecycle.inputs["policy"])["rules"]
    assert rule["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10}
    assert rule["action"] == {"type": "expire"}
    fewer = deploy({"keepImages": "3"}).policy("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert fewer["rules"][0]["selection"]["countNumber"] == 3


def test_log_group_retention_from_config(deploy, stack):
    assert stack.one("aws:cloudwatch/logGroup:LogGroup").inputs["retentionInDays"] == 30
    assert deploy({"logRetentionDays": "7"}).one("aws:cloudwatch/logGroup:LogGroup").inputs[
        "retentionInDays"] == 7


# ---- permissions -----------------------------------------------------------------------------------

def stack_arns(stack: Stack) -> dict[str, str]:
    return {
        "bucket_arn": stack.one(BUCKET).state["arn"],
        "repo_arn": stack.one("aws:ecr/repository:Repository").state["arn"],
        "log_group_arn": stack.one("aws:cloudwatch/logGroup:LogGroup").state["arn"],
    }


def test_role_grants_only_this_stacks_resources(stack):
    policy = stack.one(ROLE_POLICY, INSTANCE_POLICY)
    assert policy.inputs["role"] == f"{INSTANCE_ROLE}-id"
    assert grant_problems(stack.policy(ROLE_POLICY, INSTANCE_POLICY), **stack_arns(stack)) == []
    granted = {a for s in stack.policy(ROLE_POLICY, INSTANCE_POLICY)["Statement"] for a in as_list(s["Action"])}
    # What the run needs: its data and run directory, its image, its logs, and the SSM agent's
    # calls that let `make deploy` start it through Run Command.
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:GetAuthorizationToken",
            "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "logs:CreateLogStream",
            "logs:PutLogEvents", "ssm:UpdateInstanceInformation"} | UNSCOPABLE <= granted


def test_the_grant_check_catches_a_wildcard(stack):
    policy = stack.policy(ROLE_POLICY, INSTANCE_POLICY)
    arn = stack_arns(stack)["bucket_arn"]
    policy["Statement"] += [
        {"Sid": "AnyObject", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Sid": "OtherLogs", "Effect": "Allow", "Action": "logs:PutLogEvents",
         "Resource": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:other:*"},
        {"Sid": "AllOfS3", "Effect": "Allow", "Action": "s3:*", "Resource": arn},
        {"Sid": "WriteAnywhere", "Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{arn}/*"},
        {"Sid": "DeleteData", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": f"{arn}/data/*"},
        {"Sid": "Parameters", "Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:GetParameters"],
         "Resource": "*"},
        {"Sid": "StopAny", "Effect": "Allow", "Action": "ec2:StopInstances",
         "Resource": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"},
    ]
    flagged = {problem.split(":")[0] for problem in grant_problems(policy, **stack_arns(stack))}
    assert flagged >= {"AnyObject", "OtherLogs", "AllOfS3", "WriteAnywhere", "DeleteData",
                       "Parameters", "StopAny"}


def test_runs_write_only_their_run_directories(stack):
    """A run may read the data set and write under runs/ (and features/, what it extracts from
    raw media), but never overwrite or delete the data set or the media (or write anywhere else
    in the bucket)."""
    policy, arn = stack.policy(ROLE_POLICY, INSTANCE_POLICY), stack_arns(stack)["bucket_arn"]
    assert allows(policy, "s3:GetObject", f"{arn}/data/demo/1001_DFA_ANG_XX.npz")
    assert allows(policy, "s3:GetObject", f"{arn}/runs/r1/checkpoints/last.pt")  # resume
    assert allows(policy, "s3:PutObject", f"{arn}/runs/r1/checkpoints/last.pt")
    assert allows(policy, "s3:AbortMultipartUpload", f"{arn}/runs/r1/checkpoints/best.pt")
    assert allows(policy, "s3:PutObject", f"{arn}/features/crema-0a1b-2c3d/1001_DFA_ANG_XX.npz")
    assert allows(policy, "s3:GetObject", f"{arn}/media/crema-0a1b/VideoFlash/1001_DFA_ANG_XX.flv")
    for key in ("data/demo/1001_DFA_ANG_XX.npz", "data/manifest.csv", "other.txt", "runsx/a",
                "media/crema-0a1b/VideoFlash/1001_DFA_ANG_XX.flv", "featuresx/a"):
        assert not allows(policy, "s3:PutObject", f"{arn}/{key}"), key
    for key in ("data/demo/1001_DFA_ANG_XX.npz", "runs/r1/summary.json",
                "features/crema-0a1b-2c3d/1001_DFA_ANG_XX.npz"):
        assert not allows(policy, "s3:DeleteObject", f"{arn}/{key}"), key
    assert not allows(policy, "s3:PutObject", "arn:aws:s3:::another-bucket/runs/r1/x")


def test_the_instance_reads_the_uploaded_encoder_models_and_cannot_change_them(stack):
    """``make deploy EXTRACT='--audio wavlm --audio-model DIR'`` uploads the model to
    models/NAME-HASH/ (the image carries no weights): the run on the instance reads it there,
    and can neither overwrite nor delete it."""
    policy, arn = stack.policy(ROLE_POLICY, INSTANCE_POLICY), stack_arns(stack)["bucket_arn"]
    for key in ("models/wavlm-base-plus-0123456789ab/model.safetensors",
                "models/enet_b0_8_best_vgaf-0123456789ab/enet_b0_8_best_vgaf.onnx"):
        assert allows(policy, "s3:GetObject", f"{arn}/{key}"), key
        assert not allows(policy, "s3:PutObject", f"{arn}/{key}"), key
        assert not allows(policy, "s3:DeleteObject", f"{arn}/{key}"), key
    assert allows(policy, "s3:ListBucket", arn)  # the model folder's sync into the cache


def test_no_managed_policy_and_no_ssm_parameters(stack):
    """No AWS managed policy (AmazonSSMManagedInstanceCore reads every SSM parameter of the
    account): only the inline policy, which grants the SSM agent's calls and no parameter."""
    assert stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == []
    assert stack.of_type("aws:iam/policyAttachment:PolicyAttachment") == []
    assert "managedPolicyArns" not in stack.one("aws:iam/role:Role", INSTANCE_ROLE).inputs
    policy = stack.policy(ROLE_POLICY, INSTANCE_POLICY)
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/db-password"
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath",
                   "ssm:SendCommand", "ssm:StartSession", "kms:Decrypt",
                   "secretsmanager:GetSecretValue"):
        assert not allows(policy, action, parameter), action
        assert not allows(policy, action, "*"), action
    instance = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0"
    assert allows(policy, "ssm:UpdateInstanceInformation", instance)
    for action in UNSCOPABLE - {"ecr:GetAuthorizationToken"}:  # Run Command's delivery
        assert allows(policy, action, "*"), action


def test_instance_cannot_stop_instances_through_iam(stack):
    """The instance stops itself with `shutdown` (bootstrap.sh), which needs no IAM; no grant to
    stop any instance is left that a container could use on others."""
    assert re.search(r"^\s*shutdown\b", bootstrap_text(), re.MULTILINE)
    assert "stop-instances" not in bootstrap_text()
    assert not allows(stack.policy(ROLE_POLICY, INSTANCE_POLICY), "ec2:StopInstances",
                      f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0")


# ---- tags -------------------------------------------------------------------------------------------

def test_every_taggable_resource_has_the_common_tags(stack):
    tagged = [r for r in stack.resources if taggable(r.type)]
    assert {r.type for r in tagged} >= {BUCKET, INSTANCE, SECURITY_GROUP, "aws:iam/role:Role",
                                        "aws:ecr/repository:Repository", "aws:cloudwatch/logGroup:LogGroup"}
    for r in tagged:
        assert TAGS.items() <= r.inputs.get("tags", {}).items(), f"{r.type} {r.name} lacks the common tags"
    assert TAGS.items() <= stack.one(INSTANCE).inputs["rootBlockDevice"]["tags"].items()


def test_logical_names_are_kebab_case(stack):
    for r in stack.resources:
        assert r.name == r.name.lower() and "_" not in r.name, r.name
