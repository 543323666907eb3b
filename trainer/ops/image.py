"""The trainer's image: built with the Docker SDK from this checkout, pushed to the stack's ECR.

    python -m trainer deploy     # builds av-emotion-trainer for the instance, pushes REPO:latest
    docker build -t av-emotion-trainer .    # the same build by hand (see the Dockerfile)

The build context is what .dockerignore lets in (Dockerfile, pyproject.toml, README.md,
trainer/) plus, when one of ``settings.torch_wheels`` matches a CPU torch wheel, that wheel under
wheels/ (the Dockerfile then installs it instead of downloading torch). Pushes authenticate with
a token from ECR's GetAuthorizationToken, given to the engine per request: nothing is stored in
~/.docker/config.json.
"""

from __future__ import annotations

import base64
import glob
import re
import tarfile
import tempfile
from collections import deque
from pathlib import Path

from trainer.ops import OpsError
from trainer.ops.settings import REPO

PLATFORMS = {"x86_64": "linux/amd64", "x86_64_mac": "linux/amd64", "arm64": "linux/arm64",
             "arm64_mac": "linux/arm64", "aarch64": "linux/arm64"}
ENGINE_HELP = ("start a Docker engine: Docker Desktop, `sudo systemctl start docker`, or on a "
               "machine without one `sudo bash scripts/docker-engine.sh`")
EXPIRED_LOGIN = ("authorization token has expired", "reauthenticate", "no basic auth credentials")


def engine():
    """A Docker SDK client whose engine answers; OpsError (with how to start one) otherwise."""
    import docker  # Docker SDK (the ops extra): loaded when an image is built

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise OpsError(f"no Docker engine answers ({' '.join(str(e).split())[:160]}): "
                       f"{ENGINE_HELP}") from None


def platform_for(architectures: list[str]) -> str:
    """The image platform for an instance type's architectures (x86_64 first if both)."""
    for arch in architectures:
        if arch in PLATFORMS:
            return PLATFORMS[arch]
    raise OpsError(f"no image platform for architectures {architectures}")


def find_wheel(patterns: list[str], root: Path = REPO) -> Path | None:
    """The first CPU torch wheel that one of ``patterns`` (relative to ``root``) matches."""
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        for match in sorted(glob.glob(full)):
            if "+cpu" in Path(match).name:
                return Path(match)
    return None


def context_files(root: Path = REPO, wheel: Path | None = None) -> dict[str, Path]:
    """Archive name -> file, the same set .dockerignore lets into `docker build .`."""
    files = {name: root / name for name in ("Dockerfile", "pyproject.toml", "README.md")
             if (root / name).is_file()}
    for path in sorted((root / "trainer").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[path.relative_to(root).as_posix()] = path
    if wheel is not None:
        files[f"wheels/{wheel.name}"] = wheel
    if "Dockerfile" not in files:
        raise OpsError(f"no Dockerfile in {root}: run this from the repository's checkout")
    return files


def write_context(fileobj, files: dict[str, Path]) -> None:
    """A tar of ``files`` with fixed owners and times, so an unchanged tree reuses the cache."""
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for name, path in sorted(files.items()):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as f:
                tar.addfile(info, f)


def build(client, tag: str, wheel: Path | None = None, platform: str | None = None,
          root: Path = REPO, echo=print) -> str:
    """Build the image from ``root`` as ``tag``; its id. Prints each build step."""
    files = context_files(root, wheel)
    # An engine without the default bridge (DESIGN.md section 6) builds on the host's network.
    network = None if client.networks.list(names=["bridge"]) else "host"
    tail: deque[str] = deque(maxlen=15)
    with tempfile.TemporaryFile() as context:
        write_context(context, files)
        context.seek(0)
        stream = client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                  platform=platform, network_mode=network, decode=True)
        for chunk in stream:
            for line in chunk.get("stream", "").splitlines():
                tail.append(line)
                if line.startswith(("Step ", "Successfully tagged")):
                    echo(f"    {line}")
            if "error" in chunk:
                raise OpsError(f"docker build failed: {chunk['error'].strip()}; last output: "
                               + " | ".join(list(tail)[-5:]))
    return client.images.get(tag).id


def ecr_auth(ecr, repository_url: str) -> dict:
    """Credentials for the engine to push to ``repository_url``, from GetAuthorizationToken."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return {"username": username, "password": password,
            "serveraddress": repository_url.split("/")[0]}


def login_expired(message: str) -> bool:
    return any(s in message.lower() for s in EXPIRED_LOGIN)


def _push_once(client, repository: str, tag: str, auth: dict,
               echo) -> tuple[str | None, str | None]:
    """Push one tag; (the engine's error message or None, the digest it reported or None)."""
    last, digest = "", None
    for chunk in client.api.push(repository, tag=tag, auth_config=auth, stream=True, decode=True):
        if "error" in chunk:
            return chunk["error"].strip(), None
        status = chunk.get("status", "")
        found = re.search(r"digest: (sha256:[0-9a-f]{64})", status)
        digest = found.group(1) if found else digest
        if status in ("Pushed", "Layer already exists") or "digest:" in status:
            if status != last:
                echo(f"    {status} {chunk.get('id', '')}".rstrip())
            last = status
    return None, digest


def push(client, image: str, repository_url: str, tags: list[str], login,
         echo=print) -> str | None:
    """Tag ``image`` as ``repository_url:TAG`` for each tag and push it; the pushed image's
    ``repository_url@sha256:DIGEST`` (None if the engine did not say). ``login()`` returns the
    ECR credentials; an expired login is renewed once before giving up."""
    local = client.images.get(image)
    for tag in tags:
        local.tag(repository_url, tag)
    auth, digest = login(), None
    for tag in tags:
        error, found = _push_once(client, repository_url, tag, auth, echo)
        if error and login_expired(error):
            echo("    the ECR login has expired; logging in again")
            auth = login()
            error, found = _push_once(client, repository_url, tag, auth, echo)
        if error:
            raise push_error(error, f"{repository_url}:{tag}")
        digest = digest or found
    return f"{repository_url}@{digest}" if digest else None


def push_error(message: str, target: str) -> OpsError:
    if login_expired(message):
        return OpsError(f"ECR refused the login for {target} ({message}) even after a fresh one: "
                        "ECR tokens last 12 hours and need a correct clock here; check the time "
                        "(date -u) and the AWS credentials, then make deploy again")
    return OpsError(f"docker push {target} failed: {message}")
