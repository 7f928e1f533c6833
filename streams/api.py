"""HTTP API (``platestream serve``): the same governed queries as the CLI, over JSON.

Every request carries ``Authorization: Bearer <token>``; queries also carry a purpose and a case number.
Errors are JSON ``{"error": {"code", "message", "rule"}}`` with a stable code. The OpenAPI description is
served at ``/openapi.json``. Blocking Redis calls run in a thread pool, one request at a time per worker thread;
the audit record is written, and acknowledged by Kafka (sent from the event loop: ``LoopAuditPublisher``), before
any result leaves the server.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from streams import connect, sharing
from streams.access import Access, LoopAuditPublisher
from streams.audit import AuditError
from streams.export import FORMATS, render
from streams.policy import PURPOSES, Context, Policy, PolicyError
from streams.query import (
    GovernedResult,
    QueryError,
    area_search,
    checked_context,
    governed_trail,
    pattern_terms,
    plate_search,
    polygon_search,
    trail_terms,
)
from streams.settings import Settings
from streams.store import CellBucketError, eviction_policy

STATUS = {"unauthenticated": 401, "forbidden_role": 403, "sharing_rule": 403, "no_policy": 503,
          "audit_unavailable": 503, "cell_bucket_mismatch": 503}


HEALTH_TIMEOUT_S = 1.0  # Kubernetes's probes give up after 1 s by default


def refuse_evicting(acc: Access) -> None:
    """The server appends an audit record to Redis for every query: it does not start on a Redis that could
    evict them (``store.eviction_policy``; not checked where an ACL refuses INFO, nor while Redis is down)."""
    try:
        info = acc.client.info("memory")
    except (RedisError, OSError):
        return
    eviction_policy(info)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON reply serialized by orjson: aiohttp's default (the standard library's ``json``) took 5.0 ms for a
    1,000-sighting trail, against 0.43 ms, far more than the lookup itself (README: trail lookups)."""
    return _json_reply(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status)


def _json_reply(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


def _error(code: str, message: str, rule: str | None = None) -> web.Response:
    status = STATUS.get(code, 400)
    return json_response({"error": {"code": code, "message": message, "rule": rule}}, status=status)


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else None


def _int(value: Any, name: str, what: str = "epoch milliseconds", least: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise QueryError(f"{name} must be {what}")  # (int() would take true as 1 and 2.7 as 2)
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be {what}") from None
    if least is not None and out < least:
        raise QueryError(f"{name} must be {what}")
    return out


def governed_response(result: GovernedResult, fmt: Any = None) -> web.Response:
    """JSON envelope by default; ``format`` ``csv`` or ``jsonl`` exports the rows (audit seq and withholding
    rules then travel in the ``X-Audit-Seq`` and ``X-Withheld-By`` headers)."""
    withheld = sorted(set(result.refused.values()))
    if fmt in (None, "json"):
        # ``json_response`` of the same object, the sightings serialized from their columns (no dict each)
        envelope = b"".join((b'{"sightings":', result.sightings_json(), b',"withheld_by":', orjson.dumps(withheld),
                             b',"audit_seq":', orjson.dumps(result.audit_seq), b"}"))
        return _json_reply(envelope)
    body, content_type = render(result.rows, fmt)
    return web.Response(text=body, headers={"Content-Type": content_type, "X-Audit-Seq": str(result.audit_seq),
                                            "X-Withheld-By": ",".join(withheld)})


def _format(q: dict[str, Any]) -> Any:
    fmt = q.get("format")
    if fmt not in (None, "json", *FORMATS):
        raise QueryError(f"format must be json, {' or '.join(FORMATS)}")
    return fmt


def openapi() -> dict[str, Any]:
    fmt = {"enum": ["json", *FORMATS], "default": "json",
           "description": "json: envelope; csv/jsonl: export (audit seq in the X-Audit-Seq header)"}
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    q = {"type": "object", "required": ["plate", "region", "purpose", "case"],
         "properties": {"plate": {"type": "string"}, "region": {"type": "string", "example": "US-CT"},
                        "purpose": {"enum": list(PURPOSES)}, "case": {"type": "string"},
                        "since": {"type": "integer"}, "until": {"type": "integer"}, "limit": {"type": "integer"},
                        "format": fmt}}
    search = {"type": "object", "required": ["pattern", "purpose", "case"],
              "properties": {"pattern": {"type": "string", "example": "7AB*",
                                         "description": "* any run, ? one character; OCR-confusion tolerant"},
                             "region": {"type": "string", "description": "omit for every region"},
                             "purpose": {"enum": list(PURPOSES)}, "case": {"type": "string"},
                             "since": {"type": "integer"}, "until": {"type": "integer"},
                             "limit": {"type": "integer"}, "format": fmt}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "platestream", "version": "1",
                 "description": "Governed access to ALPR sightings: every call is authenticated, purpose-bound, "
                                "checked against the owning agencies' sharing rules, and audited."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "rule": {"type": ["string", "null"]}}}}},
                "TrailQuery": q, "PlateSearch": search},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/trail": {"post": {"summary": "Time-ordered sightings of one vehicle the caller may see",
                                   "requestBody": {"required": True, "content": {"application/json": {
                                       "schema": {"$ref": "#/components/schemas/TrailQuery"}}}},
                                   "responses": {"200": {"description": "sightings, withheld rules, audit seq"},
                                                 "400": err, "401": err, "403": err, "503": err}}},
            "/v1/plates/search": {"post": {
                "summary": "Partial/wildcard plate search over stored history, policy-filtered and audited",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PlateSearch"}}}},
                "responses": {"200": {"description": "sightings (with plate) the caller may see"},
                              "400": err, "401": err, "403": err, "503": err}}},
            "/v1/area": {"post": {"summary": "Vehicles (by pseudonym) that passed within radius_m of lat/lon "
                                             "(or inside polygon: [[lat, lon], ...]) "
                                             "between since and until (epoch ms); body also needs purpose, case; "
                                             "format as for /v1/trail",
                                  "responses": {"200": {"description": "sightings, withheld rules, audit seq"},
                                                "400": err, "401": err, "403": err}}},
            "/v1/share/request": {"post": {"summary": "Ask an owning agency for access (admin)",
                                           "responses": {"200": {"description": "the pending request"},
                                                         "400": err, "401": err, "403": err}}},
            "/v1/share/decide": {"post": {"summary": "Approve or refuse a pending request (owner's admin)",
                                          "responses": {"200": {"description": "the decision"},
                                                        "400": err, "401": err, "403": err}}},
            "/v1/audit/verify": {"get": {"summary": "Verify the audit chain and its copies in Kafka (auditor)",
                                         "responses": {"200": {"description": "verification"}, "401": err}}},
            "/v1/audit/report": {"get": {"summary": "Who queried what, for one agency (its auditor)",
                                         "parameters": [{"name": "agency", "in": "query", "required": True,
                                                         "schema": {"type": "string"}}],
                                         "responses": {"200": {"description": "report"}, "401": err, "403": err}}},
            "/health": {"get": {"summary": "Readiness: Redis answers, a policy is loaded, Kafka takes audit records",
                                "security": [],
                                "responses": {"200": {"description": "ok (with policy_file_invalid while the "
                                                                     "policy file does not load: the previous one is "
                                                                     "in force)"},
                                              "503": {"description": "not ready; the body names what is wrong"}}}},
        },
    }


def make_app(settings: Settings, access: Access | None = None) -> web.Application:
    app = web.Application()
    if access is None:
        # the audit copy goes out from this server's own event loop (LoopAuditPublisher), connected before the
        # first request
        publisher = LoopAuditPublisher(settings)
        acc = Access(settings, publisher=publisher)
        app.on_startup.append(lambda _: publisher.start())
        app.on_startup.append(lambda _: asyncio.get_running_loop().run_in_executor(None, refuse_evicting, acc))
    else:
        acc = access

    async def blocking(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def guarded(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except PolicyError as e:
                return _error(e.code, str(e), e.rule)
            except QueryError as e:
                return _error("invalid_query", str(e))
            except AuditError as e:
                return _error("audit_unavailable", str(e))
            except CellBucketError as e:  # this server is configured for another area index than Redis holds
                return _error(e.code, str(e))
            except ValueError as e:
                return _error("invalid_request", f"request body must be a JSON object: {e}")
        return wrapped

    async def body(request: web.Request) -> dict[str, Any]:
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data

    async def governed_query(request: web.Request, action: str, terms: Callable[[dict[str, Any]], dict[str, Any]],
                             run: Callable[[dict[str, Any], Policy, Context], GovernedResult]) -> web.Response:
        """Token, purpose and case checked first (refusals audited too), then the query: JSON or an export."""
        q = await body(request)
        policy = acc.policy()
        ctx = await blocking(lambda: checked_context(policy, acc.audit, _token(request), q.get("purpose"),
                                                     q.get("case"), action, terms(q)))
        fmt = _format(q)
        return governed_response(await blocking(lambda: run(q, policy, ctx)), fmt)

    def _window(q: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
        return (_int(q.get("since"), "since"), _int(q.get("until"), "until"),
                _int(q.get("limit"), "limit", "a whole number of sightings, at least 1", least=1))

    @guarded
    async def trail(request: web.Request) -> web.Response:
        def run(q: dict[str, Any], policy: Policy, ctx: Context) -> GovernedResult:
            for name in ("plate", "region"):
                if not isinstance(q.get(name), str):
                    raise QueryError(f"{name} is required")
            return governed_trail(acc.client, settings, policy, ctx, acc.audit, q["plate"], q["region"], *_window(q))

        return await governed_query(request, "query.trail",
                                    lambda q: trail_terms(settings, q.get("plate"), q.get("region")), run)

    @guarded
    async def plates(request: web.Request) -> web.Response:
        def run(q: dict[str, Any], policy: Policy, ctx: Context) -> GovernedResult:
            return plate_search(acc.client, settings, policy, ctx, acc.audit, str(q.get("pattern") or ""),
                                q.get("region"), *_window(q))

        return await governed_query(request, "query.plate_search",
                                    lambda q: pattern_terms(settings, q.get("pattern"), q.get("region")), run)

    @guarded
    async def area(request: web.Request) -> web.Response:
        def run(q: dict[str, Any], policy: Policy, ctx: Context) -> GovernedResult:
            polygon = q.get("polygon")
            try:
                since, until = int(q["since"]), int(q["until"])
                if not isinstance(polygon, list):
                    lat, lon, radius = float(q["lat"]), float(q["lon"]), float(q["radius_m"])
            except (KeyError, TypeError, ValueError):
                raise QueryError("since, until and either lat, lon, radius_m or polygon ([[lat, lon], ...]) "
                                 "are required") from None
            if isinstance(polygon, list):
                return polygon_search(acc.client, settings, policy, ctx, acc.audit, polygon, since, until)
            return area_search(acc.client, settings, policy, ctx, acc.audit, lat, lon, radius, since, until)

        return await governed_query(
            request, "query.area",
            lambda q: {k: q.get(k) for k in ("lat", "lon", "radius_m", "polygon", "since", "until") if k in q}, run)

    @guarded
    async def share_request(request: web.Request) -> web.Response:
        q = await body(request)
        policy = acc.policy()
        user = policy.authenticate(_token(request))
        grant = await blocking(lambda: sharing.request_access(
            acc.client, policy, acc.audit, user, str(q.get("owner")), list(q.get("purposes") or []),
            str(q.get("reason") or "")))
        return json_response(grant)

    @guarded
    async def share_decide(request: web.Request) -> web.Response:
        q = await body(request)
        policy = acc.policy()
        user = policy.authenticate(_token(request))
        grant = await blocking(lambda: sharing.decide(
            acc.client, policy, acc.audit, user, str(q.get("requester")), bool(q.get("approve")), q.get("days"),
            str(q.get("note") or "")))
        return json_response(grant)

    @guarded
    async def audit_verify(request: web.Request) -> web.Response:
        acc.policy().context(_token(request), "audit", "audit-verify", role="auditor")
        v = await blocking(acc.verify_audit)
        return json_response({"ok": v.ok, "records": v.records, "first_bad": v.first_bad, "reason": v.reason,
                              "checked_against_topic": v.witnessed})

    @guarded
    async def audit_report(request: web.Request) -> web.Response:
        agency = request.query.get("agency", "")
        return json_response(await blocking(lambda: acc.audit_report(_token(request), agency)))

    probe = connect.redis_client(settings, socket_timeout=HEALTH_TIMEOUT_S, socket_connect_timeout=HEALTH_TIMEOUT_S)

    async def health(request: web.Request) -> web.Response:
        """Ready when a query could be answered: Redis answers, a policy is loaded (without one every query
        is refused) and the brokers would take its audit record (without them every query is refused,
        ``audit_unavailable``)."""
        problems = {}
        publisher = acc.publisher if isinstance(acc.publisher, LoopAuditPublisher) else None
        kafka = asyncio.ensure_future(publisher.unreachable(HEALTH_TIMEOUT_S * 0.9)) if publisher else None
        try:
            await blocking(probe.ping)
        except (RedisError, OSError) as e:
            problems["redis"] = f"{type(e).__name__}: {e}"[:300]
        if acc.store is None:
            problems["policy"] = "no policy file is configured (PLATESTREAM_POLICY): every query is refused"
        why = await kafka if kafka is not None else None
        if why is not None:
            problems["kafka"] = why
        body: dict[str, Any] = {"ok": not problems, **problems}
        if acc.store is not None:
            acc.store.get()  # (checks the file: at most a stat a second)
            if acc.store.invalid is not None:  # queries are answered, under the previous policy: said, not failed
                body["policy_file_invalid"] = f"{acc.store.invalid}; the previous policy is in force"[:500]
        return json_response(body, status=503 if problems else 200)

    async def spec(request: web.Request) -> web.Response:
        return json_response(openapi())

    app.router.add_post("/v1/trail", trail)
    app.router.add_post("/v1/area", area)
    app.router.add_post("/v1/plates/search", plates)
    app.router.add_post("/v1/share/request", share_request)
    app.router.add_post("/v1/share/decide", share_decide)
    app.router.add_get("/v1/audit/verify", audit_verify)
    app.router.add_get("/v1/audit/report", audit_report)
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", spec)
    app.on_cleanup.append(lambda _: asyncio.get_running_loop().run_in_executor(None, acc.close))
    app.on_cleanup.append(lambda _: asyncio.get_running_loop().run_in_executor(None, probe.close))
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    web.run_app(make_app(settings), host=host, port=port, print=None)
