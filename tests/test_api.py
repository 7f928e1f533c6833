"""The HTTP API against a running ``platestream serve`` process and the real stack."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from streams.audit import AuditLog
from streams.settings import Settings
from streams.stack import free_port
from tests.conftest import settings_env, wait_for
from tests.governance import TOKENS, policy_doc, with_tokens
from tests.support import read_topic, recent_ms, store_reads

pytestmark = pytest.mark.integration
BASE = recent_ms()


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    port = free_port()
    # (the bucket set explicitly: a server left at the default would take the one Redis records instead)
    env = settings_env(settings, PLATESTREAM_POLICY=str(path), PLATESTREAM_AUDIT_KEY="api-test-audit-key-0123",
                       PLATESTREAM_CELL_BUCKET_S=str(settings.cell_bucket_ms // 1000))
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(url + "/health", timeout=1).status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            return False

    wait_for(up, 60, "the API to start")
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def fetch(url: str, path: str, body: dict[str, Any] | None = None,
          token: str | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def call(url: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    status, _, text = fetch(url, path, body, token)
    return status, json.loads(text)


def test_governed_http_api(server: str, settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    reads = [{"read_id": f"{a}-{i}", "camera_id": f"cam-{a}", "agency": a, "plate": "API123", "region": "US-CT",
              "ts": BASE + (j * 2 + i) * 60_000, "lat": 41.7, "lon": -72.7, "confidence": 0.9}
             for j, a in enumerate(["hartford-pd", "westport-pd"]) for i in range(2)]
    store_reads(settings, client, reads)
    q = {"plate": "API123", "region": "US-CT", "purpose": "criminal_investigation", "case": "HPD-9"}

    assert call(server, "/openapi.json")[1]["paths"]["/v1/trail"]
    # who and why are required; errors are JSON with stable codes
    assert call(server, "/v1/trail", q)[1]["error"]["code"] == "unauthenticated"
    status, err = call(server, "/v1/trail", {**q, "case": ""}, TOKENS["alice"])
    assert (status, err["error"]["code"]) == (400, "case_required")
    assert call(server, "/v1/trail", {**q, "purpose": "curiosity"}, TOKENS["alice"])[1]["error"]["code"] == \
        "unknown_purpose"
    assert call(server, "/v1/trail", [1, 2], TOKENS["alice"])[1]["error"]["code"] == "invalid_request"  # type: ignore[arg-type]

    # alice sees hartford's sightings; westport's are withheld until westport approves a request
    status, out = call(server, "/v1/trail", q, TOKENS["alice"])
    assert status == 200 and {s["agency"] for s in out["sightings"]} == {"hartford-pd"}
    assert "westport-pd.no_grant" in out["withheld_by"]
    assert call(server, "/v1/share/request", {"owner": "westport-pd", "purposes": ["criminal_investigation"],
                                              "reason": "burglary"}, TOKENS["hank"])[0] == 200
    status, grant = call(server, "/v1/share/decide", {"requester": "hartford-pd", "approve": True}, TOKENS["wadmin"])
    assert (status, grant["status"]) == (200, "approved")
    out = call(server, "/v1/trail", q, TOKENS["alice"])[1]
    assert {s["agency"] for s in out["sightings"]} == {"hartford-pd", "westport-pd"} and len(out["sightings"]) == 4

    # a federal agency: refused by hartford's rules, even if hartford's admin approves
    call(server, "/v1/share/request", {"owner": "hartford-pd", "purposes": ["criminal_investigation"],
                                       "reason": "task force"}, TOKENS["fadmin"])
    status, err = call(server, "/v1/share/decide", {"requester": "ice-hartford", "approve": True}, TOKENS["hank"])
    assert (status, err["error"]["code"], err["error"]["rule"]) == (403, "sharing_rule", "hartford-pd.never_with_kinds")
    assert call(server, "/v1/trail", q, TOKENS["fred"])[1]["sightings"] == []  # no grant from anyone

    # area search over HTTP: hartford's and (granted) westport's sightings near the point
    status, out = call(server, "/v1/area", {"lat": 41.7, "lon": -72.7, "radius_m": 500, "since": BASE,
                                            "until": BASE + 600_000, "purpose": "criminal_investigation",
                                            "case": "HPD-9"}, TOKENS["alice"])
    assert status == 200 and len(out["sightings"]) == 4
    assert call(server, "/v1/area", {"lat": 41.7, "purpose": "criminal_investigation", "case": "c"},
                TOKENS["alice"])[1]["error"]["code"] == "invalid_query"
    square = [[41.69, -72.71], [41.69, -72.69], [41.71, -72.69], [41.71, -72.71]]
    status, out = call(server, "/v1/area", {"polygon": square, "since": BASE, "until": BASE + 600_000,
                                            "purpose": "criminal_investigation", "case": "HPD-9"}, TOKENS["alice"])
    assert status == 200 and len(out["sightings"]) == 4
    status, err = call(server, "/v1/area", {"polygon": [[41.69, -72.71], [41.7, -72.7]], "since": 0, "until": 1,
                                            "purpose": "criminal_investigation", "case": "HPD-9"}, TOKENS["alice"])
    assert (status, err["error"]["code"]) == (400, "invalid_query") and "3-1000" in err["error"]["message"]
    # Redis holds an area index of another time bucket than this server's: refused as a server problem
    from streams.store import CELL_BUCKET, META_KEY

    recorded = client.hget(META_KEY, CELL_BUCKET)
    client.hset(META_KEY, CELL_BUCKET, settings.cell_bucket_ms // 1000 * 2)
    status, err = call(server, "/v1/area", {"polygon": square, "since": BASE, "until": BASE + 600_000,
                                            "purpose": "criminal_investigation", "case": "HPD-9"}, TOKENS["alice"])
    assert (status, err["error"]["code"]) == (503, "cell_bucket_mismatch")
    assert f"PLATESTREAM_CELL_BUCKET_S={settings.cell_bucket_ms // 1000 * 2}" in err["error"]["message"]
    client.hdel(META_KEY, CELL_BUCKET) if recorded is None else client.hset(META_KEY, CELL_BUCKET, recorded)

    # partial plate search and exports (CSV, JSON lines) over HTTP, with the audit seq in a header
    search = {"pattern": "AP?12*", "purpose": "criminal_investigation", "case": "HPD-9"}
    status, out = call(server, "/v1/plates/search", search, TOKENS["alice"])
    assert status == 200 and [s["read_id"] for s in out["sightings"]] == [r["read_id"] for r in reads]
    assert {s["plate"] for s in out["sightings"]} == {"API123"}
    assert call(server, "/v1/plates/search", {**search, "pattern": "A*"}, TOKENS["alice"])[1]["error"]["code"] == \
        "invalid_query"
    status, headers, text = fetch(server, "/v1/trail", {**q, "format": "csv"}, TOKENS["alice"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/csv")
    assert [r["read_id"] for r in rows] == [r["read_id"] for r in reads] and int(headers["X-Audit-Seq"]) > 0
    status, headers, text = fetch(server, "/v1/plates/search", {**search, "format": "jsonl"}, TOKENS["fred"])
    assert (status, text, headers["Content-Type"].split(";")[0]) == (200, "", "application/x-ndjson")
    assert "hartford-pd.never_with_kinds" in headers["X-Withheld-By"]
    assert call(server, "/v1/trail", {**q, "format": "xml"}, TOKENS["alice"])[1]["error"]["code"] == "invalid_query"
    # a limit below one (a negative one cut from the end) or a since of true (1) is refused, not taken
    for bad in ({"limit": 0}, {"limit": -2}, {"limit": 1.5}, {"since": True}):
        status, err = call(server, "/v1/trail", {**q, **bad}, TOKENS["alice"])
        assert (status, err["error"]["code"]) == (400, "invalid_query"), bad
    assert len(call(server, "/v1/trail", {**q, "limit": 1}, TOKENS["alice"])[1]["sightings"]) == 1

    # everything above is in the audit chain, which the auditor can verify over HTTP
    assert call(server, "/v1/audit/verify", None, TOKENS["alice"])[1]["error"]["code"] == "forbidden_role"
    status, v = call(server, "/v1/audit/verify", None, TOKENS["audrey"])
    assert status == 200 and v["ok"] and v["records"] >= 8
    assert v["checked_against_topic"] == v["records"]  # every record's copy was published (and read back)
    status, rep = call(server, "/v1/audit/report?agency=hartford-pd", None, TOKENS["audrey"])
    assert status == 200 and rep["by_user"]["alice"] >= 3 and rep["agencies_that_received_our_data"] == {}
    assert call(server, "/v1/audit/report?agency=westport-pd", None, TOKENS["audrey"])[0] == 403
    audit = AuditLog(client, b"api-test-audit-key-0123")
    trails = [r for r in audit.records() if r["action"] == "query.trail"]
    # refused ones too: unauthenticated, no case, unknown purpose; then alice twice, fred, alice's CSV export and
    # her query with a limit of one
    assert [(r["user"], r["decision"]) for r in trails] == [
        (None, "refused"), ("alice", "refused"), ("alice", "refused"), ("alice", "partial"), ("alice", "partial"),
        ("fred", "partial"), ("alice", "partial"), ("alice", "partial")]  # fred may see his own agency's (none)
    searches = [r for r in audit.records() if r["action"] == "query.plate_search"]
    assert [(r["user"], r["decision"], r["result_count"]) for r in searches] == [
        ("alice", "partial", 4), ("alice", "refused", 0), ("fred", "partial", 0)]
    # every record reached the audit topic too, sent from the server's event loop (LoopAuditPublisher)
    published = sorted((json.loads(r.value) for r in read_topic(settings, settings.topic_audit)),
                       key=lambda r: r["seq"])
    assert published == list(audit.records()) and len(published) >= 13
    assert "API" not in json.dumps(searches)
    assert "API123" not in json.dumps(trails)  # the audit names the vehicle by its pseudonym only
    # the server's own log (access log at INFO) names paths, never plates or tokens
    log = (tmp_path / "api.log").read_text()
    assert "/v1/plates/search" in log
    assert not [x for x in ["API123", *TOKENS.values()] if x in log]


def test_json_replies_are_orjson_bytes_with_the_json_content_type() -> None:
    """Replies are serialized by orjson (a 1,000-sighting trail in a tenth of the standard library's time):
    UTF-8 as is, integer keys (an audit report's counts) as strings, and the content type aiohttp gave."""
    from streams.api import json_response

    data = {"sightings": [{"plate": "ÅB1", "lat": 41.712345, "ts": 1_764_000_000_000}], "by_hour": {7: 2}}
    reply = json_response(data, status=403)
    assert reply.status == 403
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert reply.body == '{"sightings":[{"plate":"ÅB1","lat":41.712345,"ts":1764000000000}],"by_hour":{"7":2}}'.encode()


def first_health(settings: Settings, tmp_path: Path, name: str, **extra: str) -> tuple[int, dict[str, Any]]:
    """The first answer of ``/health`` from a ``platestream serve`` with these settings and ``extra`` variables."""
    port = free_port()
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--port", str(port)],
                                env=settings_env(settings, **extra), stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
        answers: list[tuple[int, dict[str, Any]]] = []

        def answered() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    answers.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as e:
                answers.append((e.code, json.loads(e.read())))
            except OSError:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                return False
            return True

        try:
            wait_for(answered, 60, f"the {name} server to answer")
        finally:
            proc.terminate()
            proc.wait(30)
    return answers[-1]


def test_health_says_what_keeps_the_server_from_answering(settings: Settings, tmp_path: Path) -> None:
    """Ready (200) only when Redis answers and a policy is loaded: a server whose Redis is gone, or that has no
    policy, is taken out of rotation (503) with the reason, instead of refusing every query it receives."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        gone = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    status, got = first_health(settings, tmp_path, "no-redis", PLATESTREAM_REDIS_URL=gone,
                               PLATESTREAM_POLICY=str(path))
    assert (status, set(got), got["ok"]) == (503, {"ok", "redis"}, False) and "ConnectionError" in got["redis"]
    status, got = first_health(settings, tmp_path, "no-policy", PLATESTREAM_POLICY="")
    assert (status, set(got), got["ok"]) == (503, {"ok", "policy"}, False) and "PLATESTREAM_POLICY" in got["policy"]
    assert first_health(settings, tmp_path, "ready", PLATESTREAM_POLICY=str(path)) == (200, {"ok": True})


def test_the_api_does_not_start_on_a_redis_that_could_evict_its_audit_records(settings: Settings, tmp_path: Path,
                                                                              own_redis: tuple[str, int]) -> None:
    redis.Redis.from_url(own_redis[0]).config_set("maxmemory-policy", "allkeys-lru")
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(with_tokens(policy_doc())))
    run = subprocess.run([sys.executable, "-m", "streams.cli", "serve", "--port", str(free_port())],
                         env=settings_env(settings, PLATESTREAM_REDIS_URL=own_redis[0], PLATESTREAM_POLICY=str(path)),
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode != 0
    assert "maxmemory-policy is allkeys-lru" in run.stdout + run.stderr


def test_health_says_when_the_policy_file_does_not_load(server: str, tmp_path: Path) -> None:
    """A broken edit of the policy file leaves the previous policy in force (queries are still answered, so the
    server stays ready), and ``/health`` says so until a valid file is back."""
    path = tmp_path / "policy.yaml"
    good = path.read_text()
    path.write_text("agencies: [not: valid")
    wait_for(lambda: "policy_file_invalid" in call(server, "/health")[1], 10, "the broken edit to show")
    status, got = call(server, "/health")
    assert status == 200 and got["ok"] is True
    assert "not valid YAML" in got["policy_file_invalid"] and "the previous policy is in force" in got[
        "policy_file_invalid"]
    path.write_text(good)
    wait_for(lambda: call(server, "/health") == (200, {"ok": True}), 10, "the valid file to be back")


def test_health_is_not_ready_while_the_brokers_would_not_take_an_audit_record(server: str, local_stack: Any) -> None:
    """Every query waits for Kafka to acknowledge its audit record (fail closed): a server whose brokers stop
    answering (here frozen, SIGSTOP) is taken out of rotation with the reason, and put back once they answer."""
    import os
    import signal

    from streams import stack

    assert call(server, "/health") == (200, {"ok": True})
    info = stack.read_info(Path(local_stack.state_dir))
    assert info is not None
    os.killpg(info.kafka_pid, signal.SIGSTOP)
    try:
        status, got = call(server, "/health")
    finally:
        os.killpg(info.kafka_pid, signal.SIGCONT)
    assert (status, set(got), got["ok"]) == (503, {"ok", "kafka"}, False), got
    assert got["kafka"].startswith("no broker answered within 0.9 s")
    wait_for(lambda: call(server, "/health") == (200, {"ok": True}), 60, "the brokers to answer again")
    q = {"plate": "NONE1", "region": "US-CT", "purpose": "criminal_investigation", "case": "HPD-9"}
    assert call(server, "/v1/trail", q, TOKENS["alice"])[0] == 200  # its audit record acknowledged
