"""The instance's role: least privilege over this stack's bucket, repository and log group.

Besides the inline policy below it gets AWS's AmazonSSMManagedInstanceCore, so the SSM agent
can register the instance and run the commands `make deploy` sends (no SSH anywhere).
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


def instance_profile(cfg: Settings, *, bucket: aws.s3.Bucket, repo: aws.ecr.Repository,
                     log_group: aws.cloudwatch.LogGroup) -> aws.iam.InstanceProfile:
    role = aws.iam.Role("ave-instance-role", assume_role_policy=json.dumps(EC2_TRUST), tags=cfg.tags)

    partition = aws.get_partition_output().partition
    account = aws.get_caller_identity_output().account_id
    policy = pulumi.Output.all(
        bucket_arn=bucket.arn, repo_arn=repo.arn, log_group_arn=log_group.arn,
        instances_arn=pulumi.Output.format("arn:{0}:ec2:{1}:{2}:instance/*", partition, cfg.region, account),
    ).apply(lambda arns: json.dumps(instance_policy(**arns, tags=cfg.tags)))
    aws.iam.RolePolicy("ave-instance-policy", role=role.id, policy=policy)

    aws.iam.RolePolicyAttachment(
        "ave-instance-ssm",
        role=role.name,
        policy_arn=partition.apply(lambda p: f"arn:{p}:iam::aws:policy/AmazonSSMManagedInstanceCore"),
    )
    return aws.iam.InstanceProfile("ave-instance-profile", role=role.name, tags=cfg.tags)


def instance_policy(*, bucket_arn: str, repo_arn: str, log_group_arn: str,
                    instances_arn: str, tags: dict[str, str]) -> dict:
    """What the instance and its container may do, each statement scoped to one resource."""
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
                # Data set in, run directories out (multipart for big checkpoints). No delete:
                # the trainer deletes nothing in S3, so a run cannot destroy results.
                "Sid": "ReadWriteObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject",
                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": f"{bucket_arn}/*",
            },
            {
                # The one "*": GetAuthorizationToken is account-wide and has no resource-level
                # permissions. The token alone reads nothing; the pull below is scoped.
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
                # The instance stops itself when a run ends or overruns (shutdown from the OS
                # does the same, see compute.py). Only instances carrying this stack's tags
                # qualify, and the role cannot tag anything, so that is this one instance.
                "Sid": "StopSelf",
                "Effect": "Allow",
                "Action": "ec2:StopInstances",
                "Resource": instances_arn,
                "Condition": {"StringEquals": {
                    "aws:ResourceTag/project": tags["project"],
                    "aws:ResourceTag/stack": tags["stack"],
                }},
            },
        ],
    }
