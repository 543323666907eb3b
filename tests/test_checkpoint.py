"""trainer/checkpoint.py: a checkpoint is a dict of plain state, never a pickled module, so it
stays readable when modules move, and it rebuilds the model it was written from.

    .venv/bin/python -m pytest tests/test_checkpoint.py
"""

from __future__ import annotations

import pickletools
import zipfile

import pytest
import torch

from trainer.checkpoint import load_trained, read_checkpoint
from trainer.errors import CheckpointError


def pickled_globals(path) -> set[str]:
    """The module.name of every global the checkpoint's pickle refers to."""
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        data = z.read(name)
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_checkpoint_names_no_trainer_module(finished_run, name):
    path = finished_run / "checkpoints" / name
    names = pickled_globals(path)
    assert names, "the scan found no globals at all: it reads nothing"
    assert not [n for n in names if n.startswith("trainer")]
    assert {n.split(".")[0] for n in names} <= {"torch", "collections", "_codecs", "numpy",
                                                 "builtins"}
    torch.load(path, map_location="cpu", weights_only=True)  # what read_checkpoint does


@pytest.mark.slow
def test_a_checkpoint_rebuilds_its_model(finished_run):
    t = load_trained(finished_run / "checkpoints" / "best.pt")
    assert t.labels == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert not t.model.training
    ckpt = read_checkpoint(finished_run / "checkpoints" / "best.pt")
    assert {k: v.shape for k, v in t.model.state_dict().items()} == \
        {k: v.shape for k, v in ckpt["model"].items()}


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(CheckpointError, match="is not a trainer checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pt")
