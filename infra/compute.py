"""The one EC2 CPU instance that runs the trainer's container, and the user data it boots with.

User data contract (read by scripts/bootstrap.sh, run with no arguments at first boot):

    #!/bin/bash
    export AVE_BUCKET=... AVE_REGION=... AVE_REPO_URL=... AVE_LOG_GROUP=... AVE_MAX_RUN_HOURS=... AVE_IDLE_MINUTES=...
    <the full text of scripts/bootstrap-run.sh, then of scripts/bootstrap.sh>

Names and numbers only: no secrets (the instance gets credentials from its role via IMDSv2).
The text goes to EC2 gzipped (cloud-init unpacks gzip user data itself), because the script is
larger than EC2's 16 KB limit on raw user data; gzip with mtime 0 keeps it byte-stable between
`pulumi up` runs.
"""

import base64
import gzip
import shlex
from pathlib import Path

import pulumi
import pulumi_aws as aws

from settings import Settings

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
# The bootstrap's two files, as one text in this order (bootstrap.sh says why); trainer/ops/cloud.py
# sends the same text to an existing instance.
BOOTSTRAP = (SCRIPTS / "bootstrap-run.sh", SCRIPTS / "bootstrap.sh")
USER_DATA_LIMIT = 16 * 1024  # EC2 rejects larger user data (counted before base64)


def user_data(cfg: Settings, script: str, *, bucket: aws.s3.Bucket, repo: aws.ecr.Repository,
              log_group: aws.cloudwatch.LogGroup) -> pulumi.Output[str]:
    env = pulumi.Output.all(
        AVE_BUCKET=bucket.bucket,
        AVE_REGION=cfg.region,
        AVE_REPO_URL=repo.repository_url,
        AVE_LOG_GROUP=log_group.name,
        AVE_MAX_RUN_HOURS=cfg.max_run_hours,
        AVE_IDLE_MINUTES=cfg.idle_minutes,
    )
    return env.apply(lambda values: encode_user_data(render_user_data(values, script)))


def read_bootstrap() -> str:
    for path in BOOTSTRAP:
        if not path.is_file():
            raise pulumi.RunError(
                f"{path} is missing: the instance's user data is built from scripts/{path.name}; "
                f"restore it (git checkout scripts/{path.name}) and run again")
    return "".join(path.read_text() for path in BOOTSTRAP)


def render_user_data(env: dict[str, object], script: str) -> str:
    exports = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in env.items())
    return f"#!/bin/bash\nexport {exports}\n{script}"


def encode_user_data(text: str) -> str:
    """gzip then base64, for ``user_data_base64``; the gzipped size must fit EC2's limit."""
    packed = gzip.compress(text.encode(), mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise pulumi.RunError(f"user data is {len(packed)} bytes gzipped, over EC2's limit of "
                              f"{USER_DATA_LIMIT}: shorten scripts/bootstrap.sh or bootstrap-run.sh")
    return base64.b64encode(packed).decode()


def instance(cfg: Settings, *, profile: aws.iam.InstanceProfile, security_group: aws.ec2.SecurityGroup,
             user_data: pulumi.Input[str]) -> aws.ec2.Instance:
    ami = aws.ec2.get_ami(
        most_recent=True,
        owners=["amazon"],
        filters=[{"name": "name", "values": ["al2023-ami-2023.*-x86_64"]},
                 {"name": "architecture", "values": ["x86_64"]}],
    )
    return aws.ec2.Instance(
        "ave-trainer",
        ami=ami.id,
        instance_type=cfg.instance_type,
        iam_instance_profile=profile.name,
        vpc_security_group_ids=[security_group.id],
        # The default VPC's subnet; a public address is the way out to S3, ECR and SSM
        # (no NAT or VPC endpoints), and with no ingress rule nothing can come in.
        associate_public_ip_address=True,
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",  # IMDSv2 only
            "http_put_response_hop_limit": 2,  # one hop more, so the container reaches it too
        },
        root_block_device={
            "volume_type": "gp3",
            "volume_size": cfg.root_volume_gb,
            "encrypted": True,
            "delete_on_termination": True,
            "tags": cfg.tags,
        },
        # `shutdown -h now` from inside (end of run, time limit, idle) stops rather than
        # terminates: the disk keeps the image cache, and `make deploy` starts it again.
        instance_initiated_shutdown_behavior="stop",
        # Spot: a persistent request that stops (not terminates) on interruption, so the run
        # resumes from its last checkpoint when capacity returns. Changing `spot` replaces the
        # instance. Known provider issue (terraform-provider-aws #38142): destroying a
        # persistent spot instance may leave its spot request open; cancel it after destroy.
        instance_market_options={
            "market_type": "spot",
            "spot_options": {"instance_interruption_behavior": "stop", "spot_instance_type": "persistent"},
        } if cfg.spot else None,
        user_data_base64=user_data,
        # User data is read at the first boot only (cloud-init), and changing it on an existing
        # instance means a stop and a start, which would cut a run short. So a change never
        # touches the instance (False here, and ignore_changes below); `make deploy` brings the
        # current bootstrap.sh, idleMinutes and maxRunHours to it through SSM instead
        # (`bootstrap.sh update`, before each run). A new instance boots with the current ones.
        user_data_replace_on_change=False,
        tags={**cfg.tags, "Name": f"{cfg.project}-{cfg.stack}"},
        # A new Amazon Linux release would otherwise replace the instance on the next
        # `pulumi up`; the instance keeps the image it was made with (dnf updates it).
        opts=pulumi.ResourceOptions(ignore_changes=["ami", "user_data_base64"]),
    )
