"""The write-path comparison: a WATCH/MULTI/EXEC transaction stores exactly what the batch script stores and is
fenced the same way, on the real Redis; and the report's ratios."""

from __future__ import annotations

import redis

from benchmarks.writes import Transactions, batches, report
from streams.settings import Settings
from streams.store import apply_batch_sync
from tests.support import dump_redis


def _transactions(s: Settings) -> Transactions:
    pool = redis.Redis.from_url(s.redis_url).connection_pool.connection_kwargs
    return Transactions(pool["host"], pool["port"], pool["db"])


def test_a_transaction_stores_what_the_script_stores(settings: Settings) -> None:
    ck_key, work = batches(3000, batch=1000, vehicles=200)
    client = redis.Redis.from_url(settings.redis_url)
    expected: int | None = None
    for commands, nxt in work:
        assert apply_batch_sync(client, ck_key, expected, commands)
        expected = nxt
    by_script = dump_redis(client)
    client.flushdb()
    tx = _transactions(settings)
    expected = None
    for commands, nxt in work:
        assert tx.apply(ck_key, expected, commands)
        expected = nxt
    tx.close()
    assert len(by_script) > 100  # trails, area cells, the checkpoint, sources, the plate directory
    assert dump_redis(client) == by_script


def test_a_transaction_writes_nothing_when_the_checkpoint_is_not_where_it_started(settings: Settings) -> None:
    ck_key, work = batches(2000, batch=1000, vehicles=200)
    client = redis.Redis.from_url(settings.redis_url)
    tx = _transactions(settings)
    assert tx.apply(ck_key, None, work[0][0])
    before = dump_redis(client)
    # a zombie that still believes the partition starts from scratch
    assert not tx.apply(ck_key, None, work[1][0])
    assert dump_redis(client) == before
    # the checkpoint moves (another owner's batch) between the check and EXEC
    assert not tx.apply(ck_key, work[0][1], work[1][0],
                        after_check=lambda: client.hset(ck_key, "offset", "999999"))
    after = dump_redis(client)
    assert after.pop(ck_key.encode()) != before.pop(ck_key.encode())  # only the other owner's write
    assert after == before
    # the connection is usable after both refusals
    client.hset(ck_key, "offset", str(work[0][1]))
    assert tx.apply(ck_key, work[0][1], work[1][0])
    tx.close()


def test_each_mode_is_judged_against_the_script() -> None:
    def run(cpu: float, cmd: float) -> dict[str, float]:
        return {"server_cpu_s": cpu, "batch_command_s": cmd, "client_packing_s": 0.1, "wall_s": 1.0}

    r = {"date": "d", "command": "c", "seconds": 1.0, "machine": {}, "messages": 1_000_000, "batches": 50,
         "commands": 10, "arguments": 20,
         "runs": {"script": [run(3.0, 2.0), run(5.0, 2.2)], "multi": [run(2.0, 1.0), run(3.0, 1.4)]}}
    lines = report(r)
    assert "| script | 4.00 | 1.00 | 2.10 | 1.00 | 0.10 | 3.00 / 5.00 |" in lines
    assert "| multi | 2.50 | 0.62 | 1.20 | 0.57 | 0.10 | 2.00 / 3.00 |" in lines
