"""Sending messages to Kafka with kafka-python (simulator, ``platestream produce``, tests, benchmarks)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from kafka import KafkaProducer

from streams import connect
from streams.settings import Settings


def send_all(s: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes]], rate: float = 0.0,
             duration: float | None = None, progress: bool = False, total: int | None = None) -> int:
    """Send (key, value) pairs in order; ``rate`` caps messages/s (0 = as fast as possible).

    Returns how many were sent and acknowledged (acks=all); stops early after ``duration`` seconds.
    """
    producer = KafkaProducer(**connect.kafka(s), acks="all", linger_ms=20, batch_size=512 * 1024,
                             max_request_size=16 << 20, compression_type=None)
    sent = 0
    t0 = last = time.monotonic()
    try:
        for key, value in messages:
            producer.send(topic, value=value, key=key)
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
        producer.flush()
    finally:
        producer.close()
    if progress:
        el = time.monotonic() - t0
        print(f"\r  sent {sent:,} messages in {el:.1f}s ({sent / max(el, 1e-9):,.0f} msg/s)", file=sys.stderr)
    return sent
