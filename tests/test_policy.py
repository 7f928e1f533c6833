"""Policy rules, table-driven: every rule, every refusal, with the rule named."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from streams.policy import PURPOSES, Policy, PolicyError, PolicyStore
from tests.governance import TOKENS, policy, policy_doc, with_tokens

P = policy()
CI = "criminal_investigation"


@pytest.mark.parametrize(("user", "purpose", "owner", "granted", "expected"), [
    ("alice", CI, "hartford-pd", None, None),  # own data
    ("alice", "immigration_enforcement", "hartford-pd", None, "hartford-pd.never_for_purposes:immigration_enforcement"),
    ("walt", CI, "hartford-pd", None, "hartford-pd.no_grant"),  # sharing is never assumed
    ("walt", CI, "hartford-pd", {CI}, None),
    ("walt", "missing_person", "hartford-pd", {CI}, "hartford-pd.no_grant"),  # grant does not cover purpose
    ("walt", "traffic_safety", "hartford-pd", {"traffic_safety"}, "hartford-pd.share_purposes:traffic_safety"),
    ("nina", CI, "hartford-pd", {CI}, "hartford-pd.never_outside_state"),
    ("fred", CI, "hartford-pd", {CI}, "hartford-pd.never_with_kinds"),  # federal, even with a grant
    ("vic", CI, "hartford-pd", {CI}, "hartford-pd.never_with_kinds"),  # private
    ("fred", "immigration_enforcement", "hartford-pd", {"immigration_enforcement"},
     "hartford-pd.never_for_purposes:immigration_enforcement"),  # the purpose rule binds everyone, first
    ("walt", CI, "ct-state-police", {CI}, "ct-state-police.never_with_agencies"),
    ("alice", CI, "ct-state-police", {CI}, None),
    ("alice", CI, "westport-pd", {CI}, None),
    ("alice", "amber_alert", "westport-pd", {"amber_alert"}, "westport-pd.share_purposes:amber_alert"),
    ("fred", CI, "westport-pd", {CI}, None),  # westport's own rules do not forbid federal agencies
    ("alice", CI, "nypd", {CI}, "nypd.share_purposes:criminal_investigation"),  # shares nothing by default
    ("alice", CI, "unknown-agency", {CI}, "unknown-agency.not_in_policy"),
])
def test_decisions(user: str, purpose: str, owner: str, granted: set[str] | None, expected: str | None) -> None:
    ctx = P.context(TOKENS[user], purpose, "case-1")
    assert P.decide(ctx, owner, frozenset(granted) if granted is not None else None) == expected


@pytest.mark.parametrize(("token", "purpose", "case", "role", "code"), [
    ("wrong", CI, "c1", "analyst", "unauthenticated"),
    (None, CI, "c1", "analyst", "unauthenticated"),
    (TOKENS["alice"], None, "c1", "analyst", "purpose_required"),
    (TOKENS["alice"], "curiosity", "c1", "analyst", "unknown_purpose"),
    (TOKENS["alice"], CI, "", "analyst", "case_required"),
    (TOKENS["alice"], CI, "   ", "analyst", "case_required"),
    (TOKENS["audrey"], CI, "c1", "analyst", "forbidden_role"),  # an auditor cannot search
    (TOKENS["alice"], "audit", "c1", "auditor", "forbidden_role"),  # an analyst cannot read the audit
])
def test_queries_without_who_and_why_are_refused(token: str | None, purpose: str | None, case: str, role: str,
                                                  code: str) -> None:
    with pytest.raises(PolicyError) as e:
        P.context(token, purpose, case, role=role)  # type: ignore[arg-type]
    assert e.value.code == code


def test_admin_can_act_in_any_role_of_its_agency() -> None:
    assert P.context(TOKENS["hank"], CI, "c", role="auditor").agency.id == "hartford-pd"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["agencies"][0].update(kind="militia"), "kind"),
    (lambda d: d["agencies"][0].update(state="Connecticut"), "state"),
    (lambda d: d["agencies"][0]["sharing"].update(never_for_purposes=["fun"]), "never_for_purposes"),
    (lambda d: d["users"][0].update(agency="nowhere"), "unknown agency"),
    (lambda d: d["users"][1].update(token_sha256=d["users"][0]["token_sha256"]), "duplicate"),
    (lambda d: d["agencies"].append(dict(d["agencies"][0])), "declared twice"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["users"][0].update(token_sha256="plaintext-token"), "token_sha256"),
])
def test_invalid_policies_are_rejected_at_load(mutate: object, message: str) -> None:
    doc = with_tokens(policy_doc())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(doc)


def test_schema_purposes_match_code() -> None:
    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "policy.v1.json").read_text())
    assert tuple(schema["$defs"]["purpose"]["enum"]) == PURPOSES


def test_example_policy_file_is_valid() -> None:
    Policy.load(Path(__file__).resolve().parents[1] / "deploy" / "policy.example.yaml")


def test_policy_reloads_without_restart_and_keeps_the_old_one_on_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    doc = with_tokens(policy_doc())
    path.write_text(yaml.safe_dump(doc))
    store = PolicyStore(path)
    ctx = store.get().context(TOKENS["walt"], CI, "c")
    assert store.get().decide(ctx, "hartford-pd", frozenset({CI})) is None and store.invalid is None
    doc["agencies"][0]["sharing"]["never_with_agencies"] = ["westport-pd"]
    path.write_text(yaml.safe_dump(doc))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    store._checked = 0.0  # skip the once-a-second throttle instead of sleeping
    assert store.get().decide(ctx, "hartford-pd", frozenset({CI})) == "hartford-pd.never_with_agencies"
    assert store.invalid is None
    path.write_text("agencies: [not: valid")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    store._checked = 0.0
    assert store.get().decide(ctx, "hartford-pd", frozenset({CI})) == "hartford-pd.never_with_agencies"
    assert store.invalid is not None and "not valid YAML" in store.invalid
    store._checked = 0.0
    store.get()  # the same invalid file, checked again: still said
    assert store.invalid is not None and "not valid YAML" in store.invalid
    path.unlink()  # gone for a moment (an editor's rename): the previous policy holds, nothing raises
    store._checked = 0.0
    assert store.get().decide(ctx, "hartford-pd", frozenset({CI})) == "hartford-pd.never_with_agencies"
    assert store.invalid is not None and store.invalid.startswith("cannot be read")
    doc["agencies"][0]["sharing"]["never_with_agencies"] = []
    path.write_text(yaml.safe_dump(doc))
    store._checked = 0.0
    assert store.get().decide(ctx, "hartford-pd", frozenset({CI})) is None  # back: it is read again
    assert store.invalid is None
