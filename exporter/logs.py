"""Structured logs: one line per event, logfmt by default or JSON (``--log.format``).

Code logs with the standard ``logging`` module and passes fields through ``extra``::

    log.info("cycle done", extra={"device": "cpu", "probe": "cycle", "duration_seconds": 41.2})

and gets, in logfmt::

    ts=2026-11-22T05:00:00.123Z level=info logger=scaleprobe.cycle msg="cycle done" device=cpu \
        probe=cycle duration_seconds=41.2

Why logfmt: it is what Prometheus' own exporters print, it greps well, and Loki parses it without
configuration. JSON is there for log pipelines that want it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_LEVEL_NAMES = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one log line, in a stable order: ts, level, logger, msg, then extras."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    if record.exc_info and record.exc_info[1] is not None:
        fields["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
    return fields


def _logfmt_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs on one line; values with spaces or quotes are quoted and escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in record_fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that JSON cannot hold are written as strings."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), default=str, separators=(",", ":"))


def setup_logging(
    level: str = "info", log_format: str = "logfmt", stream: TextIO | None = None
) -> logging.Handler:
    """Send every ``scaleprobe`` logger's records to ``stream`` (stderr) in one format.

    Returns the handler so a caller (or a test) can remove it again.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else LogfmtFormatter())
    logger = logging.getLogger("scaleprobe")
    for old in list(logger.handlers):
        if getattr(old, "_scaleprobe", False):
            logger.removeHandler(old)
    handler._scaleprobe = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(level, logging.INFO))
    logger.propagate = False
    # APScheduler logs every job run at INFO; keep its warnings (missed runs) in the same format.
    aps = logging.getLogger("apscheduler")
    aps.handlers = [handler]
    aps.setLevel(logging.WARNING)
    aps.propagate = False
    return handler
