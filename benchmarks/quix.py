"""Run the Quix Streams baseline (``benchmarks.quix_app``) on the same broker and data; reads/s."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import quixstreams
import redis

from benchmarks.e2e import ROOT, isolated_settings, produce, stop_process
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
        first: tuple[float, int] | None = None
        done = 0
        last_t = time.monotonic()
        deadline = time.monotonic() + 900
        try:
            while done < valid and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"quix app exited; see {log_dir / 'bench-quix.log'}")
                now_done = int(client.get("quix:done") or 0)  # type: ignore[arg-type]
                now = time.monotonic()
                if now_done and first is None:
                    first = (now, now_done)
                if now_done != done:
                    last_t = now
                done = now_done
                time.sleep(0.05)
        finally:
            stop_process(proc)
    assert first is not None and done >= valid, f"quix baseline processed {done} of {valid}"
    # Quix's sink counts valid reads; scale to messages so both sides count the same unit
    rate = (valid - first[1]) / max(last_t - first[0], 1e-3) * len(messages) / valid
    return {"quixstreams_reads_per_s": rate, "quixstreams_messages": len(messages),
            "quixstreams_version": quixstreams.__version__}
