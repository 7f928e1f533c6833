"""Log lines as JSON objects for a log pipeline."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from streams import logs


def test_a_json_line_is_one_object_with_the_exception_when_there_is_one() -> None:
    out = io.StringIO()
    logs.setup("json", logging.INFO, out)
    try:
        logging.getLogger("platestream.test").info("batch of %d reads", 3)
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("platestream.test").exception("failed")
        logging.getLogger("platestream.test").debug("not at INFO")
    finally:
        logs.setup("text", logging.WARNING)
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message")} == {
        "level": "INFO", "logger": "platestream.test", "message": "batch of 3 reads"}
    assert first["time"].endswith("+00:00") and isinstance(first["pid"], int) and "exception" not in first
    assert second["level"] == "ERROR" and second["exception"].rstrip().endswith("ValueError: bad")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="one of"):
        logs.config("xml", logging.INFO, io.StringIO())
