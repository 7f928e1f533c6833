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


def test_grants_of_every_agency_come_in_one_round_trip(settings: Settings) -> None:
    """A query checks every agency of the policy for a grant to the requester: one HMGET for all of them,
    each owner's answer what its grant says (approved and unexpired: its purposes; pending, refused,
    expired, to another requester or absent: none), and the query's refusals follow from them."""
    import orjson

    from streams.policy import Policy, token_hash
    from streams.query import refusals

    client = redis.Redis.from_url(settings.redis_url)
    client.delete(sharing.GRANTS_KEY)
    owners = [f"agency-{i}" for i in range(300)]
    now = 1_800_000_000_000
    expect: dict[str, frozenset[str] | None] = dict.fromkeys(owners)  # the last 50 never asked
    for i, owner in enumerate(owners[:250]):
        status = ("approved", "pending", "refused")[i % 3]
        expires = None if i % 5 else now if i % 2 else now + 1  # a grant expires at its "expires" ms
        purposes = [CI] if i % 4 else ["missing_person"]
        client.hset(sharing.GRANTS_KEY, f"{owner}|me", orjson.dumps(
            {"owner": owner, "requester": "me", "purposes": purposes, "status": status, "expires": expires}))
        if status == "approved" and expires != now:
            expect[owner] = frozenset(purposes)
    client.hset(sharing.GRANTS_KEY, "agency-299|someone-else", orjson.dumps(
        {"owner": "agency-299", "requester": "someone-else", "purposes": [CI], "status": "approved", "expires": None}))
    assert sum(g is not None for g in expect.values()) > 50

    client.config_resetstat()
    assert sharing.granted_purposes_of(client, owners, "me", now) == expect
    doc = {"version": 1, "agencies": [{"id": a, "name": a, "state": "CT", "kind": "local",
                                       "sharing": {"share_purposes": [CI]}} for a in [*owners, "me"]],
           "users": [{"id": "u", "agency": "me", "roles": ["analyst"], "token_sha256": token_hash("t")}]}
    p = Policy.from_dict(doc)
    refused = refusals(client, p, p.context("t", CI, "case-1"), now)
    assert set(refused) == {o for o, g in expect.items() if g is None or CI not in g}
    assert [sharing.granted_purposes(client, o, "me", now) for o in owners] == list(expect.values())
    calls = {k: v["calls"] for k, v in client.info("commandstats").items()}
    assert calls.get("cmdstat_hmget") == 2 + len(owners) and "cmdstat_hget" not in calls  # 1 + 1 + one each
