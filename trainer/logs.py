"""Logging: structlog JSON lines in a file, readable lines on the console.

Call ``setup(log_file)`` once per process; then ``structlog.get_logger().info("event", k=v)``.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import structlog

_shared = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


@contextmanager
def _signals_held():
    """SIGTERM and SIGINT wait until the block ends. A stop handler that logs must not run in
    the middle of configuring logging: ``setLevel`` walks the logger registry, and a logger the
    handler creates changes it mid-walk (RuntimeError: dictionary changed size during
    iteration, seen when a spot notice came during a run's setup)."""
    mask = getattr(signal, "pthread_sigmask", None)
    old = mask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT}) if mask else None
    try:
        yield
    finally:
        if mask:
            mask(signal.SIG_SETMASK, old)


def setup(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Console handler (colours only on a terminal) and, if given, a JSON-lines file handler."""
    with _signals_held():
        _setup(log_file, level)


def _setup(log_file: str | Path | None, level: int) -> None:
    structlog.configure(
        processors=_shared + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_not_file_only)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        foreign_pre_chain=_shared))
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(), foreign_pre_chain=_shared))
        root.addHandler(fh)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "matplotlib", "PIL", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _not_file_only(record: logging.LogRecord) -> bool:
    """Events logged with ``file_only=True`` (the CLI already told the user) skip the console."""
    return not (isinstance(record.msg, dict) and record.msg.get("file_only"))


def flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()
