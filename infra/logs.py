"""The CloudWatch log group the run's container writes to and `make logs` reads."""

import pulumi_aws as aws

from settings import Settings


def log_group(cfg: Settings) -> aws.cloudwatch.LogGroup:
    return aws.cloudwatch.LogGroup(
        "ave-logs",
        retention_in_days=cfg.log_retention_days,
        tags=cfg.tags,
    )
