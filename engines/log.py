"""Structured logging: one ``key=value`` line per event, always naming the camera when there is one.

Example::

    log = get_logger("ingest", camera="lobby")
    log.info("state", state="online", reason="first frame")
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from engines.redact import redact

_CONFIGURED = False


def setup_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Configure the root logger once per process (children call it again after spawn)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    level = level or os.environ.get("CROWDSTREAM_LOG_LEVEL", "INFO")
    json_lines = json_lines if json_lines is not None else os.environ.get("CROWDSTREAM_LOG_JSON") == "1"
    handler = logging.StreamHandler(sys.stderr)
    fmt = _JsonFormatter() if json_lines else _RedactingFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S")
    handler.setFormatter(fmt)
    root = logging.getLogger("crowdstream")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    _CONFIGURED = True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname, "logger": record.name,
               "event": record.msg, **getattr(record, "fields", {})}
        return redact(json.dumps(doc, default=str))


class _RedactingFormatter(logging.Formatter):
    """Every line, ours or a library's, goes through ``engines.redact.redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _fmt(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if (not s or any(c in s for c in ' ="')) else s


class StructLogger:
    """A thin wrapper that renders keyword fields as ``key=value``."""

    def __init__(self, name: str, **bound: Any) -> None:
        self._log = logging.getLogger(f"crowdstream.{name}")
        self._bound = bound

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if not self._log.isEnabledFor(level):
            return
        allf = {**self._bound, **fields}
        text = " ".join([event, *(f"{k}={_fmt(v)}" for k, v in allf.items())])
        self._log.log(level, text, extra={"fields": allf})

    def debug(self, event: str, **f: Any) -> None:
        self._emit(logging.DEBUG, event, f)

    def info(self, event: str, **f: Any) -> None:
        self._emit(logging.INFO, event, f)

    def warning(self, event: str, **f: Any) -> None:
        self._emit(logging.WARNING, event, f)

    def error(self, event: str, **f: Any) -> None:
        self._emit(logging.ERROR, event, f)


def error_line(e: BaseException, limit: int = 300) -> str:
    """One line for an exception: ``Type: first line of the message`` (whitespace collapsed, at
    most ``limit`` characters), for errors shown to an operator; the traceback goes to DEBUG.

    Example::

        error_line(ValueError("bad file\nmore detail"))   # 'ValueError: bad file'
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def get_logger(name: str, **bound: Any) -> StructLogger:
    setup_logging()
    return StructLogger(name, **bound)
