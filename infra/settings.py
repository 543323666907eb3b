"""The stack's configuration and its common tags, read once and passed to every module.

Every key has its default in Pulumi.yaml and the same default here at the call, so the
program runs with no config at all (and under the unit-test mocks, which do not read
Pulumi.yaml). Set one with e.g. `pulumi config set spot true`.
"""

from dataclasses import dataclass

import pulumi

# The retention periods CloudWatch Logs accepts; anything else fails only at `pulumi up`.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)


@dataclass(frozen=True)
class Settings:
    project: str
    stack: str
    region: str
    instance_type: str
    spot: bool
    root_volume_gb: int
    idle_minutes: int
    max_run_hours: int
    log_retention_days: int
    keep_images: int
    force_destroy: bool

    @property
    def tags(self) -> dict[str, str]:
        """Put on every taggable resource; the instance's own stop permission is scoped by them."""
        return {"project": self.project, "stack": self.stack, "managed-by": "pulumi"}


def load() -> Settings:
    cfg = pulumi.Config()
    settings = Settings(
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        region=pulumi.Config("aws").get("region") or "us-east-1",
        # c7i.xlarge: 4 vCPUs (2 cores), 8 GiB, about $0.18/h on demand. The model trains on
        # precomputed clip features, so memory is ample; c7i.2xlarge buys ~1.7x the speed
        # for 2x the price, worth it only for long runs (set instanceType).
        instance_type=cfg.get("instanceType") or "c7i.xlarge",
        spot=cfg.get_bool("spot", False),
        root_volume_gb=cfg.get_int("rootVolumeGb", 30),  # OS + Docker image (CPU torch) + data
        idle_minutes=cfg.get_int("idleMinutes", 20),  # no run for this long: the instance stops
        max_run_hours=cfg.get_int("maxRunHours", 12),  # a run past this: the instance stops
        log_retention_days=cfg.get_int("logRetentionDays", 30),
        keep_images=cfg.get_int("keepImages", 10),  # ECR keeps the newest N images
        # false keeps a bucket with run artifacts (and a repository with images) from being
        # deleted by `pulumi destroy`; set true first to remove everything.
        force_destroy=cfg.get_bool("forceDestroy", False),
    )
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    """Fail at preview with a plain message rather than halfway through `pulumi up`."""
    problems = []
    if s.root_volume_gb < 8:
        problems.append(f"rootVolumeGb={s.root_volume_gb}: the Amazon Linux 2023 image needs 8 GiB or more")
    for key, value in (("idleMinutes", s.idle_minutes), ("maxRunHours", s.max_run_hours),
                       ("keepImages", s.keep_images)):
        if value < 1:
            problems.append(f"{key}={value}: must be 1 or more")
    if s.log_retention_days not in LOG_RETENTION_DAYS:
        problems.append(f"logRetentionDays={s.log_retention_days}: CloudWatch accepts one of "
                        f"{', '.join(map(str, LOG_RETENTION_DAYS))}")
    if problems:
        raise pulumi.RunError("invalid stack config: " + "; ".join(problems))
