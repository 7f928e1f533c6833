"""Run the Quix Streams baseline (``benchmarks.quix_app``) on the same broker and data; reads/s."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import quixstreams
import redis

from benchmarks.e2e import ROOT, isolated_settings, poll_rate, produce, stop_process
from streams import stack
from streams.records import Raw, decode_batch


def quix_baseline(info: stack.StackInfo, messages: Sequence[tuple[bytes, bytes]], log_dir: Path) -> dict[str, Any]:
    s = isolated_settings(info, db=9)
    produce(s, messages)
    valid = len(decode_batch([Raw("t", 0, i, None, k, v) for i, (k, v) in enumerate(messages)], 1 << 20))
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    with tempfile.TemporaryDirectory() as state_dir:
        env = {**os.environ, "QUIX_BOOTSTRAP": s.kafka_bootstrap, "QUIX_GROUP": f"quix-{uuid.uuid4().hex[:6]}",
               "QUIX_TOPIC": s.topic_reads, "QUIX_REDIS_URL": s.redis_url, "QUIX_STATE_DIR": state_dir}
        with open(log_dir / "bench-quix.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.quix_app"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            valid_rate = poll_rate(proc, lambda: int(client.get("quix:done") or 0), valid, 900,
                                   "quix app")
        finally:
            stop_process(proc)
    # Quix's sink counts valid reads; scale to messages so both sides count the same unit
    rate = valid_rate * len(messages) / valid
    return {"quixstreams_reads_per_s": rate, "quixstreams_messages": len(messages),
            "quixstreams_version": quixstreams.__version__}
