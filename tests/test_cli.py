"""The CLI end to end (its own process, real stack): governed trail with table/JSONL/CSV export, refusals."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
import yaml

from streams.audit import HEAD_KEY, LOG_KEY
from streams.settings import Settings
from tests.conftest import settings_env
from tests.governance import TOKENS, policy_doc, with_tokens
from tests.support import recent_ms, store_reads

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run(settings: Settings, tmp_path: Path, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "policy.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    env = settings_env(settings, PLATESTREAM_POLICY=str(path), PLATESTREAM_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_trail_exports_and_refusals(settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    reads = [{"read_id": f"r{i}", "camera_id": "cam-1", "agency": "hartford-pd", "plate": "CLI-123",
              "region": "US-CT", "ts": recent_ms() + i * 3_600_000, "lat": 41.7, "lon": -72.7,
              "confidence": 0.9} for i in range(3)]
    store_reads(settings, client, reads)
    q = ["trail", "cli123", "--region", "US-CT", "--purpose", "criminal_investigation", "--case", "HPD-1"]

    table = run(settings, tmp_path, *q, token=TOKENS["alice"])
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("cam-1") == 3 and "audit record #1" in table.stderr
    jsonl = run(settings, tmp_path, *q, "--format", "jsonl", token=TOKENS["alice"])
    assert [orjson.loads(line)["read_id"] for line in jsonl.stdout.splitlines()] == ["r0", "r1", "r2"]
    rows = list(csv.DictReader(io.StringIO(run(settings, tmp_path, *q, "--format", "csv",
                                               token=TOKENS["alice"]).stdout)))
    assert [(r["read_id"], r["plate"], r["agency"]) for r in rows] == [(f"r{i}", "CLI123", "hartford-pd")
                                                                       for i in range(3)]

    search = run(settings, tmp_path, "search", "C?I1*", "--purpose", "criminal_investigation", "--case", "HPD-1",
                 "--format", "csv", token=TOKENS["alice"])
    assert search.returncode == 0, search.stderr
    assert [(r["read_id"], r["plate"]) for r in csv.DictReader(io.StringIO(search.stdout))] == [
        (f"r{i}", "CLI123") for i in range(3)]
    assert "3 sightings of 1 plates" in search.stderr

    no_case = run(settings, tmp_path, *q[:-2], token=TOKENS["alice"])
    assert no_case.returncode == 2 and "case_required" in no_case.stderr and no_case.stdout == ""
    fred = run(settings, tmp_path, "trail", "CLI123", "--region", "US-CT", "--purpose", "immigration_enforcement",
               "--case", "X", "--format", "jsonl", token=TOKENS["fred"])
    assert fred.returncode == 0 and fred.stdout == "" and "hartford-pd.never_for_purposes" in fred.stderr
    verify = run(settings, tmp_path, "audit", "verify")
    # four of alice's (3 trails, 1 search), her refused one without a case, and fred's
    assert verify.returncode == 0 and "OK, 6 verified records; 6 checked against their copies" in verify.stdout, (
        verify.stdout)
    report = run(settings, tmp_path, "audit", "report", "--agency", "hartford-pd", token=TOKENS["audrey"])
    assert report.returncode == 0, report.stderr
    assert orjson.loads(report.stdout)["by_user"] == {"alice": 5}  # fred's query is ICE's, not Hartford's
    denied = run(settings, tmp_path, "audit", "report", "--agency", "westport-pd", token=TOKENS["audrey"])
    assert denied.returncode == 2 and "forbidden_role" in denied.stderr
    # the last two records (fred's, the auditor's report) dropped and the head moved back to alice's last: only
    # the topic's copies show it
    client.ltrim(LOG_KEY, 0, 4)
    client.hset(HEAD_KEY, mapping={"seq": 5, "hash": orjson.loads(client.lindex(LOG_KEY, 4))["hash"]})
    alone = run(settings, tmp_path, "audit", "verify", "--redis-only")
    assert alone.returncode == 0 and "not checked against the audit topic" in alone.stdout
    tampered = run(settings, tmp_path, "audit", "verify")
    assert tampered.returncode == 1 and "BROKEN" in tampered.stdout
    assert "record 6 is in the audit topic but not in Redis" in tampered.stdout


def test_retention_sweep_also_lowers_kafkas_retention(settings: Settings, tmp_path: Path) -> None:
    """The command does what a worker's sweep does: Redis, then the data topics' retention.ms (the strictest
    agency's, here one day); topics no worker has made yet are neither waited for nor created."""
    from kafka.admin import KafkaAdminClient

    from streams.topics import ensure_topics, retention_configs, topic_names

    doc = with_tokens(policy_doc())
    doc["agencies"][0]["retention"] = {"non_hit_days": 1, "hit_days": 365}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(doc))
    data = [settings.topic_reads, settings.topic_deduped, settings.topic_dlq]
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        before = run(settings, tmp_path, "retention", "sweep")
        assert before.returncode == 0, before.stderr
        assert "retention already within the policy's" in before.stdout
        assert not set(topic_names(settings)) & set(admin.list_topics())

        ensure_topics(settings)
        retention_configs(admin, data)  # (the brokers describe them)
        swept = run(settings, tmp_path, "retention", "sweep")
        assert swept.returncode == 0, swept.stderr
        assert "removed 0 sightings" in swept.stdout and "lowered to the policy's" in swept.stdout
        assert {t: c["retention.ms"]["value"] for t, c in retention_configs(admin, data).items()} == dict.fromkeys(
            data, "86400000")
    finally:
        admin.close()


@pytest.mark.parametrize("limit", ["0", "-3", "1.5", "x"])
def test_a_limit_below_one_is_refused_by_the_parser(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import build_parser

    for cmd in (["trail", "ABC123", "--region", "US-CT"], ["search", "ABC*"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*cmd, "--purpose", "p", "--case", "c", "--limit", limit])
        assert "at least 1" in capsys.readouterr().err
    assert build_parser().parse_args(["trail", "A", "--region", "US-CT", "--limit", "7"]).limit == 7
