"""The command line as a user meets it: help, and one clear line for every bad input."""

import subprocess
import sys

import pytest
from util import write_clip

from trainer.demo import make_demo_data


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, timeout=120)


def one_line_error(r, code, text):
    assert r.returncode == code, r.stderr
    lines = [x for x in r.stderr.splitlines() if "error" in x]
    assert len(lines) == 1 and text in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_verb_has_help_with_examples_and_defaults():
    for verb in ("train", "evaluate", "predict", "demo-data"):
        r = cli(verb, "--help")
        assert r.returncode == 0 and "Examples:" in r.stdout, verb
    r = cli("train", "--help")
    for shown in ("--epochs EPOCHS", "(default: 50)", "(default: 24)", "(default: 0.0005)",
                  "(default: 10)", "(default: speaker)", "(default: hybrid)", "--resume"):
        assert shown in r.stdout, shown


def test_empty_folder(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "no clip files")


def test_folder_of_only_broken_files(tmp_path):
    (tmp_path / "1001_DFA_ANG_XX.npz").write_bytes(b"junk")
    write_clip(tmp_path / "mystery.npz")
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "no usable clips")


def test_missing_data_path(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")),
                   1, "does not exist")


def test_wrong_model(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path), "--out", "r", "--model", "gru"), 2,
                   "invalid choice: 'gru'")


def test_bad_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("epochz: 3\n")
    one_line_error(cli("train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path),
                       "--out", "r"), 1, "unknown setting(s) epochz")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_checkpoint(tmp_path, content):
    ckpt = tmp_path / "best.pt"
    if content is not None:
        ckpt.write_bytes(content)
    write_clip(tmp_path / "data" / "1001_DFA_ANG_XX.npz")
    for args in (["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")],
                 ["predict", "--checkpoint", str(ckpt), str(tmp_path / "data")]):
        one_line_error(cli(*args), 1, "checkpoint")


def test_checkpoint_of_an_earlier_model_version_is_one_clear_line(tmp_path):
    import torch

    from trainer.model import build_model

    settings = {"audio_dim": 8, "video_dim": 6, "n_classes": 6}
    state = build_model("hybrid", **settings).state_dict()
    state["a2v.slope_learned"] = state.pop("a2v.slope")  # as a parameter of an older version
    ckpt = tmp_path / "best.pt"
    torch.save({"model": state, "model_name": "hybrid", "model_settings": settings,
                "normalizer": {}, "labels": ["ANG"]}, ckpt)
    write_clip(tmp_path / "data" / "1001_DFA_ANG_XX.npz")
    one_line_error(cli("evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")),
                   1, "does not fit this version of the HybridModel")


def test_too_few_speakers_suggests_random_split(tmp_path):
    for i, name in enumerate(["1001_DFA_ANG_XX", "1001_IEO_SAD_XX", "1002_DFA_ANG_XX",
                              "1002_IEO_SAD_XX"]):
        write_clip(tmp_path / f"{name}.npz", seed=i)
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "at least 3 speakers")


def test_demo_data_has_both_name_styles_imbalance_and_broken_files(tmp_path):
    r = cli("demo-data", "--out", str(tmp_path))
    assert r.returncode == 0 and "576 clips" in r.stdout
    from trainer.data import load_dataset

    ds = load_dataset(tmp_path)
    speakers = {c.speaker.split("/")[0] for c in ds.clips}
    assert speakers == {"crema-d", "ravdess"}
    counts = [sum(c.label == k for c in ds.clips) for k in range(6)]
    assert max(counts) > 1.5 * min(counts)  # imbalanced
    assert len(ds.skipped) == 5 and sum(ds.excluded.values()) == 6
    lengths = [c.audio.shape[0] for c in ds.clips]
    assert max(lengths) > 2 * min(lengths)  # variable length


def test_demo_needs_both_modalities():
    """Audio alone names a pair of classes, video alone a triple: only both name one."""
    from trainer.demo import cues

    pairs = [cues(k) for k in range(6)]
    assert len(set(pairs)) == 6
    assert len({a for a, _ in pairs}) == 3 and len({v for _, v in pairs}) == 2
    make_demo_data  # noqa: B018 - the generator the CLI test exercises
