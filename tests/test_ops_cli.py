"""The operator verbs' wiring: deploy.yaml settings, Make variables, and the container's isolation.

    .venv/bin/python -m pytest tests/test_ops_cli.py
"""

from __future__ import annotations

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


def test_the_repository_deploy_yaml_holds_every_default():
    s = load(str(REPO / "deploy.yaml"))
    assert (s.backend, s.stack, s.data, s.args) == ("aws", "dev", "demo-data", "")
    assert s.torch_wheels[0] == "wheels/torch-*+cpu-*.whl"


@pytest.mark.parametrize("target, variables, expected", [
    ("deploy", ["BACKEND=local", "DATA=my clips", "ARGS=--epochs 5 --lr 1e-3", "REPLACE=1"],
     "deploy --backend local --data 'my clips' --args='--epochs 5 --lr 1e-3' --replace"),
    ("deploy", ["REPLACE=0"], "deploy"),
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
