"""AWS Batch, for many runs at once: the cross-validation folds (and seeds) of one `cv` run as
one array job, each child one fold (DESIGN.md sections 5 and 8). The single instance of
compute.py stays the path for single runs.

    pulumi config set batchSpot false          # on-demand instead of spot (keys: Pulumi.yaml)
    pulumi config set batchMaxVcpus 32         # the cost cap
    make deploy FOLDS=5 SEEDS=0,1,2            # the ops side submits the array job

The pieces: a launch template (IMDSv2 only, encrypted root volume), a managed EC2 compute
environment (spot by default, 0 vCPUs when nothing is queued, at most batchMaxVcpus), a job queue
on it, and a job definition of the trainer image with its roles, logs, retries and time limit.

The job definition registered here is a template, image REPO_URL:latest. `make deploy` (the
ops side, trainer/ops/) registers a new revision of it with the image digest it pushed, outside
Pulumi, and submits against that revision, so a run never starts from a moving tag. Pulumi
neither sees nor removes those revisions: the ops destroy path deregisters them, and
`pulumi destroy` removes everything below (deregistering its own revision).
"""

import json

import pulumi
import pulumi_aws as aws

from iam import BATCH_LOG_PREFIX
from settings import Settings

# The retry rules, in Batch's order (the first that matches decides; none matching would mean
# a retry, hence the catch-alls at the end). A retry resumes the fold from its own checkpoint in
# S3 (`cv --task auto` resumes when the run directory holds one).
RECLAIMED_HOST = "Host EC2*"  # statusReason "Host EC2 (instance i-...) terminated.": spot reclaimed it
# The trainer's exit after SIGTERM, checkpoint saved: with AVE_WATCH_SPOT=1 it sends itself that
# on the two-minute spot notice, so a reclaimed host usually ends the attempt this way, before
# the host goes. Batch retries no job that timed out or that the operator terminated
# (`make deploy REPLACE=1`), whatever its exit code, so this rule retries only interruptions.
SIGTERM_EXIT = "143"
# A stuck RUNNABLE job that could never be placed is cancelled after this long, not left forever.
UNPLACEABLE_SECONDS = 1800
# The image's user (Dockerfile: useradd --uid 10001, USER 10001:10001).
IMAGE_USER = "10001:10001"


def launch_template(cfg: Settings) -> aws.ec2.LaunchTemplate:
    """What Batch's instances boot with, beyond the ECS-optimised image Batch picks."""
    return aws.ec2.LaunchTemplate(
        "ave-batch-template",
        description="AV emotion trainer, AWS Batch instances: IMDSv2 only, encrypted root volume",
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",  # IMDSv2 only
            # 1 is enough: Batch runs single-node EC2 jobs in host network mode, so the
            # container's spot watcher reaches IMDS without a hop (were it ever bridged, only
            # the watcher would go blind; the host-reclaimed rule would still retry).
            "http_put_response_hop_limit": 1,
        },
        block_device_mappings=[{
            # The root volume of the ECS-optimised Amazon Linux 2023 image.
            "device_name": "/dev/xvda",
            "ebs": {
                "volume_type": "gp3",
                # The same need as the single instance: OS, the ~1 GB image, the data set cache.
                "volume_size": cfg.root_volume_gb,
                "encrypted": "true",
                "delete_on_termination": "true",
            },
        }],
        # The volumes Batch's instances make carry the tags too (the instances get theirs from
        # the compute environment).
        tag_specifications=[{"resource_type": "volume", "tags": cfg.tags}],
        update_default_version=True,
        tags=cfg.tags,
    )


def compute_environment(cfg: Settings, *, template: aws.ec2.LaunchTemplate,
                        profile: aws.iam.InstanceProfile, security_group: aws.ec2.SecurityGroup,
                        subnets: pulumi.Input[list[str]]) -> aws.batch.ComputeEnvironment:
    return aws.batch.ComputeEnvironment(
        "ave-batch-compute",
        type="MANAGED",
        state="ENABLED",
        # No service_role: Batch acts through its service-linked role (iam.py says why); its
        # in-place infrastructure updates (update_policy below) also need that role, and one
        # of the two allocation strategies used here.
        compute_resources={
            "type": "SPOT" if cfg.batch_spot else "EC2",
            # Spot: the pools least likely to be reclaimed, among the cheaper ones (no spot fleet
            # role needed, unlike BEST_FIT). On-demand: the listed types, larger ones only when
            # the smaller are unavailable.
            "allocation_strategy": "SPOT_PRICE_CAPACITY_OPTIMIZED" if cfg.batch_spot else "BEST_FIT_PROGRESSIVE",
            "min_vcpus": 0,  # nothing runs, and nothing is paid for, when no job is queued
            "max_vcpus": cfg.batch_max_vcpus,  # the cost cap
            "instance_types": list(cfg.batch_instance_types),
            "instance_role": profile.arn,
            "security_group_ids": [security_group.id],  # the stack's one group: no ingress
            "subnets": subnets,
            "ec2_configurations": [{"image_type": "ECS_AL2023"}],
            "launch_template": {
                "launch_template_id": template.id,
                # The number, not $Latest: Batch resolves $Latest once, so a template change
                # would never reach the instances; a new number updates the environment.
                "version": template.latest_version.apply(str),
            },
            "tags": {**cfg.tags, "Name": f"{cfg.project}-{cfg.stack}-batch"},  # on the instances
        },
        # An infrastructure update (new template, types) waits for running jobs up to this long
        # (Batch's maximum is 6 h) instead of cutting folds short; none is terminated for it.
        update_policy={
            "terminate_jobs_on_update": False,
            "job_execution_timeout_minutes": min(cfg.max_run_hours * 60, 360),
        },
        tags=cfg.tags,
    )


def job_queue(cfg: Settings, *, environment: aws.batch.ComputeEnvironment) -> aws.batch.JobQueue:
    return aws.batch.JobQueue(
        "ave-batch-queue",
        state="ENABLED",
        priority=1,
        compute_environment_orders=[{"order": 1, "compute_environment": environment.arn}],
        # A job this environment can never place (more memory than any listed type has, or
        # more vCPUs than the cap) would wait RUNNABLE forever; cancel it so that `make status`
        # shows a failure with Batch's reason. Capacity shortages (spot) are waited out.
        job_state_time_limit_actions=[
            {"action": "CANCEL", "state": "RUNNABLE", "max_time_seconds": UNPLACEABLE_SECONDS, "reason": reason}
            for reason in ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
                           "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE")
        ],
        tags=cfg.tags,
    )


def retry_strategy(attempts: int) -> dict:
    """Retry a fold whose host was reclaimed (or whose trainer stopped on the spot notice);
    any other failure (bad data, a bug) exits at once: a retry would fail the same way, paid."""
    return {
        "attempts": attempts,
        "evaluate_on_exits": [
            {"action": "RETRY", "on_status_reason": RECLAIMED_HOST},
            {"action": "RETRY", "on_exit_code": SIGTERM_EXIT},
            # Every failure has a status reason; the second is AWS's own catch-all idiom.
            {"action": "EXIT", "on_status_reason": "*"},
            {"action": "EXIT", "on_reason": "*"},
        ],
    }


def container_properties(cfg: Settings, *, image: str, job_role_arn: str, execution_role_arn: str,
                         log_group: str) -> dict:
    """The job definition's container, as the Batch API takes it.

    Example:
        >>> container_properties(cfg, image="1234.dkr.ecr.us-east-1.amazonaws.com/r:latest",
        ...                      job_role_arn="arn:...:role/job", execution_role_arn="arn:...:role/exec",
        ...                      log_group="ave-logs-1")["command"]
        ['--help']
    """
    environment = {
        "AWS_REGION": cfg.region, "AWS_DEFAULT_REGION": cfg.region,  # as bootstrap.sh gives them
        # Batch's vCPUs are CPU shares, not a CPU set: the container sees every vCPU of the
        # instance, so the libraries' thread pools are held to the job's share here. The
        # trainer's torch threads default to every core it sees, so a submit should also pass
        # `--threads` equal to the exported batch_vcpus.
        "OMP_NUM_THREADS": str(cfg.batch_vcpus),
    }
    if cfg.batch_spot:
        environment["AVE_WATCH_SPOT"] = "1"  # trainer/spot.py: checkpoint on the 2-minute notice
    return {
        "image": image,  # a template; each run's revision names the pushed digest
        "command": ["--help"],  # the entry point is `python -m trainer`; each submit gives the verb
        "resourceRequirements": [
            {"type": "VCPU", "value": str(cfg.batch_vcpus)},
            {"type": "MEMORY", "value": str(cfg.batch_memory_mib)},
        ],
        "jobRoleArn": job_role_arn,
        "executionRoleArn": execution_role_arn,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-region": cfg.region,
                        "awslogs-stream-prefix": BATCH_LOG_PREFIX},
        },
        "user": IMAGE_USER,  # never root, even if an image forgot its USER
        # Not privileged, and not read-only: both left at Batch's default, false, rather than
        # stated (an explicit false may read back differently and show as a change on every
        # `pulumi up`). Not read-only because the trainer writes the s3:// data set's cache under
        # ~/.cache/av-emotion (hundreds of MB for CREMA-D) and stages its run directory in /tmp
        # (tempfile). On Batch a writable place would be a host volume, which ECS makes owned by
        # root (uid 10001 could not write it), or a tmpfs, which counts against the job's
        # memory. The image's code is root-owned, so the non-root user cannot change it anyway.
        # tini as PID 1 (as bootstrap.sh's `docker run --init`): SIGTERM reaches the trainer
        # even before it installs its handler; 1 GiB of /dev/shm as there (--shm-size 1g).
        "linuxParameters": {"initProcessEnabled": True, "sharedMemorySize": 1024},
        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
    }


def job_definition(cfg: Settings, *, repo: aws.ecr.Repository, job_role: aws.iam.Role,
                   execution_role: aws.iam.Role, log_group: aws.cloudwatch.LogGroup) -> aws.batch.JobDefinition:
    properties = pulumi.Output.all(
        repo_url=repo.repository_url, job_role_arn=job_role.arn,
        execution_role_arn=execution_role.arn, log_group=log_group.name,
    ).apply(lambda v: json.dumps(container_properties(
        cfg, image=f"{v['repo_url']}:latest", job_role_arn=v["job_role_arn"],
        execution_role_arn=v["execution_role_arn"], log_group=v["log_group"])))
    return aws.batch.JobDefinition(
        "ave-batch-job",
        type="container",
        platform_capabilities=["EC2"],
        container_properties=properties,
        retry_strategy=retry_strategy(cfg.batch_attempts),
        # Per attempt: a retry gets the full time again, as a resumed single run does.
        timeout={"attempt_duration_seconds": cfg.max_run_hours * 3600},
        propagate_tags=True,  # the job's ECS task carries the tags too
        # A change here registers a new revision and retires Pulumi's previous one; the ops
        # side's per-run revisions are not Pulumi's and stay until the ops destroy path.
        deregister_on_new_revision=True,
        tags=cfg.tags,
    )
