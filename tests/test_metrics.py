"""The worker's metrics in Prometheus's text format, read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import exposition, wants_prometheus

JSON_FORM = {
    "consumed": 1200, "valid": 1190, "dead_lettered": 10, "batches": 3, "sink_errors": 2,
    "batch_seconds_total_us": 2_500_000, "stage_us.process": 1_500_000, "stage_us.wait.sink.redis": 250_000,
    "fault_point.sink.redis": 1, "redis_compact_trails": 1, "uptime_s": 12.5, "partitions": [0, 2, 3],
    "dedup_open_sessions": 40, "dedup_pool_slots": 48, "dedup_state_bytes": 9000, "rss_bytes": 123456789,
    "directory_seal_cache_hits": 7, "latency_ms_p50": 51.0, "latency_ms_p99": 71.25, "latency_ms_p999": 90.0,
    "latency_samples": 1000, "healthy": 0, "sinks_failing_for_s": 61.5,
}


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    """(sample name, labels) -> (family type, value)."""
    return {(s.name, tuple(sorted(s.labels.items()))): (f.type, s.value)
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_counters_gauges_seconds_and_labels_as_prometheus_reads_them() -> None:
    got = samples(exposition(JSON_FORM, process=False))
    assert got == {
        ("platestream_consumed_total", ()): ("counter", 1200.0),
        ("platestream_valid_total", ()): ("counter", 1190.0),
        ("platestream_dead_lettered_total", ()): ("counter", 10.0),
        ("platestream_batches_total", ()): ("counter", 3.0),
        ("platestream_sink_errors_total", ()): ("counter", 2.0),
        ("platestream_directory_seal_cache_hits_total", ()): ("counter", 7.0),
        ("platestream_batch_seconds_total", ()): ("counter", 2.5),
        ("platestream_stage_seconds_total", (("stage", "process"),)): ("counter", 1.5),
        ("platestream_stage_seconds_total", (("stage", "wait.sink.redis"),)): ("counter", 0.25),
        ("platestream_fault_points_total", (("step", "sink.redis"),)): ("counter", 1.0),
        ("platestream_redis_compact_trails", ()): ("gauge", 1.0),
        ("platestream_uptime_seconds", ()): ("gauge", 12.5),
        ("platestream_partitions", ()): ("gauge", 3.0),
        ("platestream_dedup_open_sessions", ()): ("gauge", 40.0),
        ("platestream_dedup_pool_slots", ()): ("gauge", 48.0),
        ("platestream_dedup_state_bytes", ()): ("gauge", 9000.0),
        ("platestream_rss_bytes", ()): ("gauge", 123456789.0),
        ("platestream_latency_seconds", (("quantile", "0.5"),)): ("gauge", 0.051),
        ("platestream_latency_seconds", (("quantile", "0.99"),)): ("gauge", 0.07125),
        ("platestream_latency_seconds", (("quantile", "0.999"),)): ("gauge", 0.09),
        ("platestream_latency_samples", ()): ("gauge", 1000.0),
        ("platestream_healthy", ()): ("gauge", 0.0),
        ("platestream_sinks_failing_seconds", ()): ("gauge", 61.5),
    }


def test_a_new_counter_is_exposed_under_its_key_and_the_process_metrics_come_along() -> None:
    got = samples(exposition({"some.new-count": 5}))
    assert got[("platestream_some_new_count_total", ())] == ("counter", 5.0)
    assert got[("process_resident_memory_bytes", ())][1] > 0


def test_prometheus_gets_the_text_format_and_everyone_else_json() -> None:
    scraper = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    assert wants_prometheus(scraper, None) and wants_prometheus("text/plain", None)
    assert not wants_prometheus("", None) and not wants_prometheus("*/*", None)
    assert not wants_prometheus("text/html,application/xhtml+xml,*/*;q=0.8", None)
    assert wants_prometheus("", "prometheus") and not wants_prometheus(scraper, "json")
