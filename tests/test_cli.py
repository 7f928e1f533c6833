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

from streams.settings import Settings
from tests.conftest import settings_env
from tests.governance import TOKENS, policy_doc, with_tokens
from tests.support import store_reads

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
              "region": "US-CT", "ts": 1_764_000_000_000 + i * 3_600_000, "lat": 41.7, "lon": -72.7,
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
    assert verify.returncode == 0 and "OK, 6 verified records" in verify.stdout, verify.stdout
    report = run(settings, tmp_path, "audit", "report", "--agency", "hartford-pd", token=TOKENS["audrey"])
    assert report.returncode == 0, report.stderr
    assert orjson.loads(report.stdout)["by_user"] == {"alice": 5}  # fred's query is ICE's, not Hartford's
    denied = run(settings, tmp_path, "audit", "report", "--agency", "westport-pd", token=TOKENS["audrey"])
    assert denied.returncode == 2 and "forbidden_role" in denied.stderr
