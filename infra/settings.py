"""The stack's configuration and its common tags, read once and passed to every module.

Every key has its default in Pulumi.yaml and the same default here at the call, so the
program runs with no config at all (and under the unit-test mocks, which do not read
Pulumi.yaml). Set one with e.g. `pulumi config set spot true`.
"""

import re
from dataclasses import dataclass

import pulumi

# The retention periods CloudWatch Logs accepts; anything else fails only at `pulumi up`.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
# An EC2 instance type (c7i.xlarge) or family (c7i), as Batch takes them.
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*(\.[a-z0-9]+)?")


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
    # AWS Batch, for many runs at once (cross-validation folds and seeds; batch.py)
    batch_spot: bool
    batch_max_vcpus: int
    batch_vcpus: int
    batch_memory_mib: int
    batch_instance_types: tuple[str, ...]
    batch_attempts: int

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
        # --- AWS Batch: one job per fold (and seed) of a cross-validation, DESIGN.md section 5.
        # The workload: the ~1 M parameter hybrid model on CREMA-D-sized features (7,442 clips),
        # which `make bench` measures at about 230 clips/s on 2 vCPUs: ~32 s an epoch, ~25 min
        # for a 50-epoch fold. Spot: a reclaimed instance costs a fold at most the epoch since
        # its last checkpoint (the retry resumes from S3), for typically under half the price.
        batch_spot=cfg.get_bool("batchSpot", True),
        # The cost cap: Batch never runs more vCPUs than this at once. 16 = 8 two-vCPU folds in
        # parallel (a 5-fold x 3-seed run in two waves); with the types below about $0.70-0.80/h
        # on demand ($0.043-0.050 per vCPU-hour in us-east-1), typically under half on spot.
        batch_max_vcpus=cfg.get_int("batchMaxVcpus", 16),
        # Per job. A 1 M parameter model at batch 24 gains little past 2 threads (the bench runs
        # on 2), and 2 per job runs twice as many folds at once as 4 would.
        batch_vcpus=cfg.get_int("batchVcpus", 2),
        # Per job, a hard limit: a job above it is killed, and not retried. The trainer loads
        # every clip as float32 (~250 KB a clip at the bench's CREMA-D shapes, ~1.9 GB for 7,442
        # clips), then pools and standardises copies (~0.8 GB each), beside torch and the model
        # (~0.6 GB): a peak of perhaps 4 GB, estimated, not measured. 7168 MiB leaves room, and
        # two such jobs still fill the ~15.5 GiB a 16 GiB, 4-vCPU instance gives ECS.
        batch_memory_mib=cfg.get_int("batchMemoryMib", 7168),
        # Comma-separated. General-purpose types (4 GiB per vCPU, so 2-vCPU jobs of 7 GiB pack
        # with no vCPU left idle), Intel and AMD, so that spot finds capacity; xlarge and 2xlarge
        # only, so that Batch cannot overshoot the queue with one huge instance.
        batch_instance_types=tuple(t.strip() for t in (cfg.get("batchInstanceTypes") or
                                   "m7i.xlarge,m7i.2xlarge,m6i.xlarge,m6i.2xlarge,m6a.xlarge,m6a.2xlarge")
                                   .split(",")),
        # Attempts per job (the first run counts as one): a job is retried only when its host
        # was reclaimed (batch.py), so 3 rides out two spot interruptions of one fold.
        batch_attempts=cfg.get_int("batchAttempts", 3),
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
    for key, value in (("batchMaxVcpus", s.batch_max_vcpus), ("batchVcpus", s.batch_vcpus)):
        if value < 1:
            problems.append(f"{key}={value}: must be 1 or more")
    if s.batch_vcpus > s.batch_max_vcpus >= 1:
        problems.append(f"batchVcpus={s.batch_vcpus} is more than batchMaxVcpus={s.batch_max_vcpus}: "
                        "no job could ever start")
    if s.batch_memory_mib < 1024:
        problems.append(f"batchMemoryMib={s.batch_memory_mib}: must be 1024 or more (the trainer "
                        "needs about 0.6 GB before it loads any data)")
    if not 1 <= s.batch_attempts <= 10:
        problems.append(f"batchAttempts={s.batch_attempts}: AWS Batch allows 1 to 10 attempts")
    bad_types = [t for t in s.batch_instance_types if not INSTANCE_TYPE.fullmatch(t)]
    if bad_types or not s.batch_instance_types:
        problems.append(f"batchInstanceTypes={','.join(s.batch_instance_types)!r}: give EC2 "
                        "instance types or families separated by commas, e.g. c7i.xlarge,c6i.xlarge")
    if s.log_retention_days not in LOG_RETENTION_DAYS:
        problems.append(f"logRetentionDays={s.log_retention_days}: CloudWatch accepts one of "
                        f"{', '.join(map(str, LOG_RETENTION_DAYS))}")
    if problems:
        raise pulumi.RunError("invalid stack config: " + "; ".join(problems))
