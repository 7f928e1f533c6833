"""Baseline: the naive faust app - a per-event agent, per-event json.loads, per-event Redis calls.

Run by the benchmark as ``faust -A benchmarks.naive_faust worker``; configured by NAIVE_* variables.
It validates each read with the same rules and stores it on a pseudonymous trail (no dedup, no
checkpoint): strictly less work than platestream does per read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import faust
import redis.asyncio as aioredis

from streams.records import Invalid, normalize_plate, validate_read

app = faust.App(os.environ.get("NAIVE_APP_ID", "naive"), broker=f"kafka://{os.environ.get('NAIVE_BOOTSTRAP', '')}",
                store="memory://", web_port=int(os.environ.get("NAIVE_WEB_PORT", "6067")), autodiscover=False,
                broker_session_timeout=10.0, topic_disable_leader=True,
                datadir=os.environ.get("NAIVE_DATADIR") or tempfile.mkdtemp(prefix="naive-faust-"))
topic = app.topic(os.environ.get("NAIVE_TOPIC", "naive"), value_serializer="raw", key_serializer="raw")
r = aioredis.from_url(os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/13"))
KEY = os.environ.get("NAIVE_HASH_KEY", "naive-baseline-key").encode()


@app.agent(topic)
async def process(stream: faust.StreamT) -> None:
    async for value in stream:
        try:
            doc = json.loads(value)
            validate_read(doc)
        except (ValueError, Invalid):
            await r.incr("naive:dead")
            continue
        plate = normalize_plate(doc["plate"])
        vid = hashlib.blake2b(f"{doc['region']}|{plate}".encode(), key=KEY, digest_size=12).hexdigest()
        member = json.dumps([doc["read_id"], doc["camera_id"], doc["agency"], doc["lat"], doc["lon"]])
        await r.zadd(f"naive:t:{{{vid}}}", {member: doc["ts"]})
        await r.incr("naive:done")
