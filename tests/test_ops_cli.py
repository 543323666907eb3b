"""The operator verbs' wiring: deploy.yaml settings, Make variables, and the container's isolation.

    .venv/bin/python -m pytest tests/test_ops_cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.ops import OpsError
from trainer.ops.settings import DEFAULTS, REPO, load


def test_train_never_imports_docker_pulumi_or_the_operator_modules():
    code = ("import sys\nfrom trainer.cli import build_parser\n"
            "build_parser().parse_args(['train', '--data', 'd', '--out', 'o'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'pulumi') "
            "or m.startswith('trainer.ops')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['trainer.ops', 'trainer.ops.cli']"


def test_settings_come_from_the_file_then_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AVE_SETTINGS", raising=False)
    assert load().data == DEFAULTS["data"] and load().backend == "aws"  # no file: defaults
    Path("deploy.yaml").write_text("backend: local\ndata: clips\nargs: --epochs 5\n"
                                   "torch_wheels: w/*.whl\n")
    s = load(data="other", args=None)
    assert (s.backend, s.data, s.args, s.torch_wheels) == ("local", "other", "--epochs 5",
                                                           ["w/*.whl"])
    Path("deploy.yaml").write_text("epochs: 5\n")
    with pytest.raises(OpsError, match="unknown setting.*epochs"):
        load()
    with pytest.raises(OpsError, match="backend must be aws or local"):
        load(str(REPO / "deploy.yaml"), backend="gcp")
    with pytest.raises(OpsError, match="not found"):
        load("missing.yaml")


@pytest.mark.parametrize("text, message", [
    ("args: 5\n",
     r'args must be text, not 5 \(trainer train flags in quotes, e.g. args: "--epochs 30"\)'),
    ("args: [--epochs, 5]\n", r"args must be text, not \['--epochs', 5\] \(trainer train flags"),
    ("stack: 2024\n", "stack must be text, not 2024"),
    ("data: {a: 1}\n", r"data must be text, not \{'a': 1\}"),
    ("torch_wheels: [1]\n", r"torch_wheels must be a glob or a list of globs, not \[1\]"),
])
def test_a_setting_of_the_wrong_type_is_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AVE_SETTINGS", raising=False)
    Path("deploy.yaml").write_text(text)
    with pytest.raises(OpsError, match=f"^deploy.yaml: {message}"):
        load()


def test_empty_settings_keep_their_meaning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AVE_SETTINGS", raising=False)
    Path("deploy.yaml").write_text("args:\ntorch_wheels:\n")
    s = load()
    assert (s.args, s.torch_wheels) == ("", [])


def ops_cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("settings, flags, line", [
    ("args: 5\n", [], 'error: deploy.yaml: args must be text, not 5 (trainer train flags in '
                      'quotes, e.g. args: "--epochs 30")'),
    ('data: ""\n', [], "error: DATA is empty (deploy.yaml's data, or --data): give a folder of "
                       "clip files or an s3:// prefix in the stack's bucket, e.g. data: demo-data"),
    ("data:\n", [], "error: DATA is empty (deploy.yaml's data, or --data): give a folder of "
                    "clip files or an s3:// prefix in the stack's bucket, e.g. data: demo-data"),
    ("", ["--data", ""], "error: DATA is empty (deploy.yaml's data, or --data): give a folder of "
                        "clip files or an s3:// prefix in the stack's bucket, e.g. data: demo-data"),
    ("data: no-such-folder\n", [], "error: DATA=no-such-folder is not a folder of clip files: "
                                   "make the demo set with `python -m trainer demo-data --out "
                                   "no-such-folder`, or give DATA=path/to/clips"),
    ("args: --epochs '5\n", [], "error: ARGS \"--epochs '5\" cannot be split into flags: "
                                "No closing quotation"),
    ("args: --epocs 3\n", [], "error: ARGS '--epocs 3': training args: unrecognized arguments: "
                           "--epocs 3"),
    ("", ["--args=--epochs three"], "error: ARGS '--epochs three': training args: argument "
                                    "--epochs: invalid int value: 'three'"),
    ("", ["--media", "no-media"], "error: MEDIA=no-media is not a folder of media files "
                                  "(CREMA-D's VideoFlash/ and AudioWAV/, RAVDESS's Actor_NN/, or "
                                  "videos)"),
    ("data: listed\n", [], "error: DATA=listed: manifest listed/manifest.csv line 3: split is "
                           "'tset'; use one of train/val/test on every row (or fold1..foldK for cv), "
                           "or leave the column "
                           "empty on every row for a computed split"),
])
def test_bad_deploy_input_is_one_line_before_anything_is_built_or_uploaded(
        local_stack, s3_client, tmp_path, settings, flags, line):
    """deploy.yaml's bad values fail first: one line, exit 1, no step run, nothing in the bucket.
    The Docker engine is pointed nowhere, so a deploy that went on would fail in its step 1."""
    (tmp_path / "deploy.yaml").write_text("backend: local\n" + settings)
    (tmp_path / "demo-data").mkdir()  # the default DATA exists (and, with data: "", so does ".")
    (tmp_path / "demo-data" / "a.npz").write_bytes(b"x")
    (tmp_path / "listed").mkdir()  # a data set whose manifest has a bad split value
    (tmp_path / "listed" / "manifest.csv").write_text("path,label,speaker,split\n"
                                                      "a.npz,HAP,s/1,train\nb.npz,SAD,s/2,tset\n")
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    env.pop("AVE_SETTINGS", None)
    proc = ops_cli("deploy", *flags, cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [line]
    assert "[1/7]" not in proc.stdout  # no step started: no build, no pulumi up, no upload
    assert "Contents" not in s3_client.list_objects_v2(Bucket=local_stack["bucket"])


def test_the_repository_deploy_yaml_holds_every_default():
    s = load(str(REPO / "deploy.yaml"))
    assert (s.backend, s.stack, s.data, s.args) == ("aws", "dev", "demo-data", "")
    assert s.torch_wheels[0] == "wheels/torch-*+cpu-*.whl"


@pytest.mark.parametrize("target, variables, expected", [
    ("deploy", ["BACKEND=local", "DATA=my clips", "ARGS=--epochs 5 --lr 1e-3", "REPLACE=1"],
     "deploy --backend local --data 'my clips' --args='--epochs 5 --lr 1e-3' --replace"),
    ("deploy", ["REPLACE=0"], "deploy"),
    ("deploy", ["MEDIA=media/crema", "ARGS=--extract-args=--video=opencv"],
     "deploy --media 'media/crema' --args='--extract-args=--video=opencv'"),
    ("status", ["RUN=20250101-120000-ab12"], "status --run 20250101-120000-ab12"),
    ("logs", ["FOLLOW=1", "BACKEND=aws"], "logs --backend aws --follow"),
    ("monitor", [], "monitor"),
    ("results", ["RUN=r1"], "results --run r1"),
    ("destroy", ["KEEP=1", "YES=1"], "destroy --keep-runs --yes"),
])
def test_make_targets_pass_their_variables_to_the_cli(target, variables, expected):
    out = subprocess.run(["make", "-n", "--no-print-directory", target,
                          *variables], cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if " -m trainer " in ln][-1]
    assert " ".join(line.split(" -m trainer ", 1)[1].split()) == expected
