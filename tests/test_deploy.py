"""The deploy files parse, and what they configure is what platestream accepts (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.policy import Policy
from streams.settings import ENV_VARS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_compose_services_and_settings() -> None:
    doc = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    assert set(doc["services"]) == {"kafka", "redis", "worker", "api"}
    env = doc["services"]["worker"]["environment"]
    assert set(env) <= set(ENV_VARS), set(env) - set(ENV_VARS)
    assert doc["services"]["api"]["environment"] == env
    assert "--appendfsync" in doc["services"]["redis"]["command"]
    assert (DEPLOY / doc["services"]["worker"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_kubernetes_manifests() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "platestream.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "platestream-worker"), ("Deployment", "platestream-api"), ("Secret", "platestream-secrets"),
            ("ConfigMap", "platestream-config"), ("Service", "platestream-api")} <= kinds
    by_name = {d["metadata"]["name"]: d for d in docs}
    settings = {**by_name["platestream-config"]["data"], **by_name["platestream-secrets"]["stringData"]}
    assert set(settings) <= set(ENV_VARS)
    assert int(by_name["platestream-worker"]["spec"]["replicas"]) <= int(settings["PLATESTREAM_PARTITIONS"])
    Policy.from_dict(yaml.safe_load(by_name["platestream-policy"]["data"]["policy.yaml"]))


def test_kubernetes_migration_job_runs_the_migrate_command_with_the_workers_settings() -> None:
    from streams.cli import build_parser

    [job] = yaml.safe_load_all((DEPLOY / "k8s" / "migrate-job.yaml").read_text())
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "platestream.yaml").read_text())}
    worker = docs["platestream-worker"]["spec"]["template"]["spec"]["containers"][0]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert job["kind"] == "Job" and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container["envFrom"] == worker["envFrom"] and container["image"] == worker["image"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action) == ("store", "migrate") and args.settle > 0


def test_kubernetes_audit_verify_runs_nightly_against_the_topic_with_the_workers_settings() -> None:
    from streams.cli import build_parser

    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "platestream.yaml").read_text())}
    cron = docs["platestream-audit-verify"]
    worker = docs["platestream-worker"]["spec"]["template"]["spec"]["containers"][0]
    job = cron["spec"]["jobTemplate"]["spec"]
    [container] = job["template"]["spec"]["containers"]
    assert cron["kind"] == "CronJob" and len(cron["spec"]["schedule"].split()) == 5 and job["backoffLimit"] == 0
    assert container["envFrom"] == worker["envFrom"] and container["image"] == worker["image"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.action, args.redis_only) == ("audit", "verify", False)


def test_the_alerting_rules_parse_and_name_only_metrics_a_worker_exports() -> None:
    """Every expression parses as PromQL, and every ``platestream_*`` metric it reads is one the worker's
    ``/metrics`` can export: the keys its code counts or sets, through ``metrics.exposition`` (a renamed counter
    would leave an alert that never fires). The integration tests check them against a real worker's scrape."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from streams.metrics import LATENCY, exposition
    from tests.support import alert_metric_names

    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) >= 8
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], r["alert"]
        assert r["annotations"]["description"] and r.get("for", "1m")[-1] in "smh", r["alert"]
    code = (Path(__file__).resolve().parents[1] / "streams" / "worker.py").read_text()
    # what it counts (``metrics["..."]``), what /metrics sets (``m["..."]``), and the latency percentiles
    keys = {*re.findall(r'metrics\["([a-z_.]+)"\]', code), *re.findall(r'\bm\["([a-z_.]+)"\]', code), *LATENCY}
    values = {k: [0] if k == "partitions" else 1 for k in keys}
    exported = {s.name for f in text_string_to_metric_families(exposition(values, False).decode()) for s in f.samples}
    wanted = alert_metric_names()
    assert {"platestream_corrupt_batches_total", "platestream_healthy",
            "platestream_retention_last_pass_timestamp_seconds"} <= wanted
    assert wanted <= exported, wanted - exported
