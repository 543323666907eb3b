"""trainer/status.py: the heartbeat's last word is the run's final state.

    .venv/bin/python -m pytest tests/test_status.py
"""

from __future__ import annotations

import json
import threading
import time

from trainer import status as status_module
from trainer.store.rundir import RunDir


def test_a_late_heartbeat_never_overwrites_the_final_state(tmp_path, monkeypatch):
    """A heartbeat caught in a slow write while the loop writes its final state: the final state
    is what stays, whether written before ``stop`` (finish: done) or after it (stopped)."""
    monkeypatch.setattr(status_module, "HEARTBEAT_SECONDS", 0.01)
    in_write = threading.Event()

    class SlowRun(RunDir):
        def write_json(self, name, obj):
            if threading.current_thread().name == "heartbeat":
                in_write.set()
                time.sleep(0.3)  # a slow disk, or an upload, under the heartbeat's write
            super().write_json(name, obj)

    run = SlowRun(tmp_path)
    for final in ("done", "stopped"):
        status = status_module.Status(run, epochs_max=5)
        status.start()
        status.update(state="training")
        in_write.clear()
        assert in_write.wait(5)
        if final == "done":  # Training.finish, then cleanup()
            status.update(state="done")
            status.stop()
        else:  # cleanup("stopped")
            status.stop()
            status.update(state="stopped")
        assert not status._thread.is_alive()
        time.sleep(0.5)  # what a heartbeat still running would write lands in this time
        assert json.loads((tmp_path / "status.json").read_text())["state"] == final
