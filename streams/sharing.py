"""Sharing is requested and granted, never assumed.

An admin of the requesting agency asks an owning agency for access for named purposes; an admin of the
owner approves or refuses. An approval that would break the owner's own policy rules is refused with the
rules named. Requests and decisions are audited. Grants live in Redis (``ps:grants``), so they apply to
every worker and API process at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis

from streams.audit import AuditLog
from streams.policy import DAY_MS, PURPOSES, Policy, PolicyError, User

GRANTS_KEY = "ps:grants"


def _field(owner: str, requester: str) -> str:
    return f"{owner}|{requester}"


def _require_admin(user: User) -> None:
    if "admin" not in user.roles:
        raise PolicyError("forbidden_role", f"user {user.id} is not an admin of {user.agency}")


def get_grant(client: redis.Redis, owner: str, requester: str) -> dict[str, Any] | None:
    raw = client.hget(GRANTS_KEY, _field(owner, requester))
    return None if raw is None else dict(orjson.loads(raw))


def granted_purposes(client: redis.Redis, owner: str, requester: str,
                     now_ms: int | None = None) -> frozenset[str] | None:
    """Purposes an approved, unexpired grant from ``owner`` to ``requester`` covers (None: no grant)."""
    return granted_purposes_of(client, [owner], requester, now_ms)[owner]


def granted_purposes_of(client: redis.Redis, owners: Sequence[str], requester: str,
                        now_ms: int | None = None) -> dict[str, frozenset[str] | None]:
    """``granted_purposes`` of many owners in one round trip: every query checks every agency of the policy
    (a network has hundreds), and one ``HGET`` each was most of a small query's time."""
    raws = cast(list[Any], client.hmget(GRANTS_KEY, [_field(o, requester) for o in owners])) if owners else []
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {owner: grant_purposes(None if raw is None else orjson.loads(raw), now)
            for owner, raw in zip(owners, raws, strict=True)}


def grant_purposes(grant: dict[str, Any] | None, now_ms: int) -> frozenset[str] | None:
    """Purposes a stored grant covers at ``now_ms``: approved and not expired (None: it covers nothing)."""
    if grant is None or grant["status"] != "approved" or (grant.get("expires") and grant["expires"] <= now_ms):
        return None
    return frozenset(grant["purposes"])


def request_access(client: redis.Redis, policy: Policy, audit: AuditLog, user: User, owner: str,
                   purposes: list[str], reason: str) -> dict[str, Any]:
    _require_admin(user)
    if owner not in policy.agencies or owner == user.agency:
        raise PolicyError("unknown_agency", f"cannot request access to {owner!r}")
    bad = [p for p in purposes if p not in PURPOSES]
    if not purposes or bad:
        raise PolicyError("unknown_purpose", f"purposes must be some of {', '.join(PURPOSES)}; got {bad or 'none'}")
    if not reason.strip():
        raise PolicyError("reason_required", "a sharing request needs a reason")
    grant = {"owner": owner, "requester": user.agency, "purposes": sorted(set(purposes)), "status": "pending",
             "reason": reason, "requested_by": user.id, "requested_at": audit.clock()}
    audit.append(action="share.request", agency=user.agency, user=user.id, purpose=None, case=None,
                 terms={"owner": owner, "purposes": grant["purposes"], "reason": reason}, decision="recorded",
                 result_count=0)
    client.hset(GRANTS_KEY, _field(owner, user.agency), orjson.dumps(grant))
    return grant


def decide(client: redis.Redis, policy: Policy, audit: AuditLog, user: User, requester: str, approve: bool,
           days: float | None = None, note: str = "") -> dict[str, Any]:
    """Approve or refuse a pending request to ``user``'s agency. Approvals the policy forbids are refused."""
    _require_admin(user)
    grant = get_grant(client, user.agency, requester)
    if grant is None or grant["status"] != "pending":
        raise PolicyError("no_pending_request", f"no pending request from {requester} to {user.agency}")
    owner = policy.agencies[user.agency]
    req_agency = policy.agencies.get(requester)
    rules = (policy.sharing_violations(owner, req_agency, grant["purposes"]) if req_agency is not None
             else [f"{owner.id}.requester_not_in_policy"])
    status = "approved" if approve and not rules else "refused"
    grant.update(status=status, decided_by=user.id, decided_at=audit.clock(), note=note,
                 refused_by_rules=rules if approve and rules else [],
                 expires=audit.clock() + int(days * DAY_MS) if days and status == "approved" else None)
    audit.append(action="share.approve" if approve else "share.refuse", agency=user.agency, user=user.id,
                 purpose=None, case=None, terms={"requester": requester, "purposes": grant["purposes"]},
                 decision=status, rules=rules if approve else [], result_count=0)
    client.hset(GRANTS_KEY, _field(user.agency, requester), orjson.dumps(grant))
    if approve and rules:
        raise PolicyError("sharing_rule", f"approval refused by {', '.join(rules)}", rule=rules[0])
    return grant


def list_grants(client: redis.Redis, agency: str | None = None) -> list[dict[str, Any]]:
    rows = [orjson.loads(v) for v in client.hvals(GRANTS_KEY)]
    return [g for g in rows if agency is None or agency in (g["owner"], g["requester"])]
