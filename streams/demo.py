"""``make demo``: start the local stack, simulate a city's traffic, process it, print a trail and the throughput.

Each run uses its own topics and Redis database 15, so it never mixes with other data on the stack; it first
deletes the topics earlier demo runs left (their Redis data is gone with the database's flush anyway).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from streams import connect, stack
from streams.access import access
from streams.cli import print_trail
from streams.pipeline import META_OFFSET
from streams.policy import Policy
from streams.producer import send_all
from streams.query import governed_trail
from streams.settings import Settings
from streams.simulate import generate
from streams.store import checkpoint_key, read_trail
from streams.topics import delete_run_topics, end_offsets, ensure_topics

DEMO_POLICY = Path(__file__).resolve().parents[1] / "deploy" / "policy.example.yaml"


def run_demo(state_dir: Path, vehicles: int = 6000) -> int:
    t0 = time.monotonic()
    print("1/5 starting the local stack (Kafka KRaft + Redis) ...", flush=True)
    info = stack.up(state_dir)
    print(f"    kafka {info.kafka_bootstrap}, redis {info.redis_url}  ({time.monotonic() - t0:.1f}s)")
    old = delete_run_topics(info.kafka_bootstrap, "demo")
    if old:
        print(f"    deleted {len(old)} topics earlier demo runs left")
    tag = uuid.uuid4().hex[:6]
    s = Settings.from_env(
        env={k: v for k, v in os.environ.items() if k == "PLATESTREAM_HASH_KEY"},
        kafka_bootstrap=info.kafka_bootstrap, redis_url=info.redis_url.rsplit("/", 1)[0] + "/15",
        state_dir=state_dir, topic_reads=f"demo.{tag}.reads", topic_deduped=f"demo.{tag}.deduped",
        topic_dlq=f"demo.{tag}.dlq", topic_alerts=f"demo.{tag}.alerts", topic_audit=f"demo.{tag}.audit",
        group=f"demo-{tag}",
    )
    client = connect.redis_client(s)
    client.flushdb()

    print(f"2/5 simulating a day of traffic of {vehicles:,} vehicles ...", flush=True)
    traffic = generate(seed=2026, vehicles=vehicles, hours=24)
    print(f"    {traffic.valid_reads:,} reads of {len(traffic.truth):,} passes at "
          f"{len({t.camera_id for t in traffic.truth})} cameras, {traffic.malformed:,} malformed messages")
    ensure_topics(s)
    send_all(s, s.topic_reads, traffic.messages, progress=True, total=len(traffic.messages))

    print("3/5 running the worker (faust app + Numba kernels) on the pre-filled topic ...", flush=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PLATESTREAM_")},
           **s.to_env(PLATESTREAM_WEB_PORT=str(stack.free_port()), PLATESTREAM_POLICY=str(DEMO_POLICY))}
    log_path = state_dir / "demo-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    total = len(traffic.messages)
    first = last = None
    done = 0
    try:
        while done < total:
            if worker.poll() is not None:
                print(f"worker exited early; see {log_path}", file=sys.stderr)
                return 1
            offs = [client.hget(checkpoint_key(s.group, s.topic_reads, p), META_OFFSET) for p in range(s.partitions)]
            now_done = sum(int(o) for o in offs if o is not None)
            now = time.monotonic()
            if now_done and first is None:
                first = (now, now_done)
            if now_done != done:
                last = now
                print(f"\r    processed {now_done:,}/{total:,}", end="", flush=True)
            done = now_done
            time.sleep(0.02)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert first is not None and last is not None
    span = max(last - first[0], 1e-3)
    rate = (total - first[1]) / span
    print(f"\n    throughput: {rate:,.0f} reads/s ({total - first[1]:,} messages in {span:.2f}s, "
          "first batch to last; one worker, broker and Redis on this machine)")

    print("4/5 governed trail lookups (policy: deploy/policy.example.yaml) ...", flush=True)
    counts = collections.Counter((t.plate, t.region) for t in traffic.truth if t.agency == "hartford-pd")
    plate, region = counts.most_common(1)[0][0]
    policy = Policy.load(DEMO_POLICY)
    with access(s) as acc:  # each record also published to the audit topic, acknowledged before the answer
        for token, purpose, case in (("demo-alice", "criminal_investigation", "HPD-2026-0415"),
                                     ("demo-fred", "immigration_enforcement", "ICE-77")):
            ctx = policy.context(token, purpose, case)
            print(f"\n    PLATESTREAM_TOKEN={token} platestream trail {plate} --region {region} "
                  f"--purpose {purpose} --case {case}")
            print(f"    ({ctx.user.id} of {ctx.agency.name})")
            result = governed_trail(client, s, policy, ctx, acc.audit, plate, region)
            print_trail(result.rows[:8])
            if len(result.rows) > 8:
                print(f"    ... {len(result.rows) - 8} more sightings")
            withheld = collections.Counter(result.refused.values())
            print(f"    audit record #{result.audit_seq}; withheld by: "
                  + ", ".join(f"{rule}" for rule in sorted(withheld)))
        v = acc.verify_audit()
    print(f"\n    platestream audit verify -> chain {'OK' if v.ok else 'BROKEN'}, {v.records} records, "
          f"{v.witnessed} checked against their copies in {s.topic_audit}")

    print("5/5 accounting ...", flush=True)
    stored = reads = 0
    for key in client.scan_iter(match="ps:t:*", count=5000):
        for sighting in read_trail(client, key):
            stored += 1
            reads += sighting.reads
    dlq = sum(end_offsets(s, s.topic_dlq).values())
    verdict = "OK" if reads + dlq == total and stored == len(traffic.truth) else "MISMATCH"
    print(f"    produced {total:,} = stored sightings {stored:,} + merged reads {reads - stored:,} "
          f"+ dead-lettered {dlq:,}   [{verdict}; true passes {len(traffic.truth):,}]")
    print(f"done in {time.monotonic() - t0:.0f}s. Stop the stack with: platestream stack down")
    return 0
