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
