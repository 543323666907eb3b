"""Unit tests of the AWS Batch part of the Pulumi program (infra/batch.py, the Batch roles of
infra/iam.py), under Pulumi's mocks, as tests/test_infra.py runs the whole program: the Pulumi
engine cannot run here (no AWS account). The mocks, the `deploy` and `stack` fixtures and the
policy helpers are test_infra.py's own.

    .venv/bin/python -m pytest tests/test_infra_batch.py -q
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pulumi
import pytest

from test_infra import (ACCOUNT, REGION, SECURITY_GROUP, TAGS, Mocks, Stack, allows, as_list,  # noqa: F401
                        deploy, ingress_problems, stack, taggable)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"

COMPUTE = "aws:batch/computeEnvironment:ComputeEnvironment"
QUEUE = "aws:batch/jobQueue:JobQueue"
JOB = "aws:batch/jobDefinition:JobDefinition"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
ROLE = "aws:iam/role:Role"
PROFILE = "aws:iam/instanceProfile:InstanceProfile"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"

# The Batch roles and their inline policies, by logical name.
JOB_ROLE, JOB_POLICY = "ave-batch-job-role", "ave-batch-job-policy"
EXEC_ROLE, EXEC_POLICY = "ave-batch-execution-role", "ave-batch-execution-policy"
NODE_ROLE, NODE_PROFILE, NODE_POLICY = "ave-batch-instance-role", "ave-batch-instance-profile", "ave-batch-instance-policy"
BATCH_POLICIES = (JOB_POLICY, EXEC_POLICY, NODE_POLICY)

# The only actions AWS gives no resource-level permissions among those the Batch roles need.
UNSCOPABLE = {"ecr:GetAuthorizationToken", "ecs:DiscoverPollEndpoint"}


def container(s: Stack) -> dict:
    return json.loads(s.one(JOB).inputs["containerProperties"])


def environment(s: Stack) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(s)["environment"]}


def arns(s: Stack) -> dict[str, str]:
    return {
        "bucket": s.one("aws:s3/bucket:Bucket").state["arn"],
        "repo": s.one("aws:ecr/repository:Repository").state["arn"],
        "log_group": s.one("aws:cloudwatch/logGroup:LogGroup").state["arn"],
        "cluster": s.one(COMPUTE).state["ecsClusterArn"],
    }


# ---- the checks, as functions so that their own failing is tested too -------------------------

def batch_grant_problems(s: Stack, policies: dict[str, dict] | None = None) -> list[str]:
    """Every grant of the three Batch roles scoped to this stack: S3 reads under data/ and runs/,
    writes under runs/ only, ECR on the stack's repository, logs on its log group's Batch
    streams, ECS on the compute environment's own cluster; Resource "*" only where AWS allows
    nothing narrower."""
    a = arns(s)
    prefix, cluster_name = a["cluster"].split(":cluster/")
    allowed_by_service = {
        "ecr": {a["repo"]},
        "logs": {a["log_group"], f"{a['log_group']}:log-stream:batch/*"},
        "ecs": {a["cluster"], f"{prefix}:container-instance/{cluster_name}/*"},
    }
    s3_reads = {"s3:GetObject": {f"{a['bucket']}/data/*", f"{a['bucket']}/features/*",
                                 f"{a['bucket']}/runs/*"},
                "s3:ListBucket": {a["bucket"]}}
    problems = []
    policies = policies or {name: s.policy(ROLE_POLICY, name) for name in BATCH_POLICIES}
    for name, policy in policies.items():
        for st in policy["Statement"]:
            actions, resources = as_list(st["Action"]), as_list(st["Resource"])
            sid = f"{name}/{st.get('Sid', actions)}"
            if st["Effect"] != "Allow" or "NotAction" in st or "NotResource" in st:
                problems.append(f"{sid}: only plain Allow statements expected")
            for action in actions:
                if "*" in action:
                    problems.append(f"{sid}: wildcard action {action}")
                elif action in UNSCOPABLE:
                    if resources != ["*"]:
                        problems.append(f"{sid}: {action} takes only '*'")
                elif action in s3_reads:
                    if not set(resources) <= s3_reads[action]:
                        problems.append(f"{sid}: {action} on {sorted(set(resources) - s3_reads[action])}")
                elif action.startswith("s3:"):  # every other S3 action writes
                    if resources != [f"{a['bucket']}/runs/*"]:
                        problems.append(f"{sid}: {action} outside runs/: {resources}")
                elif action.split(":")[0] in allowed_by_service:
                    allowed = allowed_by_service[action.split(":")[0]]
                    if not set(resources) <= allowed:
                        problems.append(f"{sid}: {action} on {sorted(set(resources) - allowed)}")
                else:
                    problems.append(f"{sid}: unexpected action {action}")
    return problems


def batch_decides(rules: list[dict], *, status_reason: str = "", reason: str = "",
                  exit_code: int | None = None) -> str:
    """What Batch does with a failed attempt under `evaluateOnExit`, as documented: the first
    rule whose every given pattern matches decides (patterns match whole values, a trailing `*`
    any rest); no rule matching means RETRY."""
    fields = {"onStatusReason": status_reason, "onReason": reason,
              "onExitCode": "" if exit_code is None else str(exit_code)}
    for rule in rules:
        patterns = {k: v for k, v in rule.items() if k in fields}
        if all(fnmatch.fnmatchcase(fields[k], v) for k, v in patterns.items()):
            return rule["action"]
    return "RETRY"


# ---- exports -----------------------------------------------------------------------------------

def test_exports_are_what_the_ops_side_reads(stack):
    assert {k: v for k, v in stack.exports.items() if k.startswith("batch_")} == {
        "batch_job_queue": stack.one(QUEUE).state["arn"],
        "batch_job_definition": stack.one(JOB).state["arn"],
        "batch_job_definition_name": stack.one(JOB).state["name"],
        "batch_compute_environment": stack.one(COMPUTE).state["arn"],
        "batch_max_vcpus": 16,
        "batch_vcpus": 2,
        "batch_memory_mib": 7168,
    }


def test_exported_sizes_follow_config(deploy):
    s = deploy({"batchMaxVcpus": "32", "batchVcpus": "4", "batchMemoryMib": "14336"})
    assert (s.exports["batch_max_vcpus"], s.exports["batch_vcpus"], s.exports["batch_memory_mib"]) == (32, 4, 14336)


# ---- the compute environment -------------------------------------------------------------------

def test_spot_by_default_with_a_capacity_aware_allocation(stack):
    resources = stack.one(COMPUTE).inputs["computeResources"]
    assert resources["type"] == "SPOT"
    assert resources["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert "spotIamFleetRole" not in resources  # only BEST_FIT spot needs one
    assert "bidPercentage" not in resources  # spot never pays more than on-demand


def test_on_demand_with_the_switch(deploy):
    s = deploy({"batchSpot": "false"})
    resources = s.one(COMPUTE).inputs["computeResources"]
    assert resources["type"] == "EC2"
    assert resources["allocationStrategy"] == "BEST_FIT_PROGRESSIVE"
    assert "AVE_WATCH_SPOT" not in environment(s)  # no spot notices to watch for


def test_max_vcpus_is_the_cost_cap_from_config_and_nothing_idles(deploy, stack):
    resources = stack.one(COMPUTE).inputs["computeResources"]
    assert resources["maxVcpus"] == 16
    assert resources["minVcpus"] == 0
    assert resources.get("desiredVcpus", 0) == 0
    assert deploy({"batchMaxVcpus": "40"}).one(COMPUTE).inputs["computeResources"]["maxVcpus"] == 40


def test_compute_environment_is_managed_in_the_default_vpc_with_the_stack_group(stack):
    ce = stack.one(COMPUTE).inputs
    assert ce["type"] == "MANAGED" and ce["state"] == "ENABLED"
    assert "serviceRole" not in ce  # Batch's service-linked role
    resources = ce["computeResources"]
    assert resources["securityGroupIds"] == [f"{stack.one(SECURITY_GROUP).name}-id"]
    assert resources["subnets"] == ["subnet-0a", "subnet-0b", "subnet-0c"]
    (subnet_args,) = [a for token, a in stack.calls if token == "aws:ec2/getSubnets:getSubnets"]
    assert {"name": "vpc-id", "values": ["vpc-0default"]} in subnet_args["filters"]
    assert {"name": "default-for-az", "values": ["true"]} in subnet_args["filters"]
    (vpc_args,) = [a for token, a in stack.calls if token == "aws:ec2/getVpc:getVpc"]
    assert vpc_args["default"] is True
    assert resources["ec2Configurations"] == [{"imageType": "ECS_AL2023"}]
    assert resources["launchTemplate"] == {"launchTemplateId": f"{stack.one(TEMPLATE).name}-id",
                                           "version": "1"}  # the number, never $Latest
    assert resources["instanceTypes"] == ["m7i.xlarge", "m7i.2xlarge", "m6i.xlarge", "m6i.2xlarge",
                                          "m6a.xlarge", "m6a.2xlarge"]
    # an infrastructure update never terminates running folds
    assert ce["updatePolicy"]["terminateJobsOnUpdate"] is False


def test_instance_types_from_config(deploy):
    s = deploy({"batchInstanceTypes": "c7a.xlarge, c6a"})
    assert s.one(COMPUTE).inputs["computeResources"]["instanceTypes"] == ["c7a.xlarge", "c6a"]


def test_no_ingress_and_one_group_for_everything(stack):
    assert len(stack.of_type(SECURITY_GROUP)) == 1  # Batch reuses the stack's no-ingress group
    assert ingress_problems(stack) == []
    assert "keyName" not in stack.one(TEMPLATE).inputs  # no SSH key pair on Batch's instances
    assert "ec2KeyPair" not in stack.one(COMPUTE).inputs["computeResources"]


def test_launch_template_requires_imdsv2_and_encrypts_the_root_volume(deploy, stack):
    template = stack.one(TEMPLATE).inputs
    metadata = template["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata.get("httpEndpoint", "enabled") == "enabled"
    assert metadata["httpPutResponseHopLimit"] == 1  # host network mode: no hop to spare
    (root,) = template["blockDeviceMappings"]
    assert root["deviceName"] == "/dev/xvda"  # the ECS Amazon Linux 2023 image's root
    assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
    assert root["ebs"]["volumeSize"] == 30
    assert root["ebs"]["deleteOnTermination"] == "true"  # no volume outlives its instance
    bigger = deploy({"rootVolumeGb": "60"}).one(TEMPLATE).inputs["blockDeviceMappings"][0]
    assert bigger["ebs"]["volumeSize"] == 60


# ---- the queue ---------------------------------------------------------------------------------

def test_queue_runs_on_the_compute_environment(stack):
    queue = stack.one(QUEUE).inputs
    assert queue["state"] == "ENABLED"
    assert queue["computeEnvironmentOrders"] == [
        {"order": 1, "computeEnvironment": stack.one(COMPUTE).state["arn"]}]
    # only jobs that can never be placed are cancelled; a spot shortage is waited out
    actions = queue["jobStateTimeLimitActions"]
    assert actions and {a["action"] for a in actions} == {"CANCEL"}
    assert all(a["reason"].startswith("MISCONFIGURATION:") and a["state"] == "RUNNABLE" for a in actions)


# ---- the job definition ------------------------------------------------------------------------

def test_retries_a_reclaimed_host_and_exits_on_anything_else(deploy, stack):
    strategy = stack.one(JOB).inputs["retryStrategy"]
    assert strategy["attempts"] == 3
    rules = strategy["evaluateOnExits"]
    assert rules[0] == {"action": "RETRY", "onStatusReason": "Host EC2*"}  # the contract's rule
    assert len(rules) <= 5  # Batch's limit
    reclaimed = "Host EC2 (instance i-0123456789abcdef0) terminated."
    assert batch_decides(rules, status_reason=reclaimed) == "RETRY"
    # the trainer's own stop on the spot notice, checkpoint saved (SIGTERM: 143)
    assert batch_decides(rules, status_reason="Essential container in task exited", exit_code=143) == "RETRY"
    for failure in (
        {"status_reason": "Essential container in task exited", "exit_code": 1},  # bad data, a bug
        {"status_reason": "Essential container in task exited", "exit_code": 2},  # a bad flag
        {"status_reason": "Essential container in task exited", "exit_code": 137,
         "reason": "OutOfMemoryError: Container killed due to memory usage"},
        {"status_reason": "Task failed to start",
         "reason": "CannotPullContainerError: pull image manifest has been retried 5 time(s)"},
    ):
        assert batch_decides(rules, **failure) == "EXIT", failure
    assert deploy({"batchAttempts": "5"}).one(JOB).inputs["retryStrategy"]["attempts"] == 5


def test_the_retry_model_retries_when_no_rule_matches():
    """batch_decides follows Batch's documented default, so a rule list without a catch-all
    fails the test above."""
    assert batch_decides([{"action": "RETRY", "onStatusReason": "Host EC2*"}], exit_code=1) == "RETRY"


def test_time_limit_per_attempt_from_max_run_hours(deploy, stack):
    assert stack.one(JOB).inputs["timeout"] == {"attemptDurationSeconds": 12 * 3600}
    assert deploy({"maxRunHours": "3"}).one(JOB).inputs["timeout"] == {"attemptDurationSeconds": 3 * 3600}


def test_job_definition_is_a_complete_template_of_the_trainer_image(stack):
    job = stack.one(JOB).inputs
    assert job["type"] == "container" and job["platformCapabilities"] == ["EC2"]
    assert job["propagateTags"] is True
    c = container(stack)
    assert c["image"] == f"{stack.exports['repository_url']}:latest"
    assert c["command"] == ["--help"]
    assert c["resourceRequirements"] == [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "7168"}]
    assert "vcpus" not in c and "memory" not in c  # the deprecated fields
    assert c["jobRoleArn"] == stack.one(ROLE, JOB_ROLE).state["arn"]
    assert c["executionRoleArn"] == stack.one(ROLE, EXEC_ROLE).state["arn"]
    assert c["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": stack.exports["log_group"], "awslogs-region": REGION,
        "awslogs-stream-prefix": "batch"}}
    assert c.get("privileged", False) is False
    # Batch's default, false: the trainer writes its data cache and /tmp (batch.py says why)
    assert c.get("readonlyRootFilesystem", False) is False
    assert c["linuxParameters"]["initProcessEnabled"] is True


def test_job_runs_as_the_images_non_root_user(stack):
    (user,) = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert container(stack)["user"] == user
    assert not user.startswith("0") and user.split(":")[0] != "root"


def test_job_environment_watches_spot_notices_and_holds_threads_to_its_vcpus(deploy, stack):
    env = environment(stack)
    assert env["AVE_WATCH_SPOT"] == "1"  # trainer/spot.py reads exactly this
    assert 'os.environ.get("AVE_WATCH_SPOT") != "1"' in (
        Path(__file__).resolve().parent.parent / "trainer" / "spot.py").read_text()
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == REGION
    assert not [k for k in env if k.startswith("AWS_BATCH")]  # reserved by Batch
    bigger = deploy({"batchVcpus": "4", "batchMemoryMib": "14336"})
    assert container(bigger)["resourceRequirements"] == [{"type": "VCPU", "value": "4"},
                                                         {"type": "MEMORY", "value": "14336"}]
    assert environment(bigger)["OMP_NUM_THREADS"] == "4"


def test_no_secrets_in_the_job_definition(stack):
    text = stack.one(JOB).inputs["containerProperties"]
    assert not re.search(r"AKIA[0-9A-Z]{16}|SECRET|PASSWORD|TOKEN", text, re.IGNORECASE)
    assert "secrets" not in container(stack)


# ---- permissions -------------------------------------------------------------------------------

def test_every_batch_grant_is_scoped_to_this_stack(stack):
    assert batch_grant_problems(stack) == []


def test_the_batch_grant_check_catches_widened_grants(stack):
    a = arns(stack)
    widened = {name: stack.policy(ROLE_POLICY, name) for name in BATCH_POLICIES}
    widened[JOB_POLICY]["Statement"] += [
        {"Sid": "AnyObject", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Sid": "WriteData", "Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{a['bucket']}/data/*"},
        {"Sid": "DeleteRuns", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": f"{a['bucket']}/*"},
        {"Sid": "AllOfS3", "Effect": "Allow", "Action": "s3:*", "Resource": a["bucket"]},
    ]
    widened[EXEC_POLICY]["Statement"] += [
        {"Sid": "AnyRepo", "Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": "*"},
        {"Sid": "OtherLogs", "Effect": "Allow", "Action": "logs:PutLogEvents",
         "Resource": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:other:log-stream:*"},
    ]
    widened[NODE_POLICY]["Statement"] += [
        {"Sid": "AnyCluster", "Effect": "Allow", "Action": "ecs:Poll", "Resource": "*"},
        {"Sid": "Secrets", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"},
    ]
    flagged = {p.split(":")[0].split("/")[1] for p in batch_grant_problems(stack, widened)}
    assert flagged >= {"AnyObject", "WriteData", "DeleteRuns", "AllOfS3", "AnyRepo", "OtherLogs",
                       "AnyCluster", "Secrets"}


def test_job_role_reads_data_features_and_runs_and_writes_only_runs(stack):
    policy, bucket = stack.policy(ROLE_POLICY, JOB_POLICY), arns(stack)["bucket"]
    assert stack.one(ROLE_POLICY, JOB_POLICY).inputs["role"] == f"{JOB_ROLE}-id"
    assert allows(policy, "s3:GetObject", f"{bucket}/data/crema-3f2a/1001_DFA_ANG_XX.npz")
    assert allows(policy, "s3:GetObject", f"{bucket}/runs/r1/fold-2/checkpoints/last.pt")  # a retry resumes
    assert allows(policy, "s3:PutObject", f"{bucket}/runs/r1/fold-2/checkpoints/last.pt")
    assert allows(policy, "s3:AbortMultipartUpload", f"{bucket}/runs/r1/fold-2/checkpoints/best.pt")
    for key in ("data/crema-3f2a/1001_DFA_ANG_XX.npz", "ops/bootstrap.sh", "other.txt", "runsx/a"):
        assert not allows(policy, "s3:PutObject", f"{bucket}/{key}"), key
    for key in ("ops/bootstrap.sh", "other.txt"):
        assert not allows(policy, "s3:GetObject", f"{bucket}/{key}"), key
    for key in ("data/crema-3f2a/1001_DFA_ANG_XX.npz", "runs/r1/fold-1/summary.json"):
        assert not allows(policy, "s3:DeleteObject", f"{bucket}/{key}"), key
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::another-bucket/data/x")
    assert allows(policy, "s3:GetObject", f"{bucket}/features/crema-1a2b-0c3d/1001_DFA_ANG_XX.npz")
    assert not allows(policy, "s3:GetObject", f"{bucket}/media/crema-1a2b/1001_DFA_ANG_XX.flv")
    # listing this bucket (the 404s of keys not there yet need it: tests/test_iam_flows.py)
    (listing,) = [st for st in policy["Statement"] if "s3:ListBucket" in as_list(st["Action"])]
    assert listing["Resource"] == bucket
    # S3 only: no logs (the awslogs driver uses the execution role), ECR, ECS, SSM or IAM
    assert {a.split(":")[0] for st in policy["Statement"] for a in as_list(st["Action"])} == {"s3"}


def test_execution_role_pulls_the_image_and_writes_the_batch_log_streams(stack):
    policy, a = stack.policy(ROLE_POLICY, EXEC_POLICY), arns(stack)
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
        assert allows(policy, action, a["repo"])
        assert not allows(policy, action, f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/other")
    assert allows(policy, "ecr:GetAuthorizationToken", "*")
    assert allows(policy, "logs:CreateLogStream", a["log_group"])
    assert allows(policy, "logs:PutLogEvents", f"{a['log_group']}:log-stream:batch/default/0f1e2d3c")
    assert not allows(policy, "logs:PutLogEvents", f"{a['log_group']}:log-stream:run-20260101-1")
    assert not allows(policy, "logs:PutLogEvents",
                      f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:other:log-stream:batch/x")
    assert not allows(policy, "s3:GetObject", f"{a['bucket']}/data/x")


def test_instance_role_is_only_the_ecs_agents_on_its_own_cluster(stack):
    policy, cluster = stack.policy(ROLE_POLICY, NODE_POLICY), arns(stack)["cluster"]
    assert stack.one(ROLE_POLICY, NODE_POLICY).inputs["role"] == f"{NODE_ROLE}-id"
    instance = cluster.replace(":cluster/", ":container-instance/") + "/5b2c9e0d"
    for action in ("ecs:RegisterContainerInstance", "ecs:DeregisterContainerInstance",
                   "ecs:SubmitTaskStateChange", "ecs:SubmitContainerStateChange"):
        assert allows(policy, action, cluster), action
        assert not allows(policy, action, f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/prod"), action
    assert allows(policy, "ecs:Poll", instance)
    assert not allows(policy, "ecs:Poll", f"arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/prod/1")
    (tagging,) = [st for st in policy["Statement"] if "ecs:TagResource" in as_list(st["Action"])]
    assert tagging["Condition"] == {"StringEquals": {"ecs:CreateAction": "RegisterContainerInstance"}}
    # jobs run in host network mode and reach this role through IMDS: nothing of data or images
    services = {a.split(":")[0] for st in policy["Statement"] for a in as_list(st["Action"])}
    assert services == {"ecs"}


def test_the_compute_environment_launches_with_the_batch_profile(stack):
    profile = stack.one(PROFILE, NODE_PROFILE)
    assert stack.one(COMPUTE).inputs["computeResources"]["instanceRole"] == profile.state["arn"]
    assert profile.inputs["role"] == stack.one(ROLE, NODE_ROLE).state["name"]
    trust = json.loads(stack.one(ROLE, NODE_ROLE).inputs["assumeRolePolicy"])
    assert [st["Principal"] for st in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]


def test_task_roles_trust_only_this_accounts_ecs_tasks(stack):
    for name in (JOB_ROLE, EXEC_ROLE):
        (st,) = json.loads(stack.one(ROLE, name).inputs["assumeRolePolicy"])["Statement"]
        assert st["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}, name
        assert st["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}, name


def test_no_managed_policies_on_the_batch_roles(stack):
    assert stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == []
    for name in (JOB_ROLE, EXEC_ROLE, NODE_ROLE):
        assert "managedPolicyArns" not in stack.one(ROLE, name).inputs, name


# ---- tags --------------------------------------------------------------------------------------

def test_every_batch_resource_and_what_it_launches_is_tagged(stack):
    batch = [r for r in stack.resources
             if r.type.startswith("aws:batch/") or r.type == TEMPLATE or "batch" in r.name]
    assert {r.type for r in batch} >= {COMPUTE, QUEUE, JOB, TEMPLATE, ROLE, PROFILE, ROLE_POLICY}
    for r in batch:
        if taggable(r.type):
            assert TAGS.items() <= r.inputs.get("tags", {}).items(), f"{r.type} {r.name}"
    # the instances Batch launches (compute resources' tags) and their volumes (the template's)
    assert TAGS.items() <= stack.one(COMPUTE).inputs["computeResources"]["tags"].items()
    (volumes,) = stack.one(TEMPLATE).inputs["tagSpecifications"]
    assert volumes["resourceType"] == "volume" and TAGS.items() <= volumes["tags"].items()


# ---- config validation -------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"batchMaxVcpus": "0"}, "batchMaxVcpus=0: must be 1 or more"),
    ({"batchVcpus": "0"}, "batchVcpus=0: must be 1 or more"),
    ({"batchVcpus": "32"}, "batchVcpus=32 is more than batchMaxVcpus=16: no job could ever start"),
    ({"batchMemoryMib": "512"}, "batchMemoryMib=512: must be 1024 or more"),
    ({"batchAttempts": "0"}, "batchAttempts=0: AWS Batch allows 1 to 10 attempts"),
    ({"batchAttempts": "11"}, "batchAttempts=11: AWS Batch allows 1 to 10 attempts"),
    ({"batchInstanceTypes": "c7i.xlarge,,m7i.xlarge"}, "batchInstanceTypes='c7i.xlarge,,m7i.xlarge'"),
    ({"batchInstanceTypes": "C7i XLarge"}, "batchInstanceTypes='C7i XLarge'"),
])
def test_bad_batch_config_fails_before_anything_is_made(deploy, config, message):
    mocks = Mocks()
    with pytest.raises(pulumi.RunError, match=re.escape(message)):
        deploy(config, mocks=mocks)
    assert mocks.resources == []


def test_every_bad_value_is_named_at_once(deploy):
    with pytest.raises(pulumi.RunError) as e:
        deploy({"batchMaxVcpus": "0", "batchMemoryMib": "100", "batchAttempts": "20"})
    assert all(key in str(e.value) for key in ("batchMaxVcpus=0", "batchMemoryMib=100", "batchAttempts=20"))
    assert "Traceback" not in str(e.value)
