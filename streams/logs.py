"""Log lines for people (``text``, the default) or for a log pipeline (``json``: one object per line).

``PLATESTREAM_LOG_FORMAT=json`` gives every process (worker, API, CLI) the same line shape, so a collector
(Loki, Elasticsearch, CloudWatch) can filter by level and logger without parsing text. What is logged is the
same either way: no plate, token or password at INFO (the tests grep both forms).
"""

from __future__ import annotations

import logging
import logging.config
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "pid", "message"}`` and, when there is one, ``"exception"``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def config(fmt: str, level: int | str, stream: IO[str]) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` of the root logger: lines in format ``fmt`` to ``stream`` (the worker
    logs to stdout as faust does, the other commands to stderr beside their output)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format: one of {FORMATS}, not {fmt!r}")
    formatter = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"line": formatter},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "line", "stream": stream}},
            "root": {"level": level, "handlers": ["out"]}}


def setup(fmt: str, level: int | str, stream: IO[str] | None = None) -> None:
    logging.config.dictConfig(config(fmt, level, stream or sys.stderr))
