"""The cloud stack of DESIGN.md section 5: bucket, image repository, log group, role, a
security group with no ingress, and one EC2 CPU instance. Wiring only; each group has a module.

    cd infra && pulumi stack init dev && pulumi up     # runs with no config at all
    pulumi config set spot true                        # keys and defaults: Pulumi.yaml
    pulumi destroy                                     # set forceDestroy true first to drop data

The exports are exactly what the operator commands read.
"""

import pulumi

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

pulumi.export("bucket", bucket.bucket)
pulumi.export("repository_url", repo.repository_url)
pulumi.export("instance_id", instance.id)
pulumi.export("log_group", log_group.name)
pulumi.export("region", cfg.region)
# What `make deploy` brings to an existing instance (bootstrap.sh update): user data only
# reaches a new one.
pulumi.export("idle_minutes", cfg.idle_minutes)
pulumi.export("max_run_hours", cfg.max_run_hours)
