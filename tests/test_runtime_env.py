"""The settings ``python -m trainer`` makes before torch loads (trainer.runtime_env): filled in
where the environment has none, the user's own kept, and in place when torch first loads."""

from __future__ import annotations

import os
import subprocess
import sys

from trainer.runtime_env import RUNTIME_ENV, apply


def test_fills_what_is_missing_and_keeps_what_the_user_set():
    env = {"MKL_DISABLE_FAST_MM": "0", "OTHER": "x"}
    assert apply(env) == {"THP_MEM_ALLOC_ENABLE": "1", "MKL_DISABLE_FAST_MM": "0"}
    assert env == {"MKL_DISABLE_FAST_MM": "0", "OTHER": "x", "THP_MEM_ALLOC_ENABLE": "1"}


def test_python_m_trainer_sets_them_before_torch_loads():
    # torch's libraries read them once, when torch loads: an import hook records what the
    # environment holds at the moment ``python -m trainer`` first imports torch
    probe = """
import os, runpy, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append([os.environ.get(k, "-") for k in ("THP_MEM_ALLOC_ENABLE", "MKL_DISABLE_FAST_MM")])
sys.meta_path.insert(0, Watch())
sys.argv = ["trainer", "--help"]
try:
    runpy.run_module("trainer", run_name="__main__")
except SystemExit:
    pass
import torch  # where --help did not load it
print(*seen[0])
"""
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-2:] == ["1", "1"]
