"""`make monitor` driven as a user drives it: keys into a pseudo-terminal, the screen read back.

    .venv/bin/python -m pytest tests/test_ops_monitor.py

`python -m trainer monitor --backend local` runs in its own process on a pty, against a finished
run directory in the moto server (conftest ``local_stack`` and ``finished_run``); no Docker.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from trainer.store.s3 import sync_up
from util import ctrl_c_default

RUN = "20250101-120000-ab12"
PROMPT = "choice> "


class Terminal:
    """A process on a pseudo-terminal: ``send`` keys, ``expect`` text on the screen."""

    def __init__(self, argv: list[str], cwd):
        self.fd, tty = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=tty, stdout=tty, stderr=tty, cwd=cwd,
                                     start_new_session=True, preexec_fn=ctrl_c_default)
        os.close(tty)
        self.screen, self.seen = "", 0

    def expect(self, text: str, timeout: float = 180) -> str:
        """Everything shown from the last match up to ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.screen[self.seen:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the screen:\n{self.screen[-3000:]}")
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.screen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the process ended and closed the terminal
                    time.sleep(0.1)
        end = self.screen.index(text, self.seen) + len(text)
        shown, self.seen = self.screen[self.seen:end], end
        return shown.replace("\r\n", "\n")

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=120)
        os.close(self.fd)
        return code


def test_monitor_menu_shows_metrics_time_to_go_status_and_resources(local_stack, finished_run,
                                                                   tmp_path):
    sync_up(finished_run, f"s3://{local_stack['bucket']}/runs/{RUN}/")
    metrics = [json.loads(ln) for ln in (finished_run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((finished_run / "summary.json").read_text())
    term = Terminal([sys.executable, "-m", "trainer", "monitor", "--backend", "local"], tmp_path)
    try:
        menu = term.expect(PROMPT)
        assert f"== run {RUN} (local): done, epoch 2/2 ==" in menu
        assert "4  validation metrics per epoch" in menu and "q  quit" in menu

        term.send("4\n")
        shown = term.expect(PROMPT)
        assert "epoch train loss val loss val acc val F1 val UAR" in shown
        for row in metrics:
            assert f"{row['val_macro_f1']:>6.3f}" in shown
        assert "validation macro-F1 per epoch" in shown and "epoch 1 .. 2" in shown

        term.send("5\n")
        assert "the run has ended: done after 2 epoch(s)" in term.expect(PROMPT)

        term.send("6\n")
        shown = term.expect(PROMPT)
        assert "state      done" in shown
        assert f"test       macro-F1 {summary['test']['macro_f1']:.4f}" in shown

        term.send("3\n")
        shown = term.expect(PROMPT)
        assert "trainer process (status.json):" in shown and "MB resident" in shown

        term.send("1\n")  # no container for this run: says so, and where the log is
        assert f"no live log for run {RUN}" in term.expect(PROMPT)

        term.send("7\n")
        assert "no choice '7': type 1 to 6, t, r or q" in term.expect(PROMPT)

        # t: the run's event files come down to results/RUN/ and TensorBoard serves them on a
        # loopback port until Ctrl-C (SIGINT), then the menu is back.
        term.send("t\n")
        shown = term.expect("(Ctrl-C: stop)")
        assert "1 event file(s) downloaded" in shown
        assert [p.name for p in (tmp_path / "results" / RUN / "tb").iterdir()] == \
            [p.name for p in (finished_run / "tb").iterdir()]
        url = re.search(r"TensorBoard on (http://127\.0\.0\.1:\d+/)", shown).group(1)
        assert json.loads(urllib.request.urlopen(url + "data/runs", timeout=120).read()) == ["tb"]
        term.proc.send_signal(signal.SIGINT)
        assert "tensorboard stopped" in term.expect(PROMPT)
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "data/runs", timeout=5)

        term.send("r\n")
        assert RUN in term.expect("run id (Enter: the newest)> ")
        term.send("nope\n")
        assert "error: there is no run 'nope'" in term.expect(PROMPT)

        term.send("q\n")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_status_shows_extraction_progress_while_a_run_extracts_its_media():
    import time

    from trainer.ops import runs, views

    st = {"state": "extracting", "epoch": 0, "epochs_max": 30,
          "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "extract": {"clips_done": 120, "media_files": 7442, "uploaded": 96}}
    lines = views.status_lines("r1", st)
    assert "state      extracting" in lines[1] and "warning" not in " ".join(lines)
    assert "extract    120 clip files of about 7442 media files, 96 in S3" in lines
    assert runs.is_going(st) and "extracting" in runs.GOING_STATES
