"""Sharing is requested and approved, never assumed; approvals that break the owner's rules are refused."""

from __future__ import annotations

import pytest
import redis

from streams import sharing
from streams.audit import AuditLog
from streams.policy import PolicyError
from streams.settings import Settings
from tests.governance import TOKENS, policy

pytestmark = pytest.mark.integration
CI = "criminal_investigation"


def test_request_approve_refuse_and_rules(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    p = policy()
    audit = AuditLog(client, b"audit-test-key-0123456789")
    user = p.authenticate

    # a request by a non-admin is refused
    with pytest.raises(PolicyError) as e:
        sharing.request_access(client, p, audit, user(TOKENS["walt"]), "hartford-pd", [CI], "case 7")
    assert e.value.code == "forbidden_role"

    # westport asks hartford; hartford approves; the grant covers exactly what was asked
    assert sharing.granted_purposes(client, "hartford-pd", "westport-pd") is None
    sharing.request_access(client, p, audit, user(TOKENS["wadmin"]), "hartford-pd", [CI], "burglary series")
    assert sharing.granted_purposes(client, "hartford-pd", "westport-pd") is None  # pending is not granted
    g = sharing.decide(client, p, audit, user(TOKENS["hank"]), "westport-pd", approve=True, days=30)
    assert g["status"] == "approved"
    assert sharing.granted_purposes(client, "hartford-pd", "westport-pd") == frozenset({CI})
    assert sharing.granted_purposes(client, "hartford-pd", "westport-pd", now_ms=g["expires"]) is None  # expired

    # a federal agency asks; hartford's admin clicks approve anyway: refused, with the rule named
    sharing.request_access(client, p, audit, user(TOKENS["fadmin"]), "hartford-pd", [CI, "immigration_enforcement"],
                           "task force")
    with pytest.raises(PolicyError) as e:
        sharing.decide(client, p, audit, user(TOKENS["hank"]), "ice-hartford", approve=True)
    assert e.value.code == "sharing_rule" and e.value.rule == "hartford-pd.never_with_kinds"
    assert "hartford-pd.never_for_purposes:immigration_enforcement" in str(e.value)
    assert sharing.granted_purposes(client, "hartford-pd", "ice-hartford") is None
    assert sharing.get_grant(client, "hartford-pd", "ice-hartford")["status"] == "refused"  # type: ignore[index]

    # only the owner's admin decides; deciding twice is an error
    with pytest.raises(PolicyError):
        sharing.decide(client, p, audit, user(TOKENS["hank"]), "westport-pd", approve=False)

    # every request and decision is in the audit log, and the chain holds
    actions = [(r["action"], r["agency"], r["decision"]) for r in audit.records()]
    assert actions == [("share.request", "westport-pd", "recorded"), ("share.approve", "hartford-pd", "approved"),
                       ("share.request", "ice-hartford", "recorded"), ("share.approve", "hartford-pd", "refused")]
    assert audit.verify().ok
