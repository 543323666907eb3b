"""S3 for the trainer: a data set synced down into a cache, a folder synced up; the run directory's
mirror, which builds on this module, is ``trainer.store.mirror``.

Only boto3, with its standard settings: the credential chain (env, AWS_PROFILE, instance role),
AWS_ENDPOINT_URL (a local moto server in tests and in the local backend), AWS_DEFAULT_REGION,
AWS_MAX_ATTEMPTS and AWS_RETRY_MODE.

Example:
    >>> folder = sync_down("s3://my-bucket/data/", "~/.cache/av-emotion")   # cached, only changes
    >>> sync_up("demo-data", "s3://my-bucket/data/")                       # the operator's deploy

Errors a user can act on (no credentials, missing bucket, empty prefix, S3 unreachable) are raised
as ``S3Error`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Collection, TypeVar

import boto3
import structlog
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tqdm import tqdm

from trainer.store.files import (  # noqa: F401 - is_temp_name: also here, for its users
    SYNC_INDEX,
    atomic_write_bytes,
    is_temp_name,
    walk_files,
)
from trainer.store.s3uri import parse_s3_uri  # noqa: F401 - also this module's, for its users

log = structlog.get_logger()
T = TypeVar("T")

INDEX = SYNC_INDEX  # sidecar in a sync_down folder: rel path -> etag, size, mtime_ns
# 8 MiB parts, as s3transfer's defaults; stated so that sync_up can predict multipart ETags.
CHUNK = 8 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK)
# S3 error codes worth another try; any 5xx and 429 are too.
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "RequestTimeoutException", "InternalError", "ServiceUnavailable",
                    "RequestLimitExceeded"}


class S3Error(RuntimeError):
    """An S3 problem the user can act on; ``str()`` is one line."""


def as_folder(prefix: str) -> str:
    """A prefix as a folder: ``data`` -> ``data/`` (so ``data2/...`` is not under it)."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def client():
    """The S3 client every function here uses: standard chain, retries and timeouts in one place.

    botocore retries throttling, 5xx and connection errors itself (AWS_MAX_ATTEMPTS and
    AWS_RETRY_MODE override the defaults below, for tests); the functions here add their own
    backoff on top for whole operations.
    """
    retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
               "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "8"))}
    cfg = Config(retries=retries, connect_timeout=5, read_timeout=60, max_pool_connections=16)
    # A session per client: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client("s3", config=cfg)


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's upload_file raises S3UploadFailedError from the ClientError that says why."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return exc.__context__
    return exc


def is_transient(exc: BaseException) -> bool:
    exc = _unwrap(exc)
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True  # EndpointConnectionError, ConnectionClosedError, ReadTimeout, cut bodies
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES or status >= 500 \
            or status == 429
    return False


def error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def explain(exc: BaseException, where: str) -> S3Error:
    """A one-line S3Error for what went wrong at ``where`` (a URI)."""
    exc = _unwrap(exc)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return S3Error(f"no AWS credentials for {where}: set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, or run with an instance role")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        if code == "NoSuchBucket":
            return S3Error(f"bucket of {where} does not exist")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "ExpiredToken"):
            return S3Error(f"access denied to {where} ({code}): check the credentials and policy")
    if isinstance(exc, BotoConnectionError):
        return S3Error(f"cannot reach S3 for {where}: {error_text(exc)}")
    return S3Error(f"S3 failed for {where}: {error_text(exc)}")


def retry(fn: Callable[[], T], what: str, attempts: int = 4, backoff: float = 1.0,
          max_backoff: float = 20.0) -> T:
    """Call ``fn`` again on transient S3 errors, with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt >= attempts or not is_transient(e):
                raise
            delay = random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1)))
            log.warning("s3.retry", what=what, attempt=attempt, delay=round(delay, 2),
                        error=error_text(e))
            time.sleep(delay)
    raise AssertionError("unreachable")


def exists(uri: str) -> bool:
    """Whether the object ``uri`` exists (False on a 404, anything else raises)."""
    bucket, key = parse_s3_uri(uri)
    try:
        retry(lambda: client().head_object(Bucket=bucket, Key=key), f"head {uri}")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def read_bytes(uri: str) -> bytes:
    """The whole object ``uri``."""
    bucket, key = parse_s3_uri(uri)
    return retry(lambda: client().get_object(Bucket=bucket, Key=key)["Body"].read(), f"get {uri}")


def _unsafe(rel: str) -> str | None:
    """Why the relative key ``rel`` cannot be a file under a folder, or None if it can.

    S3 keys are plain strings, so ``a/../../x`` or ``a//x`` are valid keys; as local paths they
    would leave the folder, or name the same file as another key.
    """
    segments = rel.split("/")
    if ".." in segments:
        return "'..' in the key would leave the folder"
    if "" in segments or "." in segments:  # a leading "/" too
        return "an empty or '.' segment in the key (not a plain relative path)"
    return None


def list_objects(s3, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Objects under ``prefix`` (a folder prefix) as ``{relative key: (size, etag)}``; keys that
    are not plain relative paths are left out, each with a warning that says why."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/") or rel == INDEX:
                continue  # folder markers, our own sidecar
            if why := _unsafe(rel):
                log.warning("s3.unsafe_key_skipped", key=obj["Key"], reason=why)
                continue
            out[rel] = (obj["Size"], obj["ETag"].strip('"'))
    return out


def _inside(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` resolves (symbolic links followed) to a path inside ``root``."""
    return (root / rel).resolve().is_relative_to(root.resolve())


def _progress(total: int, desc: str) -> tqdm:
    """A byte progress bar on a terminal; elsewhere a disabled one (log lines say the progress)."""
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty())


def sync_down(uri: str, cache_dir: str | os.PathLike, workers: int = 8) -> Path:
    """Download every object under ``uri`` into ``cache_dir/BUCKET/PREFIX/`` and return that folder.

    A file already there with the same size, mtime and ETag as recorded in the folder's
    ``.s3-sync-index.json``, or with the object's size and ETag (a file uploaded from this
    folder: ``local_etag``), is not downloaded again; a changed object is; a file that was synced
    before but is gone from S3 is removed. Each file arrives under a temp name and is renamed.

    Nothing is written outside that folder: a prefix with a ``..``, ``.`` or empty segment is
    refused, and an object whose key is not a plain relative path, or whose local path would
    resolve outside the folder (through a symbolic link), is skipped with a warning.

    Raises:
        S3Error: no credentials, no such bucket, nothing under the prefix, S3 unreachable.
        UnsafeURI (a DataError): a ``..``, ``.`` or empty segment in the prefix.

    Example:
        >>> sync_down("s3://my-bucket/data/", "~/.cache/av-emotion")
        PosixPath('/home/me/.cache/av-emotion/my-bucket/data')
    """
    uri = str(uri)
    bucket, prefix = parse_s3_uri(uri)
    prefix = as_folder(prefix)
    dest = Path(cache_dir).expanduser() / bucket / prefix
    s3 = client()
    try:
        objects = retry(lambda: list_objects(s3, bucket, prefix), f"list {uri}")
    except (BotoCoreError, ClientError) as e:
        raise explain(e, uri) from None
    if not objects:
        raise S3Error(f"no objects under {uri}")

    dest.mkdir(parents=True, exist_ok=True)
    for rel in [r for r in objects if not _inside(dest, r)]:  # e.g. a linked folder in the cache
        log.warning("s3.unsafe_key_skipped", key=prefix + rel,
                    reason=f"its local path would resolve outside {dest}")
        del objects[rel]
    if not objects:
        raise S3Error(f"no objects under {uri} that can be written inside {dest}")
    index_path = dest / INDEX
    try:
        index = json.loads(index_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        index = {}

    def current(rel: str) -> bool:
        size, etag = objects[rel]
        try:
            st = (dest / rel).stat()
        except OSError:
            return False
        entry = {"etag": etag, "size": size, "mtime_ns": st.st_mtime_ns}
        if st.st_size != size:
            return False
        if index.get(rel) == entry:
            return True
        # Not synced down by us, but perhaps the very bytes sent from here (an extraction's
        # staging folder): its MD5 says so, and it is not downloaded again.
        if local_etag(dest / rel) == etag:
            index[rel] = entry
            return True
        return False

    for rel in [r for r in index if r not in objects]:  # deleted in S3: not training data now
        if not _unsafe(rel) and _inside(dest, rel):  # an index edited by hand deletes nothing else
            (dest / rel).unlink(missing_ok=True)
        del index[rel]
    todo = [rel for rel in sorted(objects) if not current(rel)]
    total = sum(objects[rel][0] for rel in todo)
    log.info("s3.sync_down.start", uri=uri, local=str(dest), objects=len(objects),
             to_download=len(todo), bytes=total)

    def save_index() -> None:
        atomic_write_bytes(index_path, json.dumps({"uri": uri, "files": index}).encode())

    def download(rel: str, bar: tqdm) -> None:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            retry(lambda: s3.download_file(bucket, prefix + rel, str(tmp), Config=TRANSFER,
                                           Callback=bar.update), f"get {rel}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    t0 = last_log = last_save = time.monotonic()
    done = 0
    with _progress(total, "s3 sync") as bar, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(download, rel, bar): rel for rel in todo}
        try:
            for fut in as_completed(futures):
                rel = futures[fut]
                try:
                    fut.result()
                except Exception as e:  # botocore's, or s3transfer's RetriesExceededError
                    raise explain(e, f"s3://{bucket}/{prefix}{rel}") from None
                size, etag = objects[rel]
                index[rel] = {"etag": etag, "size": size, "mtime_ns": (dest / rel).stat().st_mtime_ns}
                done += 1
                now = time.monotonic()
                if bar.disable and now - last_log > 10:
                    log.info("s3.sync_down.progress", files=f"{done}/{len(todo)}", bytes=bar.n)
                    last_log = now
                if now - last_save > 5:
                    save_index()
                    last_save = now
        finally:
            for fut in futures:
                fut.cancel()
            save_index()
    log.info("s3.sync_down.done", uri=uri, downloaded=done, skipped=len(objects) - len(todo),
             bytes=total, seconds=round(time.monotonic() - t0, 2))
    return dest


def local_etag(path: Path, chunk: int = CHUNK) -> str:
    """The ETag S3 gives ``path`` when uploaded with ``TRANSFER``: the MD5, or for a multipart
    upload the MD5 of the parts' MD5s and ``-N`` (not for SSE-KMS objects, whose ETag is opaque)."""
    parts = []
    with open(path, "rb") as f:
        while block := f.read(chunk):
            parts.append(hashlib.md5(block).digest())
    if len(parts) <= 1 and path.stat().st_size <= chunk:
        return (parts[0] if parts else hashlib.md5(b"").digest()).hex()
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def same_as_remote(files: dict[str, Path], remote: dict[str, tuple[int, str]]) -> set[str]:
    """The relative paths of ``files`` that ``remote`` (``list_objects``) holds with the same
    size and ETag, i.e. the same bytes (MD5s computed only where the sizes agree)."""
    same = set()
    for rel, path in files.items():
        got = remote.get(rel)
        if got is not None and got[0] == path.stat().st_size and got[1] == local_etag(path):
            same.add(rel)
    return same


def sync_up(local_dir: str | os.PathLike, uri: str, only_changed: bool = True,
            workers: int = 8, exclude: Collection[str] = ()) -> dict:
    """Upload every file under ``local_dir`` to ``uri`` but those whose relative paths are in
    ``exclude``; with ``only_changed``, skip objects already there with the same size and ETag.
    Nothing is deleted in S3. Returns counts. On the first file that cannot be sent, the rest
    are cancelled and ``S3Error`` is raised: a file that must go up only after all others (a
    completion record) is excluded here and sent after this returns.

    Example:
        >>> sync_up("demo-data", "s3://my-bucket/data/")
        {'uploaded': 12, 'skipped': 0, 'bytes': 40960}
    """
    local = Path(local_dir).expanduser()
    bucket, prefix = parse_s3_uri(uri)
    prefix = as_folder(prefix)
    if not local.is_dir():
        raise FileNotFoundError(f"no folder {local} to upload")
    files = {rel: p for rel, p in walk_files(local).items() if rel not in exclude}
    s3 = client()
    try:
        remote = retry(lambda: list_objects(s3, bucket, prefix), f"list {uri}") if only_changed else {}
    except (BotoCoreError, ClientError) as e:
        raise explain(e, uri) from None
    same = same_as_remote(files, remote)
    todo = [rel for rel in files if rel not in same]
    total = sum(files[rel].stat().st_size for rel in todo)
    log.info("s3.sync_up.start", local=str(local), uri=uri, files=len(files), to_upload=len(todo),
             bytes=total)

    def upload(rel: str, bar: tqdm) -> None:
        retry(lambda: s3.upload_file(str(files[rel]), bucket, prefix + rel, Config=TRANSFER,
                                     Callback=bar.update), f"put {rel}")

    with _progress(total, "s3 upload") as bar, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(upload, rel, bar): rel for rel in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
            except Exception as e:
                for f in futures:
                    f.cancel()
                raise explain(e, f"s3://{bucket}/{prefix}{futures[fut]}") from None
    result = {"uploaded": len(todo), "skipped": len(files) - len(todo), "bytes": total}
    log.info("s3.sync_up.done", uri=uri, **result)
    return result
