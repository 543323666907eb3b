"""Training end to end: the run directory, resume, stop signals, evaluate (slow: real runs)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from util import FAST, read_jsonl, tiny_demo

from trainer.cli import main
from trainer.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow
TIMING = {"epoch_seconds", "samples_per_second"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo(tmp_path_factory.mktemp("demo"))


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *FAST, *extra])


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_run_directory_is_complete(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(demo, out, "--epochs", "2") == 0
    assert "test macro-F1" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "status.json", "splits.csv", "summary.json",
                 "train.log", "checkpoints/last.pt", "checkpoints/best.pt",
                 "plots/learning_curves.png", "plots/confusion_matrix.png"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_uar", "lr",
            "epoch_seconds", "samples_per_second"} <= set(rows[0])
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 2 and "updated_at" in status
    summary = json.loads((out / "summary.json").read_text())
    assert {"accuracy", "macro_f1", "uar", "per_class", "confusion_matrix"} <= set(summary["test"])
    # The demo's broken files and calm/surprised clips are accounted for, not dropped.
    assert len(summary["data"]["skipped"]) == 5
    assert summary["data"]["excluded"] == {"calm": 3, "surprised": 3}
    speakers = [set(summary["data"][k]["speakers"]) for k in ("train", "val", "test")]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2])
    log_lines = [json.loads(x) for x in (out / "train.log").read_text().splitlines()]
    assert {"epoch", "test"} <= {x["event"] for x in log_lines}
    ckpt = read_checkpoint(out / "checkpoints/last.pt")  # a dict of state, no pickled module
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "best", "normalizer",
            "labels", "model_settings", "config"} <= set(ckpt)


def test_existing_run_is_not_overwritten_without_resume(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(demo, out, "--epochs", "1") == 0
    assert train(demo, out, "--epochs", "1") == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--mixup", "0.4", "--noise", "0.1"], ["--no-sync-head"],
                                   ["--ema", "0.9"], ["--ensemble", "2"]])
def test_resume_ends_with_the_same_metrics_as_an_uninterrupted_run(demo, tmp_path, extra):
    assert train(demo, tmp_path / "full", "--epochs", "4", *extra) == 0
    assert train(demo, tmp_path / "part", "--epochs", "2", *extra) == 0
    assert train(demo, tmp_path / "part", "--epochs", "4", "--resume", *extra) == 0
    # An ensemble's epochs are its members' (each a run of its own, resumed as one).
    for run in ["members/0", "members/1"] if "--ensemble" in extra else ["."]:
        full = read_jsonl(tmp_path / "full" / run / "metrics.jsonl")
        part = read_jsonl(tmp_path / "part" / run / "metrics.jsonl")
        assert without_timing(part) == without_timing(full)
    s_full = json.loads((tmp_path / "full" / "summary.json").read_text())["test"]
    s_part = json.loads((tmp_path / "part" / "summary.json").read_text())["test"]
    assert s_part == s_full


def test_lstm_baseline_trains(demo, tmp_path):
    assert train(demo, tmp_path / "lstm", "--epochs", "1", "--model", "lstm") == 0
    assert read_checkpoint(tmp_path / "lstm/checkpoints/best.pt")["model_name"] == "lstm"


def run_cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(pred, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_saves_a_loadable_checkpoint_and_resume_matches(demo, tmp_path, sig, code):
    args = ["--data", str(demo), *FAST, "--epochs", "3", "--batch-size", "4"]
    out = tmp_path / "stopped"
    proc = run_cli("train", "--out", str(out), *args)
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().strip())
    proc.send_signal(sig)  # mid-epoch 2, most likely
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] >= 1

    resumed = run_cli("train", "--out", str(out), *args, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert train(demo, tmp_path / "straight", "--epochs", "3", "--batch-size", "4") == 0
    assert without_timing(read_jsonl(metrics)) == without_timing(
        read_jsonl(tmp_path / "straight" / "metrics.jsonl"))


@pytest.mark.parametrize("extra", [[], ["--no-sync-head"], ["--ema", "0.9"], ["--ensemble", "2"]])
def test_evaluate_reproduces_the_test_metrics_of_the_summary(demo, tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert train(demo, out, "--epochs", "2", *extra) == 0
    held_out = tmp_path / "held-out"
    for line in (out / "splits.csv").read_text().splitlines()[1:]:
        path, _, _, split = line.split(",")
        if split == "test":
            (held_out / path).parent.mkdir(parents=True, exist_ok=True)
            (held_out / path).write_bytes((Path(demo) / path).read_bytes())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints/best.pt"),
                 "--data", str(held_out), "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    test = json.loads((out / "summary.json").read_text())["test"]
    for key in ("accuracy", "macro_f1", "uar", "confusion_matrix", "per_class"):
        assert report[key] == test[key], key
    printed = json.loads(capsys.readouterr().out)
    assert printed["macro_f1"] == round(test["macro_f1"], 6)
    weight = json.loads((out / "summary.json").read_text())["sync_weight"]
    best = read_checkpoint(out / "checkpoints/best.pt")
    if "--ensemble" in extra:  # each member's head's weight, chosen on validation, is its own
        assert weight is None and "sync_weight" not in best
        assert [best["model"][f"members.{k}.sync_weight"].item() for k in (0, 1)] == [
            m["sync_weight"] for m in json.loads((out / "summary.json").read_text())["members"]]
    elif "--no-sync-head" not in extra:  # the head's weight, chosen on validation, is in best.pt
        assert best["sync_weight"] == weight
    else:
        assert weight is None and "sync_weight" not in best
    if "--ema" in extra:  # what evaluate read (and matched) is the average, not the last weights
        assert any(not torch.equal(v, best["train_weights"][k]) for k, v in best["model"].items())
    else:
        assert "train_weights" not in best


def test_predict_gives_probabilities_per_clip(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(demo, out, "--epochs", "1") == 0
    capsys.readouterr()
    clip = next(Path(demo).glob("1001_*.npz"))
    assert main(["predict", "--checkpoint", str(out / "checkpoints/best.pt"), str(clip),
                 str(Path(demo) / "broken" / "1091_DFA_ANG_XX.npz")]) == 0
    good, bad = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert good["label"] in good["probabilities"]
    assert abs(sum(good["probabilities"].values()) - 1) < 1e-4
    assert "unreadable" in bad["error"]


def test_predict_groups_clips_by_speaker_and_a_clip_alone_uses_the_fallback(
        demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(demo, out, "--epochs", "1", "--norm", "speaker") == 0
    ckpt = str(out / "checkpoints/best.pt")
    three = sorted(Path(demo).glob("1001_*.npz"))[:3]
    alone = next(Path(demo).glob("1003_*.npz"))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, *map(str, three), str(alone)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    method = read_checkpoint(ckpt)["fallback"]["method"]
    assert [r["norm"].split(" (")[0] for r in rows] == ["speaker"] * 3 + [
        f"fallback: {method}"]
    assert rows[0]["norm"] == "speaker (3 clips given together)"
    assert main(["predict", "--checkpoint", ckpt, str(three[0])]) == 0
    (first_alone,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert first_alone["probabilities"] != rows[0]["probabilities"]  # other statistics
    assert main(["predict", "--checkpoint", ckpt, str(alone)]) == 0
    (again,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert again["probabilities"] == rows[3]["probabilities"]  # the fallback: the clip alone


def test_per_speaker_normalisation_never_uses_a_held_out_speakers_clips(demo, tmp_path):
    """Held-out (validation and test) speakers' clips rewritten out of all recognition: every
    training step, and so the trained weights, stay exactly the same."""
    import shutil

    import numpy as np

    assert train(demo, tmp_path / "a", "--epochs", "2", "--norm", "speaker") == 0
    held_out = [line.split(",")[0] for line in
                (tmp_path / "a" / "splits.csv").read_text().splitlines()[1:]
                if not line.endswith(",train")]
    other = tmp_path / "other"
    shutil.copytree(demo, other)
    for rel in held_out:
        with np.load(other / rel) as z:
            arrays = dict(z)
        for key in ("audio_features", "video_features"):  # other scale, offset and content
            arrays[key] = arrays[key][::-1] * 3.0 + 10.0
        np.savez(other / rel, **arrays)
    assert train(other, tmp_path / "b", "--epochs", "2", "--norm", "speaker") == 0
    a, b = (read_jsonl(tmp_path / r / "metrics.jsonl") for r in "ab")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    wa, wb = (read_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in "ab")
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=0, atol=0)
    assert wa["prepare"] == {"audio_rate": 25.0, "video_rate": 15.0, "norm": "speaker"}
    # ...while the held-out clips themselves did change what was measured on them.
    assert [r["val_loss"] for r in a] != [r["val_loss"] for r in b]


KILL_AT_SECOND_BEST = """
import os, signal, sys
from trainer.store import rundir
save, writes = rundir.RunDir.save_torch, []
def save_torch(self, name, obj):
    if name == "checkpoints/best.pt":
        writes.append(name)
        if len(writes) == 2:  # the second improvement: killed between the checkpoint writes
            os.kill(os.getpid(), signal.SIGKILL)
    save(self, name, obj)
rundir.RunDir.save_torch = save_torch
from trainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_between_the_checkpoint_writes_leaves_a_pair_resume_can_trust(demo, tmp_path):
    args = ["--data", str(demo), *FAST, "--patience", "100"]
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_BEST, "train", "--out", str(out),
                           *args, "--epochs", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = read_checkpoint(out / "checkpoints/last.pt")
    epoch = last["epoch"]
    # Resume with no epochs left to run: the test metrics come from the best weights as they
    # are restored, so a best.pt that is not last.pt's best epoch shows in them.
    assert train(demo, out, *args[2:], "--epochs", str(epoch), "--resume") == 0
    assert train(demo, tmp_path / "straight", *args[2:], "--epochs", str(epoch)) == 0
    best = read_checkpoint(out / "checkpoints/best.pt")
    straight = read_checkpoint(tmp_path / "straight" / "checkpoints/best.pt")
    assert best["epoch"] == last["best_epoch"] == straight["epoch"]
    for k in straight["model"]:
        torch.testing.assert_close(best["model"][k], straight["model"][k], rtol=0, atol=0)
    summaries = [json.loads((d / "summary.json").read_text())
                 for d in (out, tmp_path / "straight")]
    assert summaries[0]["test"] == summaries[1]["test"]
    assert summaries[0]["validation"] == summaries[1]["validation"]


def _signals(proc, sig, times=4, gap=0.005):
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(gap)


def test_a_second_sigterm_mid_epoch_still_saves_the_checkpoint(demo, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(demo), "--out", str(out), *FAST, "--epochs", "3",
                   "--batch-size", "4")
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().strip())
    # The spot watcher's, docker stop's, and more. The second only once the first is handled:
    # signals still pending together are one to the kernel (seen on a loaded machine).
    proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 60
    while "stop_requested" not in (out / "train.log").read_text():  # polled closely: the stop
        assert time.monotonic() < end  # comes at the next batch
        time.sleep(0.001)
    _signals(proc, signal.SIGTERM, times=3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] >= 1
    events = [e["event"] for e in read_jsonl(out / "train.log")]
    assert "stop_already_requested" in events and "stopped" in events


def test_a_second_sigterm_during_setup_still_saves_a_checkpoint(demo, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(demo), "--out", str(out), *FAST, "--epochs", "3")
    wait_for(lambda: (out / "train.log").exists())  # setup has begun, the handlers are set
    _signals(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint saved" in err and "Traceback" not in err
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["step"] >= 1  # saved at the first batch
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    resumed = run_cli("train", "--data", str(demo), "--out", str(out), *FAST, "--epochs", "1",
                      "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err


def test_a_second_ctrl_c_inside_a_constructor_leaves_without_a_traceback():
    # CI once caught the second Ctrl-C inside np.load's ZipFile(); the half-built object's
    # __del__ then printed "Exception ignored ... Traceback" on the way out.
    code = """
import signal
from trainer.errors import exit_now
class HalfBuilt:
    def __init__(self):
        exit_now(signal.SIGINT)
        self.fp = None
    def __del__(self):
        self.fp.close()
HalfBuilt()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_a_second_ctrl_c_with_no_save_in_progress_stops_at_once(demo, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(demo), "--out", str(out), *FAST, "--epochs", "3")
    wait_for(lambda: (out / "train.log").exists())
    _signals(proc, signal.SIGINT, times=2, gap=0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
