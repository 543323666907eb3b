"""The cloud stack of DESIGN.md section 5: bucket, image repository, log group, role, a
security group with no ingress, one EC2 CPU instance for single runs, and an AWS Batch queue for
many runs at once (cross-validation). Wiring only; each group has a module.

    cd infra && pulumi stack init dev && pulumi up     # runs with no config at all
    pulumi config set spot true                        # keys and defaults: Pulumi.yaml
    pulumi destroy                                     # set forceDestroy true first to drop data

The exports are exactly what the operator commands read.
"""

import pulumi

import batch
import compute
import iam
import logs
import network
import registry
import settings
import storage

cfg = settings.load()
bootstrap = compute.read_bootstrap()
# (a bad config value or a missing scripts/bootstrap.sh has stopped the run by now, before anything is made)

bucket = storage.bucket(cfg)
repo = registry.repository(cfg)
log_group = logs.log_group(cfg)
profile = iam.instance_profile(cfg, bucket=bucket, repo=repo, log_group=log_group)
group = network.security_group(cfg)
instance = compute.instance(
    cfg,
    profile=profile,
    security_group=group,
    user_data=compute.user_data(cfg, bootstrap, bucket=bucket, repo=repo, log_group=log_group),
)

# AWS Batch: folds (and seeds) of a cross-validation as one array job; min 0 vCPUs, so idle is free.
batch_role, batch_profile = iam.batch_instance_profile(cfg)
environment = batch.compute_environment(
    cfg,
    template=batch.launch_template(cfg),
    profile=batch_profile,
    security_group=group,
    subnets=network.default_subnets(),
)
iam.batch_instance_policy(batch_role, cluster_arn=environment.ecs_cluster_arn)
queue = batch.job_queue(cfg, environment=environment)
job_definition = batch.job_definition(
    cfg,
    repo=repo,
    job_role=iam.batch_job_role(cfg, bucket=bucket),
    execution_role=iam.batch_execution_role(cfg, repo=repo, log_group=log_group),
    log_group=log_group,
)

pulumi.export("bucket", bucket.bucket)
pulumi.export("repository_url", repo.repository_url)
pulumi.export("instance_id", instance.id)
pulumi.export("log_group", log_group.name)
pulumi.export("region", cfg.region)
# What `make deploy` brings to an existing instance (bootstrap.sh update): user data only
# reaches a new one.
pulumi.export("idle_minutes", cfg.idle_minutes)
pulumi.export("max_run_hours", cfg.max_run_hours)
# What `make deploy FOLDS=K` submits to: the queue, and the definition whose revision it registers
# with the pushed image digest; the sizes, to plan the array and project its cost.
pulumi.export("batch_job_queue", queue.arn)
pulumi.export("batch_job_definition", job_definition.arn)
pulumi.export("batch_job_definition_name", job_definition.name)
pulumi.export("batch_compute_environment", environment.arn)
pulumi.export("batch_max_vcpus", cfg.batch_max_vcpus)
pulumi.export("batch_vcpus", cfg.batch_vcpus)
pulumi.export("batch_memory_mib", cfg.batch_memory_mib)
