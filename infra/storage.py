"""The S3 bucket: the data set and every run directory (`runs/RUN_ID/`, DESIGN.md section 4).

Private and locked down: public access blocked, encrypted at rest (SSE-S3), reachable only
over TLS, versioned so an overwritten checkpoint can be recovered for a while.
"""

import json

import pulumi
import pulumi_aws as aws

from settings import Settings

# Checkpoints are rewritten every epoch under runs/; with versioning on, each rewrite leaves
# a noncurrent version that would be billed forever. Keep them this long, then expire them.
NONCURRENT_DAYS = 14


def bucket(cfg: Settings) -> aws.s3.Bucket:
    data = aws.s3.Bucket("ave-bucket", force_destroy=cfg.force_destroy, tags=cfg.tags)

    public_block = aws.s3.BucketPublicAccessBlock(
        "ave-bucket-public-access",
        bucket=data.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        "ave-bucket-encryption",
        bucket=data.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
    )
    versioning = aws.s3.BucketVersioning(
        "ave-bucket-versioning",
        bucket=data.id,
        versioning_configuration={"status": "Enabled"},
    )
    aws.s3.BucketLifecycleConfiguration(
        "ave-bucket-lifecycle",
        bucket=data.id,
        rules=[{
            "id": "expire-old-checkpoints",
            "status": "Enabled",
            "filter": {"prefix": "runs/"},
            "noncurrent_version_expiration": {"noncurrent_days": NONCURRENT_DAYS},
            "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
        }],
        # S3 rejects noncurrent-version rules racing the versioning change on a new bucket.
        opts=pulumi.ResourceOptions(depends_on=[versioning]),
    )
    aws.s3.BucketPolicy(
        "ave-bucket-tls-only",
        bucket=data.id,
        policy=data.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
        # The block must exist first, or S3 may judge the policy before public access is shut.
        opts=pulumi.ResourceOptions(depends_on=[public_block]),
    )
    return data


def tls_only_policy(bucket_arn: str) -> dict:
    """Deny every request to the bucket or its objects that does not come over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    }
