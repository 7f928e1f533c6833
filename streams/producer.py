"""Sending messages to Kafka with kafka-python (simulator, ``platestream produce``, tests, benchmarks)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from streams import connect
from streams.settings import Settings

# past kafka-python's delivery.timeout.ms (120 s), by which every message has been acknowledged or failed
SETTLE_TIMEOUT_S = 180.0


class SendError(RuntimeError):
    """Some messages were not acknowledged by the brokers; ``failed`` of ``sent``, ``first`` the first reason."""

    def __init__(self, failed: int, sent: int, first: BaseException) -> None:
        super().__init__(f"{failed:,} of {sent:,} messages were not acknowledged: {type(first).__name__}: {first}")
        self.failed, self.sent, self.first = failed, sent, first


def send_all(s: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes]], rate: float = 0.0,
             duration: float | None = None, progress: bool = False, total: int | None = None) -> int:
    """Send (key, value) pairs in order; ``rate`` caps messages/s (0 = as fast as possible).

    Returns how many were sent, every one acknowledged (acks=all), or raises ``SendError`` once all are sent
    if any was not (kafka-python's ``flush`` reports no failed send: each message's future is followed); stops
    early after ``duration`` seconds.
    """
    producer = KafkaProducer(**connect.kafka(s), acks="all", linger_ms=20, batch_size=512 * 1024,
                             max_request_size=16 << 20, compression_type=None)
    sent = 0
    errors: list[BaseException] = []
    resolved = [0]  # futures done either way (their callbacks run on the producer's sender thread)
    settled = threading.Condition()

    def ok(_: object) -> None:
        with settled:
            resolved[0] += 1
            settled.notify()

    def failed(e: BaseException) -> None:
        errors.append(e)
        ok(e)

    t0 = last = time.monotonic()
    try:
        for key, value in messages:
            producer.send(topic, value=value, key=key).add_callback(ok).add_errback(failed)
            sent += 1
            if rate > 0 and sent % 100 == 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if sent % 5000 == 0:
                now = time.monotonic()
                if duration is not None and now - t0 >= duration:
                    break
                if progress and now - last >= 1.0:
                    last = now
                    of = f"/{total:,}" if total else ""
                    print(f"\r  sent {sent:,}{of} ({sent / (now - t0):,.0f} msg/s)", end="", file=sys.stderr)
        # waited for message by message, not with ``flush``: kafka-python's flush returns, or raises UnknownError
        # ("Future not done"), while a batch the brokers refused as too large is split and sent again
        with settled:
            if not settled.wait_for(lambda: resolved[0] == sent, timeout=SETTLE_TIMEOUT_S):
                raise KafkaTimeoutError(f"{sent - resolved[0]:,} of {sent:,} messages not settled in "
                                        f"{SETTLE_TIMEOUT_S} s")
    finally:
        producer.close()
    if progress:
        el = time.monotonic() - t0
        print(f"\r  sent {sent:,} messages in {el:.1f}s ({sent / max(el, 1e-9):,.0f} msg/s)", file=sys.stderr)
    if errors:
        raise SendError(len(errors), sent, errors[0])
    return sent
