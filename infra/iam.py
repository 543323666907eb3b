"""The instance's role: least privilege over this stack's bucket, repository and log group, and
the SSM agent's own calls (no SSH anywhere; `make deploy` starts runs through Run Command).
Below it, AWS Batch's job, execution and instance roles, each scoped as narrowly.

One inline policy and no managed one: AWS's AmazonSSMManagedInstanceCore also grants
`ssm:GetParameter(s)` on every parameter of the account, which the container could read through
the instance's metadata (hop limit 2). The instance stops itself with `shutdown` from the OS
(scripts/bootstrap.sh; compute.py makes shutdown mean stop), which needs no IAM at all.
"""

import json

import pulumi
import pulumi_aws as aws

from settings import Settings

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }],
}

# Where a run writes: its run directory, s3://BUCKET/runs/RUN_ID/ (scripts/bootstrap.sh), and the
# clip files it extracts from raw media (make deploy MEDIA=...: train --media writes them to
# features/MEDIA-SETTINGS/, reused by later runs). The data set under data/ and the media under
# media/ are the operator's uploads, which runs only read.
RUN_PREFIX = "runs/"
FEATURES_PREFIX = "features/"

# The SSM agent's messaging: Run Command's delivery (ec2messages, and the newer channel of
# ssmmessages). Neither service has resource-level permissions, so these take Resource "*"; they
# reach no data, only the agent's own message queue.
SSM_MESSAGING = [
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
]


def instance_profile(cfg: Settings, *, bucket: aws.s3.Bucket, repo: aws.ecr.Repository,
                     log_group: aws.cloudwatch.LogGroup) -> aws.iam.InstanceProfile:
    role = aws.iam.Role("ave-instance-role", assume_role_policy=json.dumps(EC2_TRUST), tags=cfg.tags)

    partition = aws.get_partition_output().partition
    account = aws.get_caller_identity_output().account_id
    policy = pulumi.Output.all(
        bucket_arn=bucket.arn, repo_arn=repo.arn, log_group_arn=log_group.arn,
        instances_arn=pulumi.Output.format("arn:{0}:ec2:{1}:{2}:instance/*", partition, cfg.region, account),
    ).apply(lambda arns: json.dumps(instance_policy(**arns)))
    aws.iam.RolePolicy("ave-instance-policy", role=role.id, policy=policy)
    return aws.iam.InstanceProfile("ave-instance-profile", role=role.name, tags=cfg.tags)


def instance_policy(*, bucket_arn: str, repo_arn: str, log_group_arn: str,
                    instances_arn: str) -> dict:
    """What the instance and its container may do, each statement scoped as far as AWS allows."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                "Resource": bucket_arn,
            },
            {
                # The data set in, and a run's own checkpoints back when it resumes.
                "Sid": "ReadObjects",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{bucket_arn}/*",
            },
            {
                # Run directories out (multipart for big checkpoints), and nowhere else, so a run
                # cannot overwrite the data set. No delete: the trainer deletes nothing in S3, so a
                # run cannot destroy results (and the bucket is versioned).
                "Sid": "WriteRuns",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": f"{bucket_arn}/{RUN_PREFIX}*",
            },
            {
                # Extracted features out (train --media), and only there: the same actions.
                "Sid": "WriteFeatures",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": f"{bucket_arn}/{FEATURES_PREFIX}*",
            },
            *ecr_pull(repo_arn),
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                "Resource": [log_group_arn, f"{log_group_arn}:log-stream:*"],
            },
            {
                # The agent registers the instance and pings as it (EC2 instances of this account
                # and region). Nothing of State Manager, Inventory or Patch Manager: the stack uses
                # none of them, and Run Command brings its document inside the message.
                "Sid": "SsmAgentRegister",
                "Effect": "Allow",
                "Action": "ssm:UpdateInstanceInformation",
                "Resource": instances_arn,
            },
            {
                "Sid": "SsmAgentMessages",
                "Effect": "Allow",
                "Action": SSM_MESSAGING,
                "Resource": "*",
            },
        ],
    }


# ---- AWS Batch (batch.py): three roles, each with only its own part ----------------------------
# The job role is the trainer's, inside the container; the execution role is the ECS agent's
# for starting that container (image pull, log driver); the instance role is the ECS agent's own
# on the instances Batch launches. Batch itself acts through its service-linked role
# AWSServiceRoleForBatch (the compute environment names no service role): AWS defines it,
# scoped to what Batch does, and makes it at the first compute environment of the account, if
# the deployer may call iam:CreateServiceLinkedRole. It is account-wide and outlives the stack.
#
# Inline policies only, no AWS managed one: AmazonEC2ContainerServiceforEC2Role would also give
# the instances every ECS cluster of the account, and AmazonECSTaskExecutionRolePolicy every
# repository and log group.

DATA_PREFIX = "data/"  # the data sets `make deploy` uploads (data/NAME-HASH/); jobs only read them
BATCH_LOG_PREFIX = "batch"  # awslogs streams of Batch jobs: batch/default/ECS_TASK_ID


def ecs_tasks_trust(account: str) -> dict:
    """Only ECS tasks of this account may take the role (the confused-deputy guard ECS
    documents for task and execution roles)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": account}},
        }],
    }


def batch_job_role(cfg: Settings, *, bucket: aws.s3.Bucket) -> aws.iam.Role:
    account = aws.get_caller_identity_output().account_id
    role = aws.iam.Role("ave-batch-job-role", tags=cfg.tags,
                        assume_role_policy=account.apply(lambda a: json.dumps(ecs_tasks_trust(a))))
    aws.iam.RolePolicy("ave-batch-job-policy", role=role.id,
                       policy=bucket.arn.apply(lambda arn: json.dumps(job_policy(arn))))
    return role


def job_policy(bucket_arn: str) -> dict:
    """What a fold's trainer may do: S3 only (trainer/store/s3.py is its one AWS client). No logs: its
    output reaches the log group through the awslogs driver, with the execution role.

    The requests each flow makes, and the answers they need, are checked against these statements
    by tests/test_iam_flows.py."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # Listing: the data set's sync into the cache, `cv` finding done folds. And the
                # 404s: S3 answers a GET or HEAD of a key that does not exist (yet: a new fold's
                # summary.json, checkpoint, log, lease) with 404 only to a caller that may list
                # the bucket, and decides that without any prefix, so a condition on s3:prefix
                # turned each of them into a 403 and failed the fold. Listing shows the names of
                # this stack's objects, never their contents.
                "Sid": "ListBucket",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
            },
            {
                # The data set in (an uploaded one under data/, or features/ that a MEDIA run
                # extracted: `make deploy FOLDS=K DATA=s3://BUCKET/features/...`), and a fold's
                # own checkpoint and lease back when a retry resumes it. Not media/: an array
                # never extracts (deploy refuses MEDIA and --media with FOLDS).
                "Sid": "ReadDataFeaturesAndRuns",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"{bucket_arn}/{DATA_PREFIX}*", f"{bucket_arn}/{FEATURES_PREFIX}*",
                             f"{bucket_arn}/{RUN_PREFIX}*"],
            },
            {
                # The fold's run directory out (multipart for checkpoints), under runs/ only, and
                # no delete: as for the single instance (instance_policy).
                "Sid": "WriteRuns",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": f"{bucket_arn}/{RUN_PREFIX}*",
            },
        ],
    }


def batch_execution_role(cfg: Settings, *, repo: aws.ecr.Repository,
                         log_group: aws.cloudwatch.LogGroup) -> aws.iam.Role:
    account = aws.get_caller_identity_output().account_id
    role = aws.iam.Role("ave-batch-execution-role", tags=cfg.tags,
                        assume_role_policy=account.apply(lambda a: json.dumps(ecs_tasks_trust(a))))
    policy = pulumi.Output.all(repo_arn=repo.arn, log_group_arn=log_group.arn).apply(
        lambda arns: json.dumps(execution_policy(**arns)))
    aws.iam.RolePolicy("ave-batch-execution-policy", role=role.id, policy=policy)
    return role


def ecr_pull(repo_arn: str) -> list[dict]:
    """The statements that pull the trainer image: the instance's and the Batch agent's."""
    return [
        {
            # GetAuthorizationToken is account-wide and has no resource-level permissions. The
            # token alone reads nothing; the pull below is scoped.
            "Sid": "EcrLogin",
            "Effect": "Allow",
            "Action": "ecr:GetAuthorizationToken",
            "Resource": "*",
        },
        {
            "Sid": "EcrPull",
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                       "ecr:BatchCheckLayerAvailability"],
            "Resource": repo_arn,
        },
    ]


def execution_policy(*, repo_arn: str, log_group_arn: str) -> dict:
    """What the ECS agent may do to start a job: pull the trainer image, and send the container's
    output to the log group (the agent hands the driver these credentials; agent 1.16 and later,
    which every current ECS AMI has)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            *ecr_pull(repo_arn),
            {
                # The Batch jobs' streams only (prefix "batch"), not the single instance's runs.
                "Sid": "WriteJobLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [log_group_arn, f"{log_group_arn}:log-stream:{BATCH_LOG_PREFIX}/*"],
            },
        ],
    }


def batch_instance_profile(cfg: Settings) -> tuple[aws.iam.Role, aws.iam.InstanceProfile]:
    """The role of the instances Batch launches; its policy comes with batch_instance_policy,
    once the compute environment has made its ECS cluster, to which it is scoped."""
    role = aws.iam.Role("ave-batch-instance-role", assume_role_policy=json.dumps(EC2_TRUST), tags=cfg.tags)
    profile = aws.iam.InstanceProfile("ave-batch-instance-profile", role=role.name, tags=cfg.tags)
    return role, profile


def batch_instance_policy(role: aws.iam.Role, *, cluster_arn: pulumi.Input[str]) -> aws.iam.RolePolicy:
    return aws.iam.RolePolicy(
        "ave-batch-instance-policy", role=role.id,
        policy=pulumi.Output.from_input(cluster_arn).apply(lambda arn: json.dumps(ecs_instance_policy(arn))))


def ecs_instance_policy(cluster_arn: str) -> dict:
    """The ECS agent's calls, on the one ECS cluster Batch made for this compute environment.

    Jobs run in host network mode (Batch's only mode for single-node EC2 jobs), so a container
    reaches the instance metadata and with it this role: it is kept to the agent's bookkeeping,
    with no S3, ECR, logs or SSM. Left out of AWS's managed policy: ecs:CreateCluster (the
    cluster is Batch's), ecs:UpdateContainerInstancesState (spot draining, which Batch does not
    turn on), ec2:DescribeTags (tag propagation from EC2, not configured), and ECR and logs
    (the execution role's).
    """
    prefix, name = cluster_arn.split(":cluster/", 1)
    instances = f"{prefix}:container-instance/{name}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # Joining and leaving the cluster, and reporting task and container states.
                "Sid": "EcsAgentCluster",
                "Effect": "Allow",
                "Action": ["ecs:RegisterContainerInstance", "ecs:DeregisterContainerInstance",
                           "ecs:SubmitTaskStateChange", "ecs:SubmitContainerStateChange",
                           "ecs:SubmitAttachmentStateChanges"],
                "Resource": cluster_arn,
            },
            {
                # Receiving work and sending metrics, as the instance it registered.
                "Sid": "EcsAgentInstance",
                "Effect": "Allow",
                "Action": ["ecs:Poll", "ecs:StartTelemetrySession"],
                "Resource": instances,
            },
            {
                # The agent tags its container instance while registering it, when it has tags
                # to give; nothing else may be tagged.
                "Sid": "EcsAgentTagOnRegister",
                "Effect": "Allow",
                "Action": "ecs:TagResource",
                "Resource": instances,
                "Condition": {"StringEquals": {"ecs:CreateAction": "RegisterContainerInstance"}},
            },
            {
                # Which endpoint to poll: ECS gives this action no resource-level permissions.
                "Sid": "EcsAgentDiscover",
                "Effect": "Allow",
                "Action": "ecs:DiscoverPollEndpoint",
                "Resource": "*",
            },
        ],
    }
