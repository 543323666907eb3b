"""MediaPipe's native notices are held back while its graph starts, and nothing else: what
another thread writes to stderr meanwhile (the heartbeat, the uploader's warnings) arrives.

    .venv/bin/python -m pytest tests/test_native_stderr.py -q
"""

from __future__ import annotations

import os
import threading

from tests.media import frames
from trainer.extract.face import make_face
from trainer.extract.native_stderr import quiet_native_stderr


def test_what_another_thread_writes_while_mediapipe_starts_reaches_stderr(capfd):
    stop, sent = threading.Event(), []

    def heartbeat():  # as a log handler on the real stderr writes: to file descriptor 2
        while not stop.is_set():
            line = f"heartbeat {len(sent)}\n"
            os.write(2, line.encode())
            sent.append(line)
            stop.wait(0.01)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    try:
        face = make_face("mediapipe")  # the graph starts, prints its notices, runs once
        assert face(frames(1)[0]) is not None  # the first face: the landmark model starts
        face.close()
    finally:
        stop.set()
        beat.join()
    err = capfd.readouterr().err
    assert sent  # how many fit in the start-up depends on the machine (7 to 100 seen)
    assert [line for line in sent if line not in err] == []
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err  # still held back


def test_only_the_notices_are_dropped_and_a_line_without_its_end_still_arrives(capfd):
    with quiet_native_stderr():
        os.write(2, b"W0000 00:00:1796556409.076685   14295 inference_feedback_manager.cc:114] "
                    b"Feedback manager requires a model with a single signature inference.\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"warning: upload failed, retrying\n")
        os.write(2, b"\rextract: 50%")  # a progress bar's redraw: no newline
    err = capfd.readouterr().err
    assert err == "warning: upload failed, retrying\n\rextract: 50%"
