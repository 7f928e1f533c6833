"""A worker's ``/metrics`` in Prometheus's text format, beside the JSON form the benchmarks and tests read.

The worker keeps plain counters (``BatchRunner.metrics``) and computes a few gauges per request; this module
names them for Prometheus (``platestream_`` prefix, seconds rather than microseconds, ``_total`` on counters,
the step or stage as a label) and adds prometheus_client's process metrics (CPU, memory, open files).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "platestream_"
# what Prometheus sends (the OpenMetrics and the classic text format); anything else gets the JSON form
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# values of the JSON form that are levels, not running counts (everything else of ``BatchRunner.metrics`` counts)
GAUGES: dict[str, tuple[str, str]] = {
    "uptime_s": ("uptime_seconds", "seconds since the worker started"),
    "dedup_open_sessions": ("dedup_open_sessions", "open dedup sessions held in memory (bounded by window + "
                            "lateness)"),
    "dedup_pool_slots": ("dedup_pool_slots", "dedup session slots in use, evicted ones not yet compacted included"),
    "dedup_state_bytes": ("dedup_state_bytes", "bytes of the dedup state of every partition the worker processes"),
    "redis_compact_trails": ("redis_compact_trails", "1 if Redis keeps trails as listpacks (README: Redis "
                             "settings), 0 if not"),
    "rss_bytes": ("rss_bytes", "resident memory of the worker process"),
    "lag_records": ("lag_records", "records of the worker's partitions after its position, as of their last fetch "
                    "(grows while Redis or the brokers hold it back)"),
    "latency_samples": ("latency_samples", "capture-to-Redis latencies the latency quantiles are taken over"),
    "retention_swept_at_s": ("retention_last_pass_timestamp_seconds", "when the group's last complete retention "
                             "pass ran (unix time, whichever worker held the lease): alert when it falls behind"),
    "healthy": ("healthy", "1 while /health answers 200, 0 while it answers 503"),
    "sinks_failing_for_s": ("sinks_failing_seconds", "how long the current run of sink errors has lasted (0: none)"),
    "policy_file_invalid": ("policy_file_invalid", "1 while the policy file cannot be read or does not load, and the "
                            "previous policy stays in force; 0 while the file is the policy in force"),
}
LATENCY = {"latency_ms_p50": "0.5", "latency_ms_p99": "0.99", "latency_ms_p999": "0.999"}
# one counter family per key prefix, the rest of the key as a label: (name, label, divisor: microseconds to seconds)
LABELLED = {"stage_us.": ("stage_seconds", "stage", 1e6), "fault_point.": ("fault_points", "step", 1.0)}
SECONDS_US = {"batch_seconds_total_us": "batch_seconds"}


def wants_prometheus(accept: str, query_format: str | None) -> bool:
    """Whether a request asks for the text format: ``?format=prometheus``, or an Accept header naming it
    (Prometheus's scraper sends ``application/openmetrics-text`` and ``text/plain``)."""
    if query_format is not None:
        return query_format == "prometheus"
    return "text/plain" in accept or "openmetrics-text" in accept


def exposition(values: Mapping[str, Any], process: bool = True) -> bytes:
    """``values`` (the JSON form of ``/metrics``) in Prometheus's text format; with ``process``, also this
    process's ``process_*`` metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Values(values))
    if process:
        ProcessCollector(registry=registry)
    return generate_latest(registry)


class _Values(Collector):
    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        labelled: dict[str, CounterMetricFamily] = {}
        latency = GaugeMetricFamily(PREFIX + "latency_seconds", "capture time to sighting in Redis, quantiles "
                                    "over the recent window", labels=["quantile"])
        for key, value in sorted(self.values.items()):
            if key == "partitions":
                yield GaugeMetricFamily(PREFIX + "partitions", "input partitions the worker processes",
                                        value=len(value))
            elif key in LATENCY:
                latency.add_metric([LATENCY[key]], float(value) / 1000)
            elif key in GAUGES:
                name, doc = GAUGES[key]
                yield GaugeMetricFamily(PREFIX + name, doc, value=float(value))
            elif key in SECONDS_US:
                yield CounterMetricFamily(PREFIX + SECONDS_US[key], f"{key} / 1e6", value=float(value) / 1e6)
            elif prefix := next((p for p in LABELLED if key.startswith(p)), None):
                name, label, scale = LABELLED[prefix]
                if name not in labelled:
                    labelled[name] = CounterMetricFamily(PREFIX + name, f"{prefix}* by {label}", labels=[label])
                labelled[name].add_metric([key[len(prefix):]], float(value) / scale)
            elif isinstance(value, (int, float)):
                yield CounterMetricFamily(PREFIX + _name(key), key, value=float(value))
        yield from labelled.values()
        if latency.samples:
            yield latency


def _name(key: str) -> str:
    """A metric name from a JSON key: Prometheus names are [a-zA-Z_:][a-zA-Z0-9_:]*."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)
