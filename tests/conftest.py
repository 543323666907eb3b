"""Shared fixtures: a real S3 stand-in (a moto server over HTTP) and a proxy that breaks it on purpose.

- ``moto_server`` (session): starts ``python -m moto.server -H 127.0.0.1 -p PORT`` as a subprocess,
  waits until it answers, yields its endpoint URL (``http://127.0.0.1:PORT``), kills it at the end.
  All tests share it; each makes its own bucket.
- ``aws_env``: points boto3 at that server through the environment only (AWS_ENDPOINT_URL, fake
  keys ``testing``, region us-east-1; AWS_PROFILE unset, no ~/.aws files, no IMDS), so the code
  under test and its subprocesses need no test hooks. Yields a copy of ``os.environ`` to hand to
  ``subprocess.run(env=...)``.
- ``s3_bucket``: a fresh, uniquely named bucket on the moto server (also applies ``aws_env``).
- ``s3_client``: a boto3 client straight to the moto server (never through the proxy), for
  arranging and checking objects.
- ``flaky_proxy``: a loopback HTTP proxy in front of the moto server with AWS_ENDPOINT_URL pointed
  at it; it counts requests and fails the ones a test asks for::

      flaky_proxy.fail("503", every=3)           # every third request: 503 SlowDown
      flaky_proxy.fail("drop", rate=0.3, methods={"PUT"})  # 30% of PUTs: closed, no answer
      flaky_proxy.fail("cut", methods={"GET"}, times=2)    # 2 GETs: half the body, then closed
      flaky_proxy.fail("500")                    # every request: 500 InternalError (S3 down)
      flaky_proxy.fail("403", path="/x.npz")     # this key: AccessDenied, not retried
      flaky_proxy.heal()
      flaky_proxy.count("GET", "/data/")         # requests seen, by method and path substring

Everything is real HTTP on 127.0.0.1; nothing inside boto3 is patched.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _restore_environ():
    """Every test leaves os.environ as it found it. The operator side run in-process points this
    process's boto3 at the local stand-in by setting os.environ (LocalBackend.activate); left
    there, it told a later test's subprocess that instance metadata is disabled."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """URL of a moto server running in its own process on 127.0.0.1."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not answering on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws_env(monkeypatch, moto_server, tmp_path):
    """Environment of a boto3 user talking to the moto server; yields a copy of os.environ."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield dict(os.environ)


def _moto_client(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3_client(moto_server):
    """A boto3 S3 client straight to the moto server."""
    return _moto_client(moto_server)


@pytest.fixture
def s3_bucket(aws_env, moto_server):
    """Name of a new, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    _moto_client(moto_server).create_bucket(Bucket=name)
    yield name


# --- a proxy that fails requests on purpose --------------------------------------------------

_S3_ERRORS = {"503": (503, "SlowDown", "Please reduce your request rate."),
              "500": (500, "InternalError", "We encountered an internal error."),
              # what S3 answers a missing key to a caller that may not list the bucket; no
              # client retries it: it fails at once
              "403": (403, "AccessDenied", "Access Denied")}
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect",
        "proxy-connection", "content-length"}


class FlakyProxy:
    """HTTP proxy on 127.0.0.1 in front of ``upstream``; see the module docstring."""

    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = upstream.removeprefix("http://")
        self.requests: list[tuple[str, str, str]] = []  # (method, path, outcome)
        self._rules: list[dict] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, mode: str, rate: float = 1.0, every: int | None = None,
             times: int | None = None, methods: set[str] | None = None, path: str = "") -> None:
        """Fail matching requests: ``mode`` is "503", "500", "403" (AccessDenied, which no client
        retries), "drop" (close, no answer) or "cut" (answer with half the body, then close).
        ``every=N`` fails every Nth matching request,
        else a fraction ``rate``; ``times`` bounds how many fail."""
        assert mode in ("503", "500", "403", "drop", "cut"), mode
        with self._lock:
            self._rules.append({"mode": mode, "rate": rate, "every": every, "left": times,
                                "methods": methods, "path": path, "seen": 0})

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def count(self, method: str | None = None, path: str = "", outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, o in self.requests if (method is None or m == method)
                       and path in p and (outcome is None or o == outcome))

    @property
    def failures(self) -> int:
        with self._lock:
            return sum(1 for _, _, o in self.requests if o in ("503", "500", "403", "drop", "cut"))

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule["methods"] and method not in rule["methods"] or rule["path"] not in path:
                    continue
                if rule["left"] is not None and rule["left"] <= 0:
                    continue
                rule["seen"] += 1
                hit = (rule["seen"] % rule["every"] == 0) if rule["every"] else \
                    self._rng.random() < rule["rate"]
                if hit:
                    if rule["left"] is not None:
                        rule["left"] -= 1
                    return rule["mode"]
            return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.requests.append((method, path, outcome))


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _any(self):
        proxy: FlakyProxy = self.server.proxy
        body = self._body()
        mode = proxy._decide(self.command, self.path)
        if mode == "drop":
            proxy._record(self.command, self.path, mode)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode in _S3_ERRORS:
            status, code, message = _S3_ERRORS[mode]
            proxy._record(self.command, self.path, mode)
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>{message}</Message><RequestId>flaky</RequestId></Error>").encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        finally:
            conn.close()
        outcome = "cut" if mode == "cut" and len(data) > 1 else str(resp.status)
        proxy._record(self.command, self.path, outcome)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command == "HEAD":
            return
        if outcome == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


@pytest.fixture
def flaky_proxy(aws_env, moto_server, monkeypatch):
    """A FlakyProxy in front of the moto server, with AWS_ENDPOINT_URL pointing at it."""
    proxy = FlakyProxy(moto_server).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.stop()


# --- the trainer's Docker image, and the operator side's local backend -------------------------
# docker_client: a Docker SDK client, or a skip saying why (a failure under CI=true, where the
#   engine is part of the job: scripts/docker-engine.sh).
# trainer_image: the image built from this checkout, once per session, by the product's own build
#   code (trainer.ops.image.build: the .dockerignore'd context plus the CPU torch wheel on disk).
#   Any test that runs the image should use it, so CI builds it once. AVE_TEST_IMAGE=TAG uses an
#   image already built instead.
# finished_run: a real run directory of a short training (made once per session, locally).
# local_stack: the local backend's state (AVE_STATE_DIR) pointing at the moto server and a fresh
#   bucket, as `deploy --backend local` leaves it, without a container; yields the state dict.

TORCH_WHEELS = ["wheels/torch-*+cpu-*.whl", "/opt/wheels/torch-*+cpu-*.whl"]


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # no SDK, no socket, engine down
        why = (f"no Docker engine answers ({type(e).__name__}); start one: "
               "sudo bash scripts/docker-engine.sh")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    return client


@pytest.fixture(scope="session")
def trainer_image(docker_client):
    from trainer.ops import image

    given = os.environ.get("AVE_TEST_IMAGE")
    if given:
        return given
    tag = "av-emotion-trainer:test"
    t0 = time.monotonic()
    image.build(docker_client, tag, wheel=image.find_wheel(TORCH_WHEELS), echo=lambda line: None)
    print(f"trainer_image: {tag} built in {time.monotonic() - t0:.0f}s")
    return tag


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """Path of a finished run directory (2 epochs on a tiny demo set)."""
    from util import FAST, tiny_demo

    root = tmp_path_factory.mktemp("finished-run")
    data = tiny_demo(root / "data", speakers=8, clips_per_speaker=8)
    out = root / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run([sys.executable, "-m", "trainer", "train", "--data", str(data), "--out",
                    str(out), "--epochs", "2", *FAST], check=True, capture_output=True, env=env,
                   timeout=300)
    return out


@pytest.fixture
def local_stack(aws_env, moto_server, s3_bucket, tmp_path, monkeypatch):
    import json

    state_dir = tmp_path / ".ave"
    state_dir.mkdir()
    state = {"stack": f"local-{s3_bucket[-6:]}", "endpoint": moto_server, "pid": None,
             "bucket": s3_bucket, "region": "us-east-1"}
    (state_dir / "local.json").write_text(json.dumps(state))
    monkeypatch.setenv("AVE_STATE_DIR", str(state_dir))
    monkeypatch.chdir(tmp_path)
    yield state


@pytest.fixture
def restore_log_handlers():
    """A verb run in the test's process sets up logging on the test's captured stderr; put back
    the handlers that were there, so that a later test does not log into a closed stream."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in before:
        root.addHandler(h)
