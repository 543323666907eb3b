"""TensorBoard tracking (docs/tracking.md): a run's events read back by TensorBoard's own reader,
the hparams summary, a training without tensorboard installed, and `python -m trainer
tensorboard` serving on loopback. An s3:// run's events: tests/test_s3.py (assert_complete_run);
a cross-validation in a real browser: tests/test_tracking_browser.py.

    .venv/bin/python -m pytest tests/test_tracking.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from tensorboard.plugins.hparams import plugin_data_pb2

from util import (EPOCH_TAGS, FAST, assert_events_match_metrics, ctrl_c_default, read_jsonl,
                  tb_events, tiny_demo)

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_writes_one_event_per_epoch_equal_to_metrics_jsonl(finished_run):
    metrics = read_jsonl(finished_run / "metrics.jsonl")
    assert len(metrics) == 2
    assert_events_match_metrics(finished_run / "tb", metrics)
    acc = tb_events(finished_run / "tb")
    test = json.loads((finished_run / "summary.json").read_text())["test"]
    for name in ("accuracy", "macro_f1", "uar"):
        [event] = acc.Scalars(f"test/{name}")
        assert (event.step, event.value) == (2, pytest.approx(test[name], rel=1e-6))
    assert set(acc.Tags()["scalars"]) == set(EPOCH_TAGS.values()) | {
        "test/accuracy", "test/macro_f1", "test/uar"}
    # the confusion matrix and the per-class F1 as PNG images at the last epoch
    for tag in ("test/confusion_matrix", "test/per_class_f1"):
        [image] = acc.Images(tag)
        assert image.step == 2 and image.encoded_image_string.startswith(b"\x89PNG")
        assert image.width > 200 and image.height > 200


def test_the_hparams_summary_names_the_runs_settings_and_its_test_metrics(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    content = tb_events(finished_run / "tb").PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert set(start.hparams) == set(config)
    for name, value in config.items():
        v = start.hparams[name]
        got = {"number_value": v.number_value, "string_value": v.string_value,
               "bool_value": v.bool_value}[v.WhichOneof("kind")]
        want = value if isinstance(value, (int, float, str)) else str(value)
        assert got == want, name
    assert start.hparams["d_model"].number_value == 32  # FAST's --d-model 32
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [
        "test/accuracy", "test/macro_f1", "test/uar"]


RUNNER = """\
import sys
sys.modules["tensorboard"] = None  # as if not installed: any import of it fails
from trainer.cli import main
for out in sys.argv[2:]:
    code = main(["train", "--data", sys.argv[1], "--out", out, "--epochs", "1", *{fast}])
    assert code == 0, code
"""


@pytest.mark.slow
def test_training_without_tensorboard_warns_once_and_does_everything_else(tmp_path):
    data = tiny_demo(tmp_path / "data", speakers=6, clips_per_speaker=6)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(fast=FAST))
    outs = [tmp_path / "a", tmp_path / "b"]  # two runs in one process, as cv's folds are
    proc = subprocess.run([sys.executable, str(runner), str(data), *map(str, outs)],
                          capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "tensorboard_missing" in ln]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert "pip install -e '.[tracking]'" in warnings[0]
    assert "Traceback" not in proc.stderr
    for out in outs:
        assert (out / "summary.json").exists() and (out / "plots/confusion_matrix.png").exists()
        assert len(read_jsonl(out / "metrics.jsonl")) == 1
        assert not (out / "tb").exists()


def port_is_open(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)/", url).groups()
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


SHOW_SIGINT = ("import signal; h = signal.getsignal(signal.SIGINT); "
               "print('ignored' if h == signal.SIG_IGN else h.__name__)")


def test_a_child_the_tests_stop_with_ctrl_c_has_it_at_its_default_when_the_run_ignores_it():
    # As in `nohup make test &`: the test process ignores SIGINT, which a child inherits.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.run([sys.executable, "-c", SHOW_SIGINT], capture_output=True,
                               text=True, timeout=60).stdout
        reset = subprocess.run([sys.executable, "-c", SHOW_SIGINT], capture_output=True,
                               text=True, timeout=60, preexec_fn=ctrl_c_default).stdout
    finally:
        signal.signal(signal.SIGINT, before)
    assert plain.split() == ["ignored"]  # what made the Ctrl-C tests time out
    assert reset.split() == ["default_int_handler"]  # Ctrl-C is KeyboardInterrupt again


@pytest.mark.slow
def test_tensorboard_serves_runs_on_a_free_loopback_port_until_ctrl_c(finished_run):
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "tensorboard",
                             str(finished_run.parent)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default)
    try:
        line = proc.stdout.readline()
        url = re.search(r"TensorBoard on (http://127\.0\.0\.1:\d+/) serving", line).group(1)
        tags = json.loads(urllib.request.urlopen(url + "data/plugin/scalars/tags",
                                                 timeout=120).read())
        assert set(tags) == {"run/tb"}  # the run folder's name
        assert set(EPOCH_TAGS.values()) <= set(tags["run/tb"])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "tensorboard stopped" in out
    assert not port_is_open(url)  # TensorBoard went with it


def test_tensorboard_on_a_missing_folder_is_one_line_of_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer", "tensorboard"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [textwrap.shorten(
        "error: no such folder: results: `make results` downloads runs there; or name run "
        "folders, e.g. python -m trainer tensorboard runs/cv", 500)]
