"""Holding back the notices a native library prints straight to file descriptor 2, and only
those.

    with quiet_native_stderr():
        mesh = face_mesh.FaceMesh(...)     # its TFLite and absl notices are dropped

MediaPipe's C++ side prints TFLite and absl notices (and, with protobuf >= 5, a harmless
'GetPrototype' line) to fd 2 when a graph is made and first run; once per clip they would bury
the progress bar. Redirecting fd 2 is process-wide, so during the spell fd 2 is a pipe, and a
thread passes on to the real stderr every line that is not such a notice: whatever other
threads write meanwhile (the heartbeat, the uploader's warnings, a log line) still arrives.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

# The notices held back: absl/glog lines ("W0000 00:00:1796556409.076685 14295 file.cc:114] ..."),
# TFLite's delegate line, absl's line about its own start, protobuf's GetPrototype complaint.
NOTICE = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
                    rb"|INFO: Created TensorFlow Lite"
                    rb"|WARNING: All log messages before absl::InitializeLog"
                    rb"|.*'MessageFactory' object has no attribute 'GetPrototype'")
ENDS = re.compile(rb"[\r\n]")  # a line ends at either: a progress bar redraws with \r
JOIN_SECONDS = 5.0  # waits this long for the last lines (a child holding the pipe: no longer)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pass_on(pipe_fd: int, out_fd: int) -> None:
    """Copy the pipe's lines to ``out_fd`` but the notices, until the pipe ends."""
    rest = b""
    try:
        while chunk := os.read(pipe_fd, 65536):
            rest += chunk
            ends = [m.end() for m in ENDS.finditer(rest)]
            if not ends:
                continue
            lines, rest = rest[:ends[-1]], rest[ends[-1]:]
            start = 0
            for end in ends:
                line = lines[start:end]
                start = end
                if not NOTICE.match(line):
                    _write_all(out_fd, line)
        if rest and not NOTICE.match(rest):
            _write_all(out_fd, rest)
    except OSError:  # the real stderr closed: nothing left to pass on to
        pass
    finally:
        os.close(pipe_fd)
        os.close(out_fd)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Native notices (``NOTICE``) written to fd 2 meanwhile are dropped; every other line
    reaches stderr. Python exceptions are objects and still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    passer = threading.Thread(target=_pass_on, args=(read_fd, os.dup(saved)),
                              name="native-stderr", daemon=True)
    passer.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()  # what Python buffered meanwhile, through the filter
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # the pipe's last write end closes: the thread reads to its end
        os.close(saved)
        passer.join(JOIN_SECONDS)
