"""Fixtures: one real local stack (Kafka KRaft + redis-server) per test session, on free loopback ports.

Each integration test gets its own topics, consumer group, hash key and a flushed Redis database, so
tests never see each other's data. ``PLATESTREAM_TEST_REUSE_STACK=<state dir>`` points the suite at an
already running ``platestream stack up`` instead of starting one (faster local iteration).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from streams import stack
from streams.settings import Settings

# Property tests judge results, not time: on a 2-core runner that also carries the broker, one slow example (a
# first call that compiles a Numba kernel, a collection, the broker's burst) must not fail the suite as Hypothesis's
# 200 ms deadline would. Tests that set their own settings keep them.
hypothesis_settings.register_profile("platestream", deadline=None)
hypothesis_settings.load_profile("platestream")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo]:
    reuse = os.environ.get("PLATESTREAM_TEST_REUSE_STACK")
    if reuse:
        info = stack.read_info(Path(reuse).resolve())
        assert info is not None, f"no stack.json in {reuse}"
        yield info
        return
    state = tmp_path_factory.mktemp("stack")
    info = stack.up(state)
    try:
        yield info
    finally:
        stack.down(state)


@pytest.fixture
def settings(local_stack: stack.StackInfo, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated for one test: unique topics/group/key and an empty Redis database."""
    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(
        env={},
        kafka_bootstrap=local_stack.kafka_bootstrap,
        redis_url=local_stack.redis_url.rsplit("/", 1)[0] + "/1",
        state_dir=tmp_path,
        topic_reads=f"t{tag}.reads",
        topic_deduped=f"t{tag}.deduped",
        topic_dlq=f"t{tag}.dlq",
        topic_alerts=f"t{tag}.alerts",
        topic_audit=f"t{tag}.audit",
        group=f"g{tag}",
        hash_key=f"test-key-{tag}-0123456789".encode(),
    )
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    client.close()
    yield s


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Redis of one test's own (its limits are changed), at the local stack's settings: URL and pid."""
    port = stack.free_port()
    pid = stack.start_redis(tmp_path / "own-redis", port)
    try:
        yield f"redis://127.0.0.1:{port}/0", pid
    finally:
        stack.stop_pid(pid)


def settings_env(s: Settings, **extra: str) -> dict[str, str]:
    """Environment for a ``platestream`` subprocess using these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATESTREAM_")}
    env.update(s.to_env(**extra))
    return env


def wait_for(pred: object, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


PYTHON = sys.executable
