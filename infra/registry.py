"""The ECR repository that `make deploy` pushes the trainer image to and the instance pulls from."""

import json

import pulumi_aws as aws

from settings import Settings


def repository(cfg: Settings) -> aws.ecr.Repository:
    repo = aws.ecr.Repository(
        "ave-images",
        image_scanning_configuration={"scan_on_push": True},
        # MUTABLE: deploy may re-push a moving tag (e.g. latest); runs record the digest.
        image_tag_mutability="MUTABLE",
        force_delete=cfg.force_destroy,
        tags=cfg.tags,
    )
    aws.ecr.LifecyclePolicy(
        "ave-images-lifecycle",
        repository=repo.name,
        policy=json.dumps(keep_last_policy(cfg.keep_images)),
    )
    return repo


def keep_last_policy(count: int) -> dict:
    """Expire every image but the newest `count`, tagged or not: each one is ~1 GB of storage."""
    return {
        "rules": [{
            "rulePriority": 1,
            "description": f"keep the last {count} images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": count},
            "action": {"type": "expire"},
        }],
    }
