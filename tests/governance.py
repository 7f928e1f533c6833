"""A policy used by the governance tests: agencies of several kinds and states, users with known tokens."""

from __future__ import annotations

from typing import Any

from streams.policy import Policy, token_hash

TOKENS = {user: f"token-{user}" for user in
          ("alice", "hank", "audrey", "walt", "wadmin", "nina", "fred", "fadmin", "sam", "vic")}


def policy_doc() -> dict[str, Any]:
    share = ["criminal_investigation", "missing_person", "amber_alert", "stolen_vehicle"]
    return {
        "version": 1,
        "agencies": [
            {"id": "hartford-pd", "name": "Hartford PD", "state": "CT", "kind": "local",
             "retention": {"non_hit_days": 7, "hit_days": 365},
             "sharing": {"never_outside_state": True, "never_with_kinds": ["federal", "private"],
                         "never_for_purposes": ["immigration_enforcement", "civil_enforcement"],
                         "share_purposes": share}},
            {"id": "westport-pd", "name": "Westport PD", "state": "CT", "kind": "local",
             "retention": {"non_hit_days": 30},
             "sharing": {"share_purposes": ["criminal_investigation"]}},
            {"id": "nypd", "name": "NYPD", "state": "NY", "kind": "local"},
            {"id": "ice-hartford", "name": "ICE field office", "state": "CT", "kind": "federal"},
            {"id": "ct-state-police", "name": "CT State Police", "state": "CT", "kind": "state",
             "sharing": {"never_with_agencies": ["westport-pd"], "share_purposes": share}},
            {"id": "vigilant", "name": "A vendor", "state": "CT", "kind": "private"},
        ],
        "users": [
            {"id": "alice", "agency": "hartford-pd", "roles": ["analyst"]},
            {"id": "hank", "agency": "hartford-pd", "roles": ["admin"]},
            {"id": "audrey", "agency": "hartford-pd", "roles": ["auditor"]},
            {"id": "walt", "agency": "westport-pd", "roles": ["analyst"]},
            {"id": "wadmin", "agency": "westport-pd", "roles": ["admin"]},
            {"id": "nina", "agency": "nypd", "roles": ["analyst", "admin"]},
            {"id": "fred", "agency": "ice-hartford", "roles": ["analyst"]},
            {"id": "fadmin", "agency": "ice-hartford", "roles": ["admin"]},
            {"id": "sam", "agency": "ct-state-police", "roles": ["analyst", "admin"]},
            {"id": "vic", "agency": "vigilant", "roles": ["analyst", "admin"]},
        ],
    }


def with_tokens(doc: dict[str, Any]) -> dict[str, Any]:
    for u in doc["users"]:
        u["token_sha256"] = token_hash(TOKENS[u["id"]])
    return doc


def policy() -> Policy:
    return Policy.from_dict(with_tokens(policy_doc()))
