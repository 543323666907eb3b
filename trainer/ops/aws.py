"""Every AWS client of the operator commands, made in one place, and their errors in plain words.

boto3's standard settings apply: the credential chain (AWS_PROFILE, keys in the environment,
SSO), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL, which the tests and the local backend point at a
moto server: the same code talks to AWS or to moto over HTTP, with nothing patched.

Example:
    >>> account = check_credentials("us-east-1")    # OpsError with what to do if there are none
    >>> ssm = client("ssm", "us-east-1")
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    TokenRetrievalError,
)

from trainer.ops import OpsError
from trainer.store.s3 import S3Error

CREDENTIALS_HELP = ("configure AWS credentials first: `aws configure` (access keys) or "
                    "`aws sso login --profile NAME` and `export AWS_PROFILE=NAME`")
REJECTED = {"ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
            "UnrecognizedClientException", "SignatureDoesNotMatch", "AuthFailure",
            "RequestExpired"}


def client(service: str, region: str | None = None, attempts: int | None = None,
           read_timeout: int = 60):
    """A boto3 client with standard retries and bounded timeouts (a session per client)."""
    retries = {"mode": "standard",
               "max_attempts": attempts or int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))}
    cfg = Config(retries=retries, connect_timeout=5, read_timeout=read_timeout)
    return boto3.session.Session(region_name=region or None).client(service, config=cfg)


def check_credentials(region: str | None = None) -> str:
    """The AWS account the credentials belong to; OpsError if there are none or they are refused."""
    region = region or boto3.session.Session().region_name or "us-east-1"  # STS answers anywhere
    try:
        return client("sts", region, attempts=2).get_caller_identity()["Account"]
    except Exception as e:
        raise explain(e, "checking the AWS credentials") or e from None


def error_code(exc: BaseException) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def explain(exc: BaseException, doing: str = "calling AWS") -> OpsError | None:
    """A one-line OpsError for an AWS (or S3) failure while ``doing`` something; None if unknown."""

    if isinstance(exc, OpsError):
        return exc
    if isinstance(exc, S3Error):
        return OpsError(f"{doing}: {exc}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return OpsError(f"no AWS credentials ({doing}): {CREDENTIALS_HELP}")
    if isinstance(exc, TokenRetrievalError):
        return OpsError(f"the AWS SSO session has expired ({doing}): run `aws sso login`")
    if isinstance(exc, NoRegionError):
        return OpsError(f"no AWS region ({doing}): export AWS_DEFAULT_REGION=us-east-1 or set "
                        "one in ~/.aws/config")
    if isinstance(exc, EndpointConnectionError):
        return OpsError(f"cannot reach AWS ({doing}): {exc}; check the network and the region")
    code = error_code(exc)
    if code in REJECTED:
        return OpsError(f"AWS refused the credentials ({code}) while {doing}: they have expired "
                        f"or are wrong; {CREDENTIALS_HELP}")
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return OpsError(f"access denied while {doing} ({code}): the credentials lack a "
                        "permission; see the message: " + " ".join(str(exc).split())[:200])
    if isinstance(exc, (ClientError, BotoCoreError)):
        return OpsError(f"AWS failed while {doing}: " + " ".join(str(exc).split())[:300])
    return None
