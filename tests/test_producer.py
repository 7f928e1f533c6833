"""``send_all`` against the real broker: a message the brokers refuse is an error, not a silent loss."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.producer import SendError, send_all
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import settings_env
from tests.support import read_topic, set_topic_config

pytestmark = pytest.mark.integration
TOO_LARGE = b"x" * 8192


def small_messages_only(s: Settings) -> None:
    """The reads topic refuses a batch over 4 KiB (the local stack's brokers take 16 MiB)."""
    ensure_topics(s)
    set_topic_config(s, s.topic_reads, max_message_bytes="4096")


def test_a_refused_message_raises_after_the_others_are_acknowledged(settings: Settings) -> None:
    small_messages_only(settings)
    messages = [(b"k", b"first"), (b"k", TOO_LARGE), (b"k", b"last")]
    with pytest.raises(SendError, match=r"of 3 messages were not acknowledged: MessageSizeTooLargeError") as e:
        send_all(settings, settings.topic_reads, messages)
    # kafka-python splits the refused batch, then counts one record too large alone as fatal and fails the
    # messages still in flight with it: whichever it failed are counted, the rest are in the topic
    stored = [r.value for r in read_topic(settings, settings.topic_reads)]
    assert e.value.sent == 3 and e.value.failed == 3 - len(stored) >= 1 and TOO_LARGE not in stored
    assert send_all(settings, settings.topic_reads, [(b"k", b"again")]) == 1


def test_the_produce_command_exits_non_zero_naming_the_refusal(settings: Settings, tmp_path: Path) -> None:
    small_messages_only(settings)
    lines = tmp_path / "reads.jsonl"
    lines.write_bytes(b'{"camera_id": "c"}\n' + TOO_LARGE + b"\n")
    run = subprocess.run([sys.executable, "-m", "streams.cli", "produce", str(lines)], env=settings_env(settings),
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 1, run.stderr
    assert re.search(r"error: [12] of 2 messages were not acknowledged: MessageSizeTooLargeError", run.stderr)
