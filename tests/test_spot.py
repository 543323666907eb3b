"""trainer/spot.py against a fake instance metadata service on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import structlog

from trainer.spot import SpotWatcher

NOTICE = {"action": "terminate", "time": "2026-01-01T12:00:00Z"}


class FakeIMDS:
    """IMDSv2 as EC2 serves it: a token first; the spot notice 404 for ``quiet_polls`` polls."""

    def __init__(self, quiet_polls: int = 2):
        self.quiet_polls = quiet_polls
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, token header)
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                imds.log.append(("PUT", self.path, None))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if self.path != "/latest/api/token" or not ttl:
                    return self.reply(400)
                self.reply(200, b"tok-123")

            def do_GET(self):
                token = self.headers.get("X-aws-ec2-metadata-token")
                imds.log.append(("GET", self.path, token))
                if token != "tok-123":
                    return self.reply(401)
                if self.path != "/latest/meta-data/spot/instance-action":
                    return self.reply(404)
                polls = sum(1 for m, p, _ in imds.log if m == "GET" and p == self.path)
                if polls <= imds.quiet_polls:
                    return self.reply(404, b"Not Found")
                self.reply(200, json.dumps(NOTICE).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    server = FakeIMDS()
    yield server
    server.close()


def test_notice_sends_sigterm_to_this_process(imds):
    got = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: got.set())
    try:
        watcher = SpotWatcher(imds.url, interval=0.05, timeout=1)
        watcher.start()
        deadline = time.monotonic() + 10
        while not got.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs in the main thread, between these sleeps
        assert got.is_set(), imds.log
    finally:
        signal.signal(signal.SIGTERM, old)
    assert watcher.notice == NOTICE
    watcher.join(2)
    assert not watcher.is_alive()  # one notice, one signal
    assert imds.log[0] == ("PUT", "/latest/api/token", None)
    gets = [entry for entry in imds.log if entry[0] == "GET"]
    assert len(gets) == 3 and all(token == "tok-123" for _, _, token in gets)
    assert sum(1 for m, _, _ in imds.log if m == "PUT") == 1  # the token is reused


def test_enabled_watcher_ends_the_process_like_a_spot_reclaim(imds, monkeypatch):
    monkeypatch.setenv("AVE_WATCH_SPOT", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    code = ("import time; from trainer.spot import SpotWatcher\n"
            "assert SpotWatcher.start_if_enabled(interval=0.05)\n"
            "time.sleep(20)")
    proc = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert "spot.interruption_notice" in proc.stdout + proc.stderr


def test_not_started_unless_enabled(monkeypatch):
    monkeypatch.delenv("AVE_WATCH_SPOT", raising=False)
    assert SpotWatcher.start_if_enabled() is None
    monkeypatch.setenv("AVE_WATCH_SPOT", "0")
    assert SpotWatcher.start_if_enabled() is None


def test_unreachable_imds_is_harmless_and_quiet():
    from conftest import free_port

    watcher = SpotWatcher(f"http://127.0.0.1:{free_port()}", interval=0.02, timeout=0.2)
    got = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: got.set())
    try:
        with structlog.testing.capture_logs() as logs:
            watcher.start()
            time.sleep(0.5)
            assert watcher.is_alive()
            watcher.stop()
            watcher.join(2)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert not got.is_set() and watcher.notice is None
    assert [e["event"] for e in logs] == ["spot.imds_unreachable"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_spot_notice_stops_a_training_run_with_its_checkpoint_in_s3(imds, s3_bucket, s3_client,
                                                                   tmp_path, monkeypatch):
    import io

    import torch

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "trainer", "demo-data", "--out", str(data),
                    "--speakers", "8", "--clips-per-speaker", "12"], check=True,
                   capture_output=True, timeout=120)
    monkeypatch.setenv("AVE_WATCH_SPOT", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")  # aws_env's, for boto's credential lookup
    imds.quiet_polls = 1  # the notice comes at the second poll, 5 s in
    out = f"s3://{s3_bucket}/runs/spot/"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--data", str(data), "--out", out,
         "--epochs", "60", "--patience", "60", "--d-model", "32", "--heads", "2"],
        env=dict(os.environ), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 143, proc.stderr[-3000:]
    status = json.loads(s3_client.get_object(Bucket=s3_bucket, Key="runs/spot/status.json")
                        ["Body"].read())
    assert status["state"] == "stopped"
    ckpt = torch.load(io.BytesIO(s3_client.get_object(
        Bucket=s3_bucket, Key="runs/spot/checkpoints/last.pt")["Body"].read()), weights_only=True)
    assert ckpt["epoch"] < 60
