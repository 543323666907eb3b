"""scripts/bootstrap.sh and bootstrap-run.sh, run for real through their directory hooks
(AVE_ETC_DIR, AVE_STATE_DIR, AVE_RUNTIME_DIR, AVE_INSTALLED, AVE_UNIT_DIR), with `docker`, `aws`,
`shutdown`, `systemctl`, `curl` and `dnf` stubbed on PATH.

    .venv/bin/python -m pytest tests/test_bootstrap.py -q

The docker stub keeps one container's state in a JSON file; `docker stop` ends it with the exit
code the test sets (143 by default: the trainer saved its checkpoint), `docker wait` prints it.
The aws stub answers `s3api head-object` from a folder standing in for the bucket. Every stub
appends its command line to calls.log, so a test can say what was pulled, run and stopped.
Most tests run the checkout's bootstrap.sh, which sources bootstrap-run.sh from beside it; the
user data, deploy's update and the installed copy carry the two files as one text (`one_text`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bootstrap.sh"
RUN_PART = ROOT / "scripts" / "bootstrap-run.sh"
REPO_URL = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ave-repo"
DIGEST = REPO_URL + "@sha256:" + "a" * 64
SETTINGS = {"AVE_BUCKET": "ave-bucket", "AVE_REGION": "us-east-1", "AVE_REPO_URL": REPO_URL,
            "AVE_LOG_GROUP": "/ave/dev", "AVE_MAX_RUN_HOURS": "12", "AVE_IDLE_MINUTES": "20"}

FAKE_DOCKER = r'''
import json, os, sys, time
home = os.environ["FAKE_HOME"]
state_path = os.path.join(home, "docker.json")
with open(os.path.join(home, "calls.log"), "a") as log:
    log.write("docker " + " ".join(sys.argv[1:]) + "\n")
try:
    with open(state_path) as f:
        state = json.load(f)
except OSError:
    state = {"container": None, "images": {}}
def save():
    with open(state_path, "w") as f:
        json.dump(state, f)
def fail(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)
args, c = sys.argv[1:], state["container"]
if args[:2] == ["image", "inspect"]:
    ref = args[-1]
    found = [i for i, refs in state["images"].items() if ref == i or ref in refs]
    if not found:
        fail(f"No such image: {ref}")
    if "-f" in args:
        fmt = args[args.index("-f") + 1]
        if ".Id" in fmt:
            print(found[0])
        else:  # RepoDigests, one a line
            for r in state["images"][found[0]]:
                if "@sha256:" in r:
                    print(r)
    sys.exit(0)
if args[0] == "inspect":
    if c is None:
        fail("Error: No such object: ave-run")
    fmt = args[args.index("-f") + 1]
    print({"{{.State.Status}}": c["status"], "{{.State.ExitCode}}": c["exit_code"],
           "{{.State.StartedAt}}": c["started_at"], "{{.State.OOMKilled}}": "false"}.get(
        fmt, c["run_id"]))
elif args[0] in ("login", "logout"):
    sys.stdin.read() if args[0] == "login" else None
elif args[0] == "pull":
    ref = args[-1]
    image_id = "sha256:" + ("b" * 64 if ref.endswith(":latest") else "c" * 64)
    digest = ref if "@sha256:" in ref else ref.rsplit(":", 1)[0] + "@sha256:" + image_id[-64:]
    state["images"][image_id] = [ref, digest]
    save()
elif args[0] == "rm":
    state["container"] = None
    save()
elif args[0] == "run":
    if os.path.exists(os.path.join(home, "docker-run-fails")):
        state["container"] = {"status": "created", "exit_code": 127, "run_id": "?",
                              "started_at": "0001-01-01T00:00:00Z"}
        save()
        fail("docker: Error response from daemon: failed to create task", 125)
    label = next(a for a in args if a.startswith("av-emotion.run-id="))
    state["container"] = {"status": "running", "exit_code": 0, "run_id": label.split("=", 1)[1],
                          "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())}
    save()
    print("0123456789ab")
elif args[0] in ("stop", "wait"):
    if c is None:
        fail("Error: No such container: ave-run")
    if args[0] == "stop" or c["status"] == "running":
        code_file = os.path.join(home, "exit-code")
        c.update(status="exited", exit_code=int(open(code_file).read()) if os.path.exists(code_file) else 143)
        save()
    if args[0] == "wait":
        print(c["exit_code"])
else:
    fail(f"fake docker: unknown command {args}")
'''

FAKE_AWS = r'''
import os, sys
home = os.environ["FAKE_HOME"]
with open(os.path.join(home, "calls.log"), "a") as log:
    log.write("aws " + " ".join(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args[:2] == ["ecr", "get-login-password"]:
    print("not-a-real-password")
elif args[:2] == ["s3api", "head-object"]:
    key = args[args.index("--key") + 1]
    if not os.path.exists(os.path.join(home, "s3", key)):
        print("An error occurred (404) when calling the HeadObject operation: Not Found",
              file=sys.stderr)
        sys.exit(254)
    print("{}")
else:
    sys.exit(f"fake aws: unknown command {args}")
'''

# A shell stub: logs its command line; fails when FAKE_HOME/fail-NAME holds a word of the line.
SHELL_STUB = """#!/usr/bin/env bash
echo "{name} $*" >>"$FAKE_HOME/calls.log"
if [[ -f "$FAKE_HOME/fail-{name}" ]] && [[ " $* " == *" $(cat "$FAKE_HOME/fail-{name}") "* ]]; then
    echo "{name}: failed (test)" >&2; exit 1
fi
{body}
"""


class Box:
    """An instance in a folder: the stubs, the hook directories, and how to run the script."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        (root / "s3").mkdir()
        for name, code in (("docker", FAKE_DOCKER), ("aws", FAKE_AWS)):
            path = self.bin / name
            path.write_text(f"#!{sys.executable}\n{code}")
            path.chmod(0o755)
        spot = '[[ "$*" != *spot/instance-action* || -f "$FAKE_HOME/spot-notice" ]] || exit 22'
        for name, body in (("shutdown", ""), ("systemctl", ""), ("dnf", ""), ("sync", ""),
                           ("curl", spot)):
            path = self.bin / name
            path.write_text(SHELL_STUB.format(name=name, body=body))
            path.chmod(0o755)
        self.env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(root), "FAKE_HOME": str(root),
                    "AVE_ETC_DIR": str(root / "etc"), "AVE_STATE_DIR": str(root / "state"),
                    "AVE_RUNTIME_DIR": str(root / "run"), "AVE_INSTALLED": str(root / "sbin-ave"),
                    "AVE_UNIT_DIR": str(root / "units")}

    def sh(self, *args: str, env: dict | None = None, script: Path = SCRIPT):
        proc = subprocess.run(["bash", str(script), *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60)
        return proc

    def ok(self, *args: str, **kw):
        proc = self.sh(*args, **kw)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def calls(self, prefix: str = "") -> list[str]:
        log = self.root / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.startswith(prefix)]

    def clear_calls(self) -> None:
        (self.root / "calls.log").unlink(missing_ok=True)

    def record(self, name: str = "current-run") -> dict:
        """A run record, read by bash itself (it is bash)."""
        path = self.root / "state" / name
        if not path.exists():
            return {}
        out = subprocess.run(["bash", "-c", f'source {shlex.quote(str(path))}; declare -p RUN_ARGS; '
                              'for v in ${!RUN_@} ${!EXIT_@} ${!OUTCOME@}; do echo "$v=${!v}"; done'],
                             capture_output=True, text=True, check=True).stdout
        values = dict(line.split("=", 1) for line in out.splitlines() if not line.startswith("declare"))
        values["RUN_ARGS"] = out.splitlines()[0]
        return values

    def container(self) -> dict | None:
        return json.loads((self.root / "docker.json").read_text())["container"]

    def reboot(self) -> None:
        """A stop and a start: the container is gone from `docker ps` (as after a stop, once
        the watcher has not finished the run), the images stay on the disk."""
        state = json.loads((self.root / "docker.json").read_text())
        state["container"] = None
        (self.root / "docker.json").write_text(json.dumps(state))
        for f in (self.root / "run").glob("*"):
            f.unlink()

    def checkpoint(self, run_id: str) -> None:
        path = self.root / "s3" / "runs" / run_id / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ckpt")

    def shutdowns(self) -> list[str]:
        return self.calls("shutdown ")


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


@pytest.fixture
def booted(box):
    """An instance after its first boot: set up, no run yet."""
    box.ok("setup", env=SETTINGS)
    box.clear_calls()
    return box


def one_text() -> str:
    """The two files as the instance gets them, bootstrap-run.sh first."""
    return RUN_PART.read_text() + SCRIPT.read_text()


def docker_runs(box: Box) -> list[list[str]]:
    return [line.split()[1:] for line in box.calls("docker run ")]


# ---- first boot --------------------------------------------------------------------------------

def test_first_boot_installs_the_watchdog_first_then_docker_and_resume(box):
    proc = box.ok(env=SETTINGS)  # no arguments, as cloud-init runs it
    env = (box.root / "etc" / "stack.env").read_text()
    assert env.splitlines() == [f"{k}={v}" for k, v in SETTINGS.items()]
    assert oct((box.root / "etc" / "stack.env").stat().st_mode & 0o777) == "0o600"
    installed = (box.root / "sbin-ave").read_text()
    assert installed == one_text()
    units = {p.name for p in (box.root / "units").iterdir()}
    assert {"ave-resume.service", "ave-watch.service", "ave-watchdog.service",
            "ave-watchdog.timer"} <= units
    calls = box.calls("systemctl ")
    first = calls.index("systemctl enable --now ave-watchdog.timer")
    assert first < calls.index("systemctl enable --now docker.service")
    assert "systemctl start --no-block ave-resume.service" in calls
    assert box.shutdowns() == [] and "set up" in proc.stdout


def test_the_user_data_alone_boots_and_installs_a_copy_that_runs_alone(box):
    """cloud-init runs the user data from a file with nothing beside it; the copy it installs
    runs the units' modes with nothing beside it either."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in SETTINGS.items())
    user_data = box.root / "part-001"
    user_data.write_text(f"#!/bin/bash\nexport {exports}\n{one_text()}")
    proc = box.ok(script=user_data)
    assert "set up" in proc.stdout and box.shutdowns() == []
    installed = box.root / "sbin-ave"
    assert installed.read_text() == one_text()
    assert installed.read_text().startswith("#!/usr/bin/env bash\n")
    box.ok("run", "--image", DIGEST, "r1", script=installed)
    assert box.record()["RUN_ID"] == "r1" and len(docker_runs(box)) == 1
    (box.root / "exit-code").write_text("0")
    box.ok("watch", script=installed)
    assert box.record("last-run")["OUTCOME"] == "done" and len(box.shutdowns()) == 1


def test_a_failed_first_boot_stops_the_instance_with_the_watchdog_already_on(box):
    (box.root / "fail-systemctl").write_text("docker.service")
    proc = box.sh(env=SETTINGS)
    assert proc.returncode != 0
    calls = box.calls("systemctl ")
    assert "systemctl enable --now ave-watchdog.timer" in calls
    assert len(box.shutdowns()) == 1 and "setup failed" in box.shutdowns()[0]


def test_missing_settings_at_first_boot_stop_the_instance(box):
    proc = box.sh(env={k: v for k, v in SETTINGS.items() if k != "AVE_BUCKET"})
    assert proc.returncode == 2 and "AVE_BUCKET is not set" in proc.stderr
    assert len(box.shutdowns()) == 1


# ---- a run, its end, the next boot ----------------------------------------------------------------

def test_a_run_uses_the_image_digest_it_was_given_and_records_it(booted):
    booted.ok("run", "--image", DIGEST, "r1", "--epochs", "3")
    assert booted.calls("docker pull ") == [f"docker pull --quiet {DIGEST}"]
    rec = booted.record()
    assert rec["RUN_ID"] == "r1" and rec["RUN_IMAGE"] == DIGEST
    assert rec["RUN_ARGS"] == 'declare -a RUN_ARGS=([0]="--epochs" [1]="3")'
    [run] = docker_runs(booted)
    assert DIGEST in run  # the image pulled by its digest, never :latest
    assert run[-6:] == ["--data", "s3://ave-bucket/data/", "--out", "s3://ave-bucket/runs/r1/",
                        "--epochs", "3"]


def test_a_run_without_an_image_records_the_digest_of_latest(booted):
    booted.ok("run", "r1")
    assert booted.record()["RUN_IMAGE"] == f"{REPO_URL}@sha256:" + "b" * 64


def test_a_failed_docker_run_leaves_no_record_to_resume(booted):
    (booted.root / "docker-run-fails").touch()
    proc = booted.sh("run", "--image", DIGEST, "r1")
    assert proc.returncode == 1 and "docker run failed for run r1" in proc.stderr
    assert booted.record() == {}
    assert booted.record("last-run")["OUTCOME"] == "start-failed"
    assert booted.container() is None  # the created container is removed too
    (booted.root / "docker-run-fails").unlink()
    booted.reboot()
    booted.clear_calls()
    assert "no run to resume" in booted.ok("resume").stdout
    assert docker_runs(booted) == []


def test_a_run_that_ends_moves_its_record_and_stops_the_instance(booted):
    booted.ok("run", "--image", DIGEST, "r1")
    (booted.root / "exit-code").write_text("0")
    booted.ok("watch")
    assert booted.record() == {}
    assert booted.record("last-run")["OUTCOME"] == "done"
    assert len(booted.shutdowns()) == 1


def test_the_next_boot_resumes_an_interrupted_run_with_its_own_image(booted):
    booted.ok("run", "--image", DIGEST, "r1", "--epochs", "3")
    booted.checkpoint("r1")
    booted.ok("watch")  # a shutdown's SIGTERM: exit 143, the trainer saved a checkpoint
    assert booted.record()["RUN_ID"] == "r1"
    booted.reboot()
    booted.clear_calls()
    booted.ok("resume")
    assert booted.calls("docker pull ") == []  # the recorded image is on the disk
    [run] = docker_runs(booted)
    assert "sha256:" + "c" * 64 in run and run[-3:] == ["--epochs", "3", "--resume"]


def test_a_resume_pulls_the_recorded_digest_never_latest(booted):
    booted.ok("run", "--image", DIGEST, "r1")
    booted.checkpoint("r1")
    booted.ok("watch")
    booted.reboot()
    (booted.root / "docker.json").write_text(json.dumps({"container": None, "images": {}}))
    booted.clear_calls()
    booted.ok("resume")
    assert booted.calls("docker pull ") == [f"docker pull --quiet {DIGEST}"]


def test_an_interrupted_run_without_a_checkpoint_starts_again_without_resume(booted):
    booted.ok("run", "--image", DIGEST, "r1", "--epochs", "3")
    booted.ok("watch")  # 143 before the first checkpoint
    booted.reboot()
    booted.clear_calls()
    booted.ok("resume")
    [run] = docker_runs(booted)
    assert "--resume" not in run and run[-2:] == ["--epochs", "3"]


def test_an_interruption_past_the_grace_period_ends_in_a_resume(booted):
    """A spot notice: the watchdog stops the run; the checkpoint takes longer than the grace
    period and the container is killed (137). The run is still resumed at the next boot."""
    booted.ok("run", "--image", DIGEST, "r1")
    booted.checkpoint("r1")
    (booted.root / "spot-notice").touch()
    (booted.root / "exit-code").write_text("137")
    booted.ok("watchdog")
    assert any(c.startswith("docker stop --time") for c in booted.calls("docker stop "))
    proc = booted.ok("watch")
    assert "interrupted" in proc.stdout
    assert booted.record()["RUN_ID"] == "r1"  # kept: not failed
    assert booted.record("last-run") == {}
    assert booted.shutdowns() == []  # EC2 stops it, so its spot request restarts it
    booted.reboot()
    (booted.root / "spot-notice").unlink()
    booted.clear_calls()
    booted.ok("resume")
    [run] = docker_runs(booted)
    assert run[-1] == "--resume"


def test_a_failure_is_not_resumed(booted):
    booted.ok("run", "--image", DIGEST, "r1")
    (booted.root / "exit-code").write_text("1")
    booted.ok("watch")
    assert booted.record() == {} and booted.record("last-run")["OUTCOME"] == "failed"


# ---- the watchdog --------------------------------------------------------------------------------

def test_the_idle_stop(booted):
    booted.ok("watchdog")
    assert booted.shutdowns() == []  # idle from now on
    idle = booted.root / "run" / "idle-since"
    idle.write_text(str(int(time.time()) - 19 * 60))
    booted.ok("watchdog")
    assert booted.shutdowns() == []
    idle.write_text(str(int(time.time()) - 20 * 60))
    booted.ok("watchdog")
    assert len(booted.shutdowns()) == 1 and "no run for 20 minutes" in booted.shutdowns()[0]


def test_max_run_hours_count_from_the_runs_start_across_resumes(booted):
    booted.ok("run", "--image", DIGEST, "r1")
    booted.checkpoint("r1")
    booted.ok("watch")
    booted.reboot()
    # The run started 11 h 59 min ago; its container (resumed now) only just started.
    rec = booted.root / "state" / "current-run"
    started = int(time.time()) - (12 * 3600 - 60)
    rec.write_text(rec.read_text().replace("RUN_STARTED_S=", f"RUN_STARTED_S={started} #"))
    booted.ok("resume")
    booted.clear_calls()
    booted.ok("watchdog")
    assert booted.calls("docker stop ") == []
    rec.write_text(rec.read_text().replace(f"RUN_STARTED_S={started}",
                                           f"RUN_STARTED_S={started - 60}"))
    booted.ok("watchdog")
    assert booted.calls("docker stop ") == ["docker stop --time 120 ave-run"]
    booted.ok("watch")
    assert booted.record("last-run")["OUTCOME"] == "stopped-max-runtime"
    assert booted.record() == {}


def test_a_run_already_past_max_run_hours_is_not_resumed(booted):
    booted.ok("run", "--image", DIGEST, "r1")
    booted.ok("watch")
    booted.reboot()
    rec = booted.root / "state" / "current-run"
    rec.write_text(rec.read_text().replace("RUN_STARTED_S=", f"RUN_STARTED_S={int(time.time()) - 13 * 3600} #"))
    booted.clear_calls()
    proc = booted.ok("resume")
    assert "AVE_MAX_RUN_HOURS" in proc.stdout and docker_runs(booted) == []
    assert booted.record("last-run")["OUTCOME"] == "stopped-max-runtime"


# ---- a deploy's update: a new script and settings reach the instance ------------------------------

def test_update_installs_the_new_script_and_settings_without_a_resume_or_a_stop(booted, tmp_path):
    new = tmp_path / "downloaded.sh"
    new.write_text(one_text().replace("# Exit status:", "# (a newer copy)\n# Exit status:"))
    booted.ok("update", script=new, env={"AVE_IDLE_MINUTES": "5", "AVE_MAX_RUN_HOURS": "3"})
    env = (booted.root / "etc" / "stack.env").read_text()
    assert "AVE_IDLE_MINUTES=5\n" in env and "AVE_MAX_RUN_HOURS=3\n" in env
    assert f"AVE_BUCKET={SETTINGS['AVE_BUCKET']}\n" in env  # the rest kept from stack.env
    assert "(a newer copy)" in (booted.root / "sbin-ave").read_text()
    assert "systemctl start --no-block ave-resume.service" not in booted.calls()
    assert booted.shutdowns() == []
