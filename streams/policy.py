"""Identity and policy: who may see whose sightings, for which purpose, and how long they are kept.

The policy file (YAML or JSON, ``schemas/policy.v1.json``) declares agencies, users with hashed API tokens
and roles, and each owning agency's retention and sharing rules. Rules only ever *forbid*; seeing another
agency's data additionally needs a grant the owner approved (``streams.sharing``). Every decision names
the rule that refused, e.g. ``hartford-pd.never_with_kinds``, so a refusal can be explained and audited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

log = logging.getLogger("platestream.policy")
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "policy.v1.json"
PURPOSES: tuple[str, ...] = ("criminal_investigation", "missing_person", "amber_alert", "stolen_vehicle",
                             "hotlist_response", "traffic_safety", "immigration_enforcement", "civil_enforcement",
                             "audit")
Kind = Literal["local", "state", "federal", "private"]
Role = Literal["analyst", "admin", "auditor"]
DAY_MS = 86_400_000


class PolicyError(ValueError):
    """A request the policy refuses; ``code`` is stable, ``rule`` names the rule when one refused."""

    def __init__(self, code: str, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Agency:
    id: str
    name: str
    state: str
    kind: Kind
    non_hit_days: float | None = None
    hit_days: float | None = None
    hit_only: bool = False
    never_outside_state: bool = False
    never_with_kinds: frozenset[str] = frozenset()
    never_with_agencies: frozenset[str] = frozenset()
    never_for_purposes: frozenset[str] = frozenset()
    share_purposes: frozenset[str] = frozenset()

    def retention_ms(self, hit: bool = False) -> int | None:
        days = self.hit_days if hit else self.non_hit_days
        return None if days is None else int(days * DAY_MS)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    agency: str
    roles: frozenset[str]
    token_sha256: str


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, and why: required for every query."""

    user: User
    agency: Agency
    purpose: str
    case: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Policy:
    agencies: dict[str, Agency]
    users: dict[str, User]
    source: str = ""
    _by_token: dict[str, User] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "") -> Policy:
        schema = json.loads(SCHEMA_PATH.read_text())
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.path) or "(top)"
            raise PolicyError("invalid_policy", f"{source or 'policy'}: {where}: {e.message}")
        agencies: dict[str, Agency] = {}
        for a in doc["agencies"]:
            if a["id"] in agencies:
                raise PolicyError("invalid_policy", f"agency {a['id']} is declared twice")
            r, sh = a.get("retention", {}), a.get("sharing", {})
            agencies[a["id"]] = Agency(
                a["id"], a["name"], a["state"], a["kind"], r.get("non_hit_days"), r.get("hit_days"),
                a.get("hit_only", False), sh.get("never_outside_state", False),
                frozenset(sh.get("never_with_kinds", ())), frozenset(sh.get("never_with_agencies", ())),
                frozenset(sh.get("never_for_purposes", ())), frozenset(sh.get("share_purposes", ())))
        users: dict[str, User] = {}
        by_token: dict[str, User] = {}
        for u in doc.get("users", []):
            if u["agency"] not in agencies:
                raise PolicyError("invalid_policy", f"user {u['id']}: unknown agency {u['agency']}")
            if u["id"] in users or u["token_sha256"] in by_token:
                raise PolicyError("invalid_policy", f"user {u['id']}: duplicate id or token")
            user = User(u["id"], u["agency"], frozenset(u["roles"]), u["token_sha256"])
            users[user.id] = by_token[user.token_sha256] = user
        return cls(agencies, users, source, by_token)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        text = Path(path).read_text()
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError("invalid_policy", f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(doc, str(path))

    # -- identity --------------------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> User:
        user = self._by_token.get(token_hash(token)) if token else None
        if user is None:
            raise PolicyError("unauthenticated", "unknown or missing API token")
        return user

    def context(self, token: str | None, purpose: str | None, case: str | None, role: Role = "analyst") -> Context:
        """Everything a query must state, checked; raises ``PolicyError`` with a stable code."""
        user = self.authenticate(token)
        if role not in user.roles and "admin" not in user.roles:
            raise PolicyError("forbidden_role", f"user {user.id} lacks the {role} role")
        if not purpose:
            raise PolicyError("purpose_required", f"a purpose is required, one of: {', '.join(PURPOSES)}")
        if purpose not in PURPOSES:
            raise PolicyError("unknown_purpose", f"unknown purpose {purpose!r}; one of: {', '.join(PURPOSES)}")
        if not case or not case.strip():
            raise PolicyError("case_required", "a case number is required")
        return Context(user, self.agencies[user.agency], purpose, case.strip())

    # -- sharing ---------------------------------------------------------------------------------------
    def sharing_violations(self, owner: Agency, requester: Agency, purposes: Iterable[str]) -> list[str]:
        """Names of the owner's rules that forbid ``requester`` seeing its data for any of ``purposes``."""
        out = []
        if owner.never_outside_state and requester.state != owner.state:
            out.append(f"{owner.id}.never_outside_state")
        if requester.kind in owner.never_with_kinds:
            out.append(f"{owner.id}.never_with_kinds")
        if requester.id in owner.never_with_agencies:
            out.append(f"{owner.id}.never_with_agencies")
        for p in purposes:
            if p in owner.never_for_purposes:
                out.append(f"{owner.id}.never_for_purposes:{p}")
            elif p not in owner.share_purposes:
                out.append(f"{owner.id}.share_purposes:{p}")
        return out

    def decide(self, ctx: Context, owner_id: str, granted_purposes: frozenset[str] | None) -> str | None:
        """None if ``ctx`` may see ``owner_id``'s sightings, else the name of the rule that refuses."""
        owner = self.agencies.get(owner_id)
        if owner is None:
            return f"{owner_id}.not_in_policy"  # data of undeclared agencies is shown to nobody
        if ctx.purpose in owner.never_for_purposes:
            return f"{owner.id}.never_for_purposes:{ctx.purpose}"  # binds the owner's own staff too
        if owner.id == ctx.agency.id:
            return None
        violations = self.sharing_violations(owner, ctx.agency, [ctx.purpose])
        if violations:
            return violations[0]
        if granted_purposes is None or ctx.purpose not in granted_purposes:
            return f"{owner.id}.no_grant"
        return None


class PolicyStore:
    """The current policy, reloaded when the file changes (checked at most once a second); no restart.

    A file that turns unreadable or invalid leaves the previous policy in force, and ``invalid`` says why until a
    valid file is back: an edit that tightened retention or sharing and did not load is otherwise visible only
    in a log line (the worker exports it as ``platestream_policy_file_invalid``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = self.path.stat().st_mtime_ns
        self._policy = Policy.load(self.path)
        self._checked = time.monotonic()
        self._read_error: str | None = None  # the file could not be read at the last check
        self._load_error: str | None = None  # the file as last changed did not load

    @property
    def invalid(self) -> str | None:
        """Why the file on disk is not the policy in force, as of the last ``get``; None when it is."""
        return self._read_error or self._load_error

    def get(self) -> Policy:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._policy
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError as e:  # gone for a moment (an editor's rename, say): the previous policy holds
                log.error("policy file %s cannot be read, keeping the previous policy: %s", self.path, e)
                self._read_error = f"cannot be read: {e}"
                return self._policy
            self._read_error = None
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._policy = Policy.load(self.path)
                    self._load_error = None
                    log.info("policy reloaded from %s", self.path)
                except (PolicyError, OSError) as e:  # a broken edit must not open or close everything
                    log.error("policy file %s is invalid, keeping the previous policy: %s", self.path, e)
                    self._load_error = str(e)
        return self._policy
