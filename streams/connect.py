"""Kafka and Redis clients built from the settings, security included, so no caller can forget it.

Every client platestream opens (aiokafka in the worker, kafka-python for producing, admin and the audit
copy, faust's own connection, redis-py sync and async) goes through here: SASL (PLAIN, SCRAM-SHA-256/512)
and TLS for Kafka, TLS and ACL users (``rediss://user:password@host``) and Redis Cluster for Redis.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from streams.settings import Settings


def _ssl_context(s: Settings) -> ssl.SSLContext | None:
    if "SSL" not in s.kafka_security_protocol:
        return None
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_cafile or None)
    if s.kafka_ssl_certfile:
        ctx.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile or None)
    return ctx


def kafka(s: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's producer, consumer and admin client, and for aiokafka's
    consumer and producer (both libraries use the same names)."""
    kw: dict[str, Any] = {"bootstrap_servers": s.kafka_bootstrap, "security_protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                  sasl_plain_password=s.kafka_sasl_password)
    if "SSL" in s.kafka_security_protocol:
        kw["ssl_context"] = _ssl_context(s)
    return kw


def faust_credentials(s: Settings) -> Any:
    """``broker_credentials`` for the faust app (None on PLAINTEXT)."""
    import faust
    from faust.types.auth import SASLMechanism

    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    if proto == "SSL":
        return faust.SSLCredentials(_ssl_context(s))
    return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                 ssl_context=_ssl_context(s), mechanism=SASLMechanism(s.kafka_sasl_mechanism))


def _redis_tls(s: Settings) -> dict[str, Any]:
    if not s.redis_url.startswith("rediss://"):
        return {}
    return {"ssl_ca_certs": s.redis_ca_file or None, "ssl_certfile": s.redis_cert_file or None,
            "ssl_keyfile": s.redis_key_file or None}


def redis_client(s: Settings, **kw: Any) -> redis.Redis:
    """A redis-py client; a ``RedisCluster`` (same command API) when ``PLATESTREAM_REDIS_CLUSTER=1``."""
    if s.redis_cluster:
        return cast(redis.Redis, RedisCluster.from_url(s.redis_url, **_redis_tls(s), **kw))
    return redis.Redis.from_url(s.redis_url, **_redis_tls(s), **kw)


def redis_async(s: Settings, **kw: Any) -> aioredis.Redis:
    if s.redis_cluster:
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(s.redis_url, **_redis_tls(s), **kw))
    return aioredis.from_url(s.redis_url, **_redis_tls(s), **kw)
