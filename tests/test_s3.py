"""trainer/store/s3.py and trainer/store/mirror.py against a real moto server over HTTP, with and without
injected failures."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import structlog
import torch

from trainer.store import s3
from trainer.errors import DataError
from trainer.store.s3 import S3Error, parse_s3_uri, sync_down, sync_up
from trainer.store.mirror import S3Mirror
from util import assert_events_match_metrics, tb_events


def put(client, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


def get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(client, bucket: str, prefix: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def object_gets(proxy, bucket: str) -> int:
    """GETs of objects (not listings) that the proxy passed on."""
    return sum(1 for m, p, o in proxy.requests
               if m == "GET" and p.startswith(f"/{bucket}/") and "list-type" not in p)


@pytest.fixture
def quick(monkeypatch):
    """Short waits for retries (botocore's own and ours) so failure tests stay fast."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setattr(s3, "retry", _fast(s3.retry))


def _fast(retry):
    def fast(fn, what, attempts=4, backoff=1.0, max_backoff=20.0):
        return retry(fn, what, attempts, 0.01, 0.05)
    return fast


# --- URIs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, expected", [
    ("s3://my-bucket/data/", ("my-bucket", "data/")),
    ("s3://my-bucket/runs/r1", ("my-bucket", "runs/r1")),
    ("s3://my.bucket-2", ("my.bucket-2", "")),
    ("s3://abc/", ("abc", "")),
])
def test_parse_s3_uri(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["data/", "s3:/b/x", "s3://", "s3:///data", "s3://Bucket/x",
                                 "s3://a/x", "s3://bad_name/x", "https://b/x", "s3://abc//x"])
def test_parse_s3_uri_rejects_malformed(uri):
    with pytest.raises(ValueError, match="bucket|S3 URI|prefix"):
        parse_s3_uri(uri)


# --- sync_down -------------------------------------------------------------------------------

def test_sync_down_caches_and_follows_changes(flaky_proxy, s3_bucket, s3_client, tmp_path):
    files = {"data/a.npz": b"a" * 100, "data/Actor_01/b.npz": b"b" * 200, "data/m.csv": b"x,y\n"}
    for k, v in files.items():
        put(s3_client, s3_bucket, k, v)
    put(s3_client, s3_bucket, "data2/not-under-data.npz", b"no")
    cache = tmp_path / "cache"

    folder = sync_down(f"s3://{s3_bucket}/data", cache)
    assert folder == cache / s3_bucket / "data"
    assert {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file() and p.name != s3.INDEX} == \
        {k.removeprefix("data/"): v for k, v in files.items()}
    assert object_gets(flaky_proxy, s3_bucket) == 3

    sync_down(f"s3://{s3_bucket}/data/", cache)  # nothing changed: nothing downloaded
    assert object_gets(flaky_proxy, s3_bucket) == 3

    put(s3_client, s3_bucket, "data/a.npz", b"A" * 100)  # same size, new content
    s3_client.delete_object(Bucket=s3_bucket, Key="data/m.csv")
    sync_down(f"s3://{s3_bucket}/data/", cache)
    assert object_gets(flaky_proxy, s3_bucket) == 4
    assert (folder / "a.npz").read_bytes() == b"A" * 100
    assert not (folder / "m.csv").exists()

    (folder / "Actor_01" / "b.npz").write_bytes(b"tampered")  # a local edit is undone
    sync_down(f"s3://{s3_bucket}/data/", cache)
    assert (folder / "Actor_01" / "b.npz").read_bytes() == b"b" * 200
    assert not [p for p in folder.rglob("*.part")]


def test_sync_down_survives_injected_errors(flaky_proxy, s3_bucket, s3_client, tmp_path, quick):
    files = {f"data/{i:02d}.npz": os.urandom(3000 + i) for i in range(12)}
    for k, v in files.items():
        put(s3_client, s3_bucket, k, v)
    flaky_proxy.fail("503", every=4)
    flaky_proxy.fail("drop", every=5)
    flaky_proxy.fail("cut", methods={"GET"}, every=4)
    folder = sync_down(f"s3://{s3_bucket}/data/", tmp_path)
    assert flaky_proxy.failures >= 5
    for k, v in files.items():
        assert (folder / k.removeprefix("data/")).read_bytes() == v


def test_sync_down_says_what_is_wrong(aws_env, s3_bucket, tmp_path, monkeypatch):
    with pytest.raises(S3Error, match="no objects under"):
        sync_down(f"s3://{s3_bucket}/nothing-here/", tmp_path)
    with pytest.raises(S3Error, match="does not exist"):
        sync_down("s3://no-such-bucket-here/data/", tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3Error, match="no AWS credentials"):
        sync_down(f"s3://{s3_bucket}/data/", tmp_path)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("prefix", ["data/../../..", "data/../../../", "../x/", "data/..",
                                    "data//x/", "./data/", "data/./x", "a/b/../../.."])
def test_sync_down_refuses_a_prefix_that_leaves_the_cache(aws_env, s3_bucket, s3_client, tmp_path,
                                                          prefix):
    """`..`, `.` or an empty segment in the prefix is one DataError, before anything is written.
    (S3 keys are plain strings: `data/../../../evil.npz` is an object like any other, and with
    the prefix `data/../../../` it would land three folders above the bucket's cache folder.)"""
    put(s3_client, s3_bucket, f"{prefix.rstrip('/')}/evil.npz", b"evil")
    put(s3_client, s3_bucket, "data/../../../evil.npz", b"evil")
    cache = tmp_path / "a" / "b" / "cache"
    with pytest.raises(DataError, match=r"bad S3 prefix .*'\.\.', '\.' and empty segments") as err:
        sync_down(f"s3://{s3_bucket}/{prefix}", cache)
    assert "\n" not in str(err.value)
    assert files_under(tmp_path) == set()


def test_sync_down_skips_keys_that_are_not_plain_paths(aws_env, s3_bucket, s3_client, tmp_path):
    for key in ("data/ok.npz", "data/Actor_01/ok.npz", "data/../escape.npz",
                "data/a/../../../../escape.npz", "data//double.npz", "data/./dot.npz"):
        put(s3_client, s3_bucket, key, b"x")
    cache = tmp_path / "deep" / "cache"
    with structlog.testing.capture_logs() as logs:
        folder = sync_down(f"s3://{s3_bucket}/data/", cache)
    assert files_under(tmp_path) == {f"deep/cache/{s3_bucket}/data/{rel}" for rel in
                                     ("ok.npz", "Actor_01/ok.npz", s3.INDEX)}
    assert json.loads((folder / s3.INDEX).read_text())["files"].keys() == {"ok.npz", "Actor_01/ok.npz"}
    skipped = {e["key"]: e["reason"] for e in logs if e["event"] == "s3.unsafe_key_skipped"}
    assert set(skipped) == {"data/../escape.npz", "data/a/../../../../escape.npz",
                            "data//double.npz", "data/./dot.npz"}
    assert "would leave the folder" in skipped["data/../escape.npz"]
    assert "not a plain relative path" in skipped["data//double.npz"]


def test_sync_down_never_writes_through_a_link_out_of_the_cache(aws_env, s3_bucket, s3_client,
                                                                tmp_path):
    """A symbolic link inside the cache folder that points elsewhere is not followed for writing."""
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "cache" / s3_bucket / "data"
    folder.mkdir(parents=True)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "file.npz").symlink_to(outside / "file.npz")
    put(s3_client, s3_bucket, "data/ok.npz", b"ok")
    put(s3_client, s3_bucket, "data/linked/evil.npz", b"evil")
    put(s3_client, s3_bucket, "data/file.npz", b"evil")
    with structlog.testing.capture_logs() as logs:
        assert sync_down(f"s3://{s3_bucket}/data/", tmp_path / "cache") == folder
    assert (folder / "ok.npz").read_bytes() == b"ok"
    assert files_under(outside) == set()
    reasons = {e["key"]: e["reason"] for e in logs if e["event"] == "s3.unsafe_key_skipped"}
    assert set(reasons) == {"data/linked/evil.npz", "data/file.npz"}
    assert all("resolve outside" in r for r in reasons.values())


def test_sync_down_deletes_nothing_outside_the_cache(aws_env, s3_bucket, s3_client, tmp_path):
    """A hand-edited index naming `../..` paths removes nothing outside the folder."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    put(s3_client, s3_bucket, "data/ok.npz", b"ok")
    folder = sync_down(f"s3://{s3_bucket}/data/", tmp_path / "cache")
    index = json.loads((folder / s3.INDEX).read_text())
    index["files"]["../../../victim.txt"] = {"etag": "x", "size": 7, "mtime_ns": 0}
    (folder / s3.INDEX).write_text(json.dumps(index))
    sync_down(f"s3://{s3_bucket}/data/", tmp_path / "cache")
    assert victim.read_text() == "keep me"
    assert "../../../victim.txt" not in json.loads((folder / s3.INDEX).read_text())["files"]


# --- sync_up ---------------------------------------------------------------------------------

def test_sync_up_uploads_only_what_changed(flaky_proxy, s3_bucket, s3_client, tmp_path):
    src = tmp_path / "demo"
    (src / "Actor_01").mkdir(parents=True)
    (src / "a.npz").write_bytes(b"a" * 10)
    (src / "Actor_01" / "b.npz").write_bytes(b"b" * 20)
    (src / "big.bin").write_bytes(os.urandom(s3.CHUNK + 1000))  # multipart: ETag "md5-2"
    uri = f"s3://{s3_bucket}/data/"

    assert sync_up(src, uri)["uploaded"] == 3
    assert keys(s3_client, s3_bucket) == {"data/a.npz", "data/Actor_01/b.npz", "data/big.bin"}
    assert get(s3_client, s3_bucket, "data/big.bin") == (src / "big.bin").read_bytes()

    puts = flaky_proxy.count("PUT")
    assert sync_up(src, uri) == {"uploaded": 0, "skipped": 3, "bytes": 0}
    assert flaky_proxy.count("PUT") == puts

    (src / "a.npz").write_bytes(b"c" * 10)
    assert sync_up(src, uri)["uploaded"] == 1
    assert get(s3_client, s3_bucket, "data/a.npz") == b"c" * 10
    assert sync_up(src, uri, only_changed=False)["uploaded"] == 3


# --- S3Mirror --------------------------------------------------------------------------------

def test_mirror_round_trip(flaky_proxy, s3_bucket, s3_client, tmp_path):
    uri = f"s3://{s3_bucket}/runs/r1/"
    a = tmp_path / "a"
    (a / "checkpoints").mkdir(parents=True)
    (a / "checkpoints" / "last.pt").write_bytes(b"weights")
    (a / "status.json").write_text('{"state": "training"}')
    m = S3Mirror(uri, a)
    m.upload("checkpoints/last.pt")
    m.upload("status.json")
    m.flush()  # uploads go by the mirror's thread: flush waits for them
    assert get(s3_client, s3_bucket, "runs/r1/checkpoints/last.pt") == b"weights"
    assert s3_client.head_object(Bucket=s3_bucket, Key="runs/r1/status.json")["ContentType"] == \
        "application/json"

    # flush sends only what changed since its upload: a new log, a new plot
    (a / "train.log").write_text("line\n")
    (a / "plots").mkdir()
    (a / "plots" / "curves.png").write_bytes(b"png")
    (a / ".status.json.123.tmp").write_text("half")  # a write in progress is not published
    puts = flaky_proxy.count("PUT")
    m.flush()
    assert flaky_proxy.count("PUT") == puts + 2
    m.flush()
    assert flaky_proxy.count("PUT") == puts + 2
    assert keys(s3_client, s3_bucket) == {f"runs/r1/{n}" for n in
                                          ("checkpoints/last.pt", "status.json", "train.log",
                                           "plots/curves.png")}

    # another machine (a resume) fetches what is there, and nothing else
    b = tmp_path / "b"
    m2 = S3Mirror(uri, b)
    assert m2.fetch("checkpoints/last.pt")
    assert (b / "checkpoints" / "last.pt").read_bytes() == b"weights"
    assert not m2.fetch("checkpoints/best.pt")
    assert not (b / "checkpoints" / "best.pt").exists()
    puts = flaky_proxy.count("PUT")
    m2.flush()  # a fetched file is already in S3
    assert flaky_proxy.count("PUT") == puts


def test_mirror_loses_nothing_to_injected_errors(flaky_proxy, s3_bucket, s3_client, tmp_path,
                                                 quick):
    flaky_proxy.fail("503", times=3, methods={"PUT"})  # more than botocore's own 3 attempts
    flaky_proxy.fail("503", every=4)
    flaky_proxy.fail("drop", every=5)
    flaky_proxy.fail("500", every=7)
    flaky_proxy.fail("cut", methods={"GET"}, every=3)
    m = S3Mirror(f"s3://{s3_bucket}/runs/r2/", tmp_path / "a", backoff=0.01)
    expected = {}
    for i in range(10):
        name = f"checkpoints/e{i}.pt" if i % 2 else f"m{i}.json"
        data = os.urandom(2000 + i)
        (tmp_path / "a" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "a" / name).write_bytes(data)
        m.upload(name)  # never raises
        expected[name] = data
    m.flush()
    assert m.pending == []
    assert flaky_proxy.failures >= 5
    for name, data in expected.items():
        assert get(s3_client, s3_bucket, f"runs/r2/{name}") == data
    m2 = S3Mirror(f"s3://{s3_bucket}/runs/r2/", tmp_path / "b", backoff=0.01)
    for name, data in expected.items():
        assert m2.fetch(name) and (tmp_path / "b" / name).read_bytes() == data


def test_mirror_keeps_uploads_pending_while_s3_is_down(flaky_proxy, s3_bucket, s3_client,
                                                       tmp_path, quick):
    local = tmp_path / "run"
    local.mkdir()
    m = S3Mirror(f"s3://{s3_bucket}/runs/r3/", local, attempts=2, backoff=0.01)
    flaky_proxy.fail("500")
    (local / "checkpoints").mkdir()
    (local / "checkpoints" / "last.pt").write_bytes(b"epoch 1")
    m.upload("checkpoints/last.pt")  # does not raise: training goes on
    assert m.pending == ["checkpoints/last.pt"]
    time.sleep(0.3)  # its attempts fail: it stays pending
    assert m.pending == ["checkpoints/last.pt"]
    (local / "train.log").write_text("log\n")
    with pytest.raises(S3Error, match="not uploaded to s3://"):
        m.flush()
    assert set(m.pending) == {"checkpoints/last.pt", "train.log"}
    assert keys(s3_client, s3_bucket) == set()

    flaky_proxy.heal()
    time.sleep(0.1)  # past the quiet period after a failure
    (local / "status.json").write_text("{}")
    m.upload("status.json")  # the pending files go first
    m.flush()
    assert m.pending == []
    assert get(s3_client, s3_bucket, "runs/r3/checkpoints/last.pt") == b"epoch 1"
    assert keys(s3_client, s3_bucket) == {f"runs/r3/{n}" for n in
                                          ("checkpoints/last.pt", "train.log", "status.json")}
    m.flush()


def test_mirror_fetch_raises_when_s3_cannot_answer(aws_env, s3_bucket, tmp_path, monkeypatch,
                                                    quick):
    from conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    m = S3Mirror(f"s3://{s3_bucket}/runs/r4/", tmp_path, attempts=2, backoff=0.01)
    with pytest.raises(S3Error, match="cannot reach S3"):
        m.fetch("checkpoints/last.pt")  # not "there is none": a resume must not start over
    Path(tmp_path / "x").write_text("x")
    m.upload("x")  # but uploads still never raise
    assert m.pending == ["x"]


# --- S3 that hangs ----------------------------------------------------------------------------

class StallProxy:
    """A TCP proxy on 127.0.0.1 in front of the moto server that can stall: while stalled it
    accepts connections and reads requests, but forwards nothing and answers nothing, and closes
    nothing (S3 hanging); ``heal`` lets the held bytes through."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.flowing = threading.Event()
        self.flowing.set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stall(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()


@pytest.fixture
def stall_proxy(aws_env, moto_server, monkeypatch):
    proxy = StallProxy(moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.heal()
    proxy.sock.close()


def test_mirror_never_waits_for_a_hanging_s3_and_sends_the_newest(stall_proxy, s3_bucket,
                                                                   s3_client, tmp_path):
    s3_client.put_bucket_versioning(Bucket=s3_bucket,
                                    VersioningConfiguration={"Status": "Enabled"})
    local = tmp_path / "run"
    (local / "checkpoints").mkdir(parents=True)
    m = S3Mirror(f"s3://{s3_bucket}/runs/hang/", local)
    stall_proxy.stall()
    t0 = time.monotonic()
    for v in (1, 2, 3):  # three epochs' checkpoints and heartbeats while S3 hangs
        (local / "checkpoints" / "last.pt").write_bytes(b"epoch %d " % v * 10000)
        m.upload("checkpoints/last.pt")
        (local / "status.json").write_text(json.dumps({"epoch": v}))
        m.upload("status.json")
        time.sleep(0.2)
    assert time.monotonic() - t0 < 0.6 + 0.5  # the sleeps, and no waiting for S3
    # one pending copy of each file: the newest superseded the older ones
    assert m.pending == ["checkpoints/last.pt", "status.json"]

    # the run's end waits with a bound, then says what is still pending
    t0 = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(S3Error, match=r"2 file\(s\) not uploaded to s3://.*: "
                           r"checkpoints/last.pt, status.json"):
            m.flush(timeout=1.0)
    assert time.monotonic() - t0 < 3
    incomplete = [e for e in logs if e["event"] == "s3.flush_incomplete"]
    assert incomplete and incomplete[0]["pending"] == ["checkpoints/last.pt", "status.json"]

    stall_proxy.heal()
    m.flush(timeout=60)
    assert m.pending == []
    assert get(s3_client, s3_bucket, "runs/hang/checkpoints/last.pt") == b"epoch 3 " * 10000
    assert json.loads(get(s3_client, s3_bucket, "runs/hang/status.json")) == {"epoch": 3}
    versions = s3_client.list_object_versions(Bucket=s3_bucket,
                                              Prefix="runs/hang/checkpoints/last.pt")["Versions"]
    bodies = {s3_client.get_object(Bucket=s3_bucket, Key=v["Key"], VersionId=v["VersionId"])
              ["Body"].read()[:8] for v in versions}
    assert bodies <= {b"epoch 1 ", b"epoch 3 "}  # the one in flight, then the newest: never 2
    assert b"epoch 3 " in bodies


# --- the trainer on S3 (slow: real training runs in subprocesses) ---------------------------

TINY = ["--d-model", "32", "--heads", "2", "--patience", "100"]  # seconds per epoch on 2 cores
RUN_FILES = {"config.json", "metrics.jsonl", "status.json", "summary.json", "train.log",
             "checkpoints/last.pt", "checkpoints/best.pt", "plots/learning_curves.png",
             "plots/confusion_matrix.png"}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    subprocess.run([sys.executable, "-m", "trainer", "demo-data", "--out", str(out),
                    "--speakers", "8", "--clips-per-speaker", "12"], check=True,
                   capture_output=True, timeout=120)
    return out


@pytest.fixture
def s3_data(demo_data, s3_bucket, moto_server, monkeypatch) -> str:
    """The demo data set in the test bucket (uploaded straight to moto, not through a proxy)."""
    uri = f"s3://{s3_bucket}/data/"
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", moto_server)
        sync_up(demo_data, uri)
    return uri


def train_cmd(data: str, out: str, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--data", data, "--out", out,
            "--cache-dir", str(cache), *TINY, *extra]


def run_trainer(cmd: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_complete_run(client, bucket: str, prefix: str, epochs: int) -> None:
    found = {k.removeprefix(prefix) for k in keys(client, bucket, prefix)}
    assert RUN_FILES <= found, RUN_FILES - found
    metrics = [json.loads(line) for line in
               get(client, bucket, prefix + "metrics.jsonl").decode().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert json.loads(get(client, bucket, prefix + "status.json"))["state"] == "done"
    assert "test" in json.loads(get(client, bucket, prefix + "summary.json"))
    assert get(client, bucket, prefix + "plots/learning_curves.png").startswith(b"\x89PNG")
    for name in ("checkpoints/last.pt", "checkpoints/best.pt"):
        ckpt = torch.load(io.BytesIO(get(client, bucket, prefix + name)), weights_only=True)
        assert "model" in ckpt
    # TensorBoard's events came through the same mirror: one value per epoch, as metrics.jsonl
    # (a resumed run's second event file takes over from the epoch it resumed at).
    events = [k for k in found if k.startswith("tb/events.out.tfevents.")]
    assert events, sorted(found)
    with tempfile.TemporaryDirectory() as tb:
        for k in events:
            (Path(tb) / Path(k).name).write_bytes(get(client, bucket, prefix + k))
        assert_events_match_metrics(Path(tb), metrics)
        assert tb_events(Path(tb)).Scalars("test/macro_f1")[0].step == epochs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_run_lives_in_s3(s3_data, s3_bucket, s3_client, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run_trainer(train_cmd(s3_data, f"s3://{s3_bucket}/runs/r1/", tmp_path / "cache",
                          "--epochs", "2"), TMPDIR=str(tmp))
    assert_complete_run(s3_client, s3_bucket, "runs/r1/", epochs=2)
    assert not list(tmp.glob("run-staging-*"))  # all of it is on S3: no copy left behind
    log_lines = get(s3_client, s3_bucket, "runs/r1/train.log").decode().splitlines()
    assert any(json.loads(line).get("event") == "test" for line in log_lines)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_run_resumes_from_s3(s3_data, s3_bucket, s3_client, tmp_path):
    out, epochs = f"s3://{s3_bucket}/runs/r2/", 6
    cmd = train_cmd(s3_data, out, tmp_path / "cache", "--epochs", str(epochs))
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if "runs/r2/metrics.jsonl" in keys(s3_client, s3_bucket, "runs/r2/"):
                break
            time.sleep(0.1)
        proc.kill()  # SIGKILL: no handler, no last words
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert "runs/r2/summary.json" not in keys(s3_client, s3_bucket, "runs/r2/")
    ckpt = torch.load(io.BytesIO(get(s3_client, s3_bucket, "runs/r2/checkpoints/last.pt")),
                      weights_only=True)
    assert 1 <= ckpt["epoch"] < epochs

    run_trainer(cmd + ["--resume"])
    assert_complete_run(s3_client, s3_bucket, "runs/r2/", epochs=epochs)
    # train.log goes on where the killed run's left off (as a local run's would)
    models = [json.loads(line) for line in
              get(s3_client, s3_bucket, "runs/r2/train.log").decode().splitlines()
              if json.loads(line).get("event") == "model"]
    assert [m.get("resumed_at_epoch") for m in models] == [None, ckpt["epoch"]]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_training_run_completes_through_s3_errors(s3_data, s3_bucket, s3_client, flaky_proxy,
                                                  tmp_path):
    # About a third of all requests fail in one of four ways; denser than that, a run of
    # failures on one object can outlast botocore's attempts plus ours on a loaded machine.
    flaky_proxy.fail("503", every=6)
    flaky_proxy.fail("drop", every=9)
    flaky_proxy.fail("500", every=13)
    flaky_proxy.fail("cut", methods={"GET"}, every=8)
    run_trainer(train_cmd(s3_data, f"s3://{s3_bucket}/runs/r3/", tmp_path / "cache",
                          "--epochs", "2"))
    assert flaky_proxy.failures >= 10
    assert flaky_proxy.count("PUT", outcome="503") and flaky_proxy.count("GET", outcome="cut")
    assert_complete_run(s3_client, s3_bucket, "runs/r3/", epochs=2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_missing_bucket_is_one_line_of_error(aws_env, tmp_path):
    proc = subprocess.run(train_cmd("s3://no-such-bucket-here/data/", str(tmp_path / "run"),
                                    tmp_path / "cache"), env=dict(os.environ),
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: bucket of s3://no-such-bucket-here/data/ does not exist"
    assert "Traceback" not in proc.stderr


def test_prefix_out_of_the_cache_is_one_line_of_error(aws_env, s3_bucket, s3_client, tmp_path):
    put(s3_client, s3_bucket, "data/../../../evil.npz", b"evil")
    uri = f"s3://{s3_bucket}/data/../../../"
    proc = subprocess.run(train_cmd(uri, str(tmp_path / "run"), tmp_path / "a" / "b" / "cache"),
                          env=dict(os.environ), capture_output=True, text=True, timeout=100)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: bad S3 prefix in {uri}: ")
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("evil.npz"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_training_goes_on_while_s3_hangs_and_every_artifact_arrives(s3_data, s3_bucket,
                                                                    s3_client, stall_proxy,
                                                                    tmp_path):
    out, epochs, stall = f"s3://{s3_bucket}/runs/hang/", 8, 12.0
    cmd = train_cmd(s3_data, out, tmp_path / "cache", "--epochs", str(epochs))
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while "runs/hang/metrics.jsonl" not in keys(s3_client, s3_bucket, "runs/hang/"):
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.1)
        stall_proxy.stall()  # S3 hangs: connections open, no answer, for `stall` seconds
        t_stall = time.time()
        time.sleep(stall)
        stall_proxy.heal()
        assert proc.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    assert_complete_run(s3_client, s3_bucket, "runs/hang/", epochs=epochs)
    events = [json.loads(line) for line in
              get(s3_client, s3_bucket, "runs/hang/train.log").decode().splitlines()]
    during = [e["epoch"] for e in events if e.get("event") == "epoch"
              and t_stall + 0.5 < datetime.fromisoformat(e["timestamp"]).timestamp()
              < t_stall + stall]
    assert len(during) >= 1, during  # epochs went on while every upload waited (before: none)
