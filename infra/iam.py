"""The instance's role: least privilege over this stack's bucket, repository and log group, and
the SSM agent's own calls (no SSH anywhere; `make deploy` starts runs through Run Command).

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

# Where a run writes: its run directory, s3://BUCKET/runs/RUN_ID/ (scripts/bootstrap.sh). The data
# set under data/ is the operator's upload, which runs only read.
RUN_PREFIX = "runs/"

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
