"""trainer/logs.py: a stop signal never runs its handler in the middle of logging's setup."""

import os
import signal
import time

from trainer import logs


def test_a_stop_signal_during_logging_setup_is_handled_once_setup_is_done(monkeypatch):
    # train's stop handler logs; run inside setup it once broke logging's registry walk
    # (RuntimeError: dictionary changed size during iteration) and the run died with a traceback.
    events = []

    def setup_that_gets_a_signal(log_file, level):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # an unheld signal's handler runs here
        events.append("setup done")

    old = signal.signal(signal.SIGTERM, lambda *_: events.append("handler"))
    try:
        monkeypatch.setattr(logs, "_setup", setup_that_gets_a_signal)
        logs.setup(None)
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert events == ["setup done", "handler"]
