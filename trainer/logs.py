"""Logging: structlog JSON lines in a file, readable lines on the console.

Call ``setup(log_file)`` once per process; then ``structlog.get_logger().info("event", k=v)``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog
from tqdm import tqdm

_shared = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def setup(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Console handler (colours only on a terminal) and, if given, a JSON-lines file handler."""
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
    root.level = level
    for noisy in ("botocore", "boto3", "urllib3", "matplotlib", "PIL", "s3transfer"):
        logging.getLogger(noisy).level = logging.WARNING
    _clear_level_caches()


def _clear_level_caches() -> None:
    """What ``Logger.setLevel`` does after setting a level, on a snapshot of the registry.

    setLevel walks ``loggerDict`` itself, and train's stop handler (a spot notice during setup)
    logs, which can add a logger mid-walk: RuntimeError, a traceback instead of a checkpoint.
    ``list()`` copies the registry in one step that no Python-level signal handler can split.
    """
    loggers = list(logging.Logger.manager.loggerDict.values()) + [logging.getLogger()]
    for logger in loggers:
        if isinstance(logger, logging.Logger):
            logger._cache.clear()


def _not_file_only(record: logging.LogRecord) -> bool:
    """Events logged with ``file_only=True`` (the CLI already told the user) skip the console."""
    return not (isinstance(record.msg, dict) and record.msg.get("file_only"))


def flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()


def progress_bar(iterable, total: int | None = None, desc: str = ""):
    """tqdm on a terminal; the iterable itself otherwise (log lines carry the progress)."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable
