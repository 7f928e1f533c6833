"""``platestream`` command line: the local stack, the worker, traffic, governed queries, audit, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from streams import logs
from streams.export import write_rows
from streams.settings import ENV_VARS, Settings, SettingsError

if TYPE_CHECKING:
    from streams.access import Access
    from streams.policy import Context, Policy
    from streams.query import GovernedResult


def _count(value: str) -> int:
    """A whole number of at least 1 (a limit: a negative one would cut from the end)."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _time(value: str) -> int:
    """Epoch ms, or an ISO 8601 time (UTC if no zone)."""
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither epoch ms nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _polygon(value: str) -> list[tuple[float, float]]:
    try:
        pts = [tuple(float(x) for x in p.split(",")) for p in value.split(";") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("polygon must look like 'lat,lon;lat,lon;lat,lon'") from None
    if any(len(p) != 2 for p in pts):
        raise argparse.ArgumentTypeError("polygon must look like 'lat,lon;lat,lon;lat,lon'")
    return [(p[0], p[1]) for p in pts]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cmd_stack(args: argparse.Namespace) -> int:
    from streams import stack

    state_dir = Path(args.state_dir)
    if args.action == "up":
        info = stack.up(state_dir)
        print(f"kafka bootstrap: {info.kafka_bootstrap}\nredis url:       {info.redis_url}")
        print(f"export PLATESTREAM_KAFKA_BOOTSTRAP={info.kafka_bootstrap} PLATESTREAM_REDIS_URL={info.redis_url}")
    elif args.action == "down":
        stack.down(state_dir, wipe=args.wipe)
        print("stack stopped" + (" and wiped" if args.wipe else ""))
    else:
        found, k, r = stack.status(state_dir)
        if found is None:
            print("stack: not started")
            return 1
        print(f"kafka {found.kafka_bootstrap}: {'up' if k else 'DOWN'} (pid {found.kafka_pid})")
        print(f"redis {found.redis_url}: {'up' if r else 'DOWN'} (pid {found.redis_pid})")
        return 0 if k and r else 1
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError

    from streams.worker import Worker, make_app

    try:
        app = make_app(settings)
    except KafkaError as e:  # the topics could not be created as the settings ask (replicas, rights)
        print(f"error: the worker's topics: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    # faust's own line format unless asked for JSON lines (which faust, setting up logging, would replace)
    json_lines = ({"logging_config": logs.config("json", args.loglevel.upper(), sys.stdout)}
                  if settings.log_format == "json" else {})
    worker = Worker(app, settings, loglevel=args.loglevel, quiet=True, **json_lines)
    worker.execute_from_commandline()
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.producer import SendError, send_all
    from streams.simulate import generate
    from streams.topics import ensure_topics

    traffic = generate(seed=args.seed, vehicles=args.vehicles, sites=args.sites, hours=args.hours,
                       malformed=args.malformed, late=args.late, start_ts=args.start)
    print(f"simulated {traffic.valid_reads:,} reads of {len(traffic.truth):,} passes by {args.vehicles:,} "
          f"vehicles, plus {traffic.malformed:,} malformed messages", file=sys.stderr)
    if args.truth:
        Path(args.truth).write_bytes(b"\n".join(traffic.truth_json()) + b"\n")
    if args.output:
        with open(args.output, "wb") as f:
            for _, value in traffic.messages:
                f.write(value.replace(b"\n", b" ") + b"\n")
        return 0
    ensure_topics(settings)
    try:
        send_all(settings, settings.topic_reads, traffic.messages, rate=args.rate,
                 duration=args.duration, progress=True, total=len(traffic.messages))
    except SendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from streams.producer import SendError, send_all
    from streams.topics import ensure_topics

    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115

    def messages() -> object:
        for line in src:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            key = None
            try:
                doc = orjson.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("camera_id"), str):
                    key = doc["camera_id"].encode()
            except orjson.JSONDecodeError:
                pass  # sent as is: the worker dead-letters it with the reason
            yield key, line

    ensure_topics(settings)
    try:
        n = send_all(settings, args.topic or settings.topic_reads, messages(),  # type: ignore[arg-type]
                     rate=args.rate, progress=True)
    except SendError as e:  # the rest were acknowledged: the worker stores them
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"produced {n} messages", file=sys.stderr)
    return 0


def _error(e: Exception) -> int:
    code = getattr(e, "code", "invalid_query")
    rule = getattr(e, "rule", None)
    print(f"error [{code}]: {e}" + (f" (rule {rule})" if rule else ""), file=sys.stderr)
    return 2


def _governed_query(args: argparse.Namespace, settings: Settings, action: str, terms: Callable[[], dict],
                   run: Callable[[Access, Policy, Context], GovernedResult]) -> GovernedResult | int:
    """Authenticate, check purpose and case (refusals audited), run the query; an exit code on refusal."""
    from streams.access import access
    from streams.audit import AuditError
    from streams.policy import PolicyError
    from streams.query import QueryError, checked_context
    from streams.store import CellBucketError

    try:
        with access(settings) as acc:
            policy = acc.policy()
            ctx = checked_context(policy, acc.audit, args.token or settings.token, args.purpose, args.case,
                                  action, terms())
            return run(acc, policy, ctx)
    except (PolicyError, QueryError, AuditError, CellBucketError) as e:
        return _error(e)


def _print_result(result: GovernedResult, fmt: str, what: str) -> int:
    if fmt == "table":
        print_trail(result.rows)
    else:
        write_rows(result.rows, fmt, sys.stdout)
    withheld = sorted(set(result.refused.values()))
    print(f"audit record #{result.audit_seq}; {len(result.rows)} sightings{what}"
          + (f"; other agencies' data withheld by: {', '.join(withheld)}" if withheld else ""), file=sys.stderr)
    return 0


def cmd_trail(args: argparse.Namespace, settings: Settings) -> int:
    from streams.query import governed_trail, trail_terms

    def run(acc: Access, policy: Policy, ctx: Context) -> GovernedResult:
        return governed_trail(acc.client, settings, policy, ctx, acc.audit, args.plate, args.region, args.since,
                              args.until, args.limit)

    result = _governed_query(args, settings, "query.trail", lambda: trail_terms(settings, args.plate, args.region),
                             run)
    return result if isinstance(result, int) else _print_result(result, args.format, "")


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from streams.query import pattern_terms, plate_search

    def run(acc: Access, policy: Policy, ctx: Context) -> GovernedResult:
        return plate_search(acc.client, settings, policy, ctx, acc.audit, args.pattern, args.region, args.since,
                            args.until, args.limit)

    result = _governed_query(args, settings, "query.plate_search",
                             lambda: pattern_terms(settings, args.pattern, args.region), run)
    if isinstance(result, int):
        return result
    return _print_result(result, args.format, f" of {len({r['plate'] for r in result.rows})} plates")


def cmd_area(args: argparse.Namespace, settings: Settings) -> int:
    from streams.query import QueryError, area_search, polygon_search

    def run(acc: Access, policy: Policy, ctx: Context) -> GovernedResult:
        if args.polygon:
            return polygon_search(acc.client, settings, policy, ctx, acc.audit, args.polygon, args.since,
                                  args.until)
        if None in (args.lat, args.lon, args.radius):
            raise QueryError("give --lat, --lon and --radius, or --polygon")
        return area_search(acc.client, settings, policy, ctx, acc.audit, args.lat, args.lon, args.radius,
                           args.since, args.until)

    terms = ({"polygon": args.polygon} if args.polygon else {"lat": args.lat, "lon": args.lon,
                                                               "radius_m": args.radius})
    terms.update(since=args.since, until=args.until)
    result = _governed_query(args, settings, "query.area", lambda: terms, run)
    if isinstance(result, int):
        return result
    return _print_result(result, args.format, f" of {len({r['vehicle'] for r in result.rows})} vehicles")


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from streams.access import access
    from streams.audit import AuditError
    from streams.policy import PolicyError

    try:
        with access(settings, publish=args.action == "report") as acc:
            if args.action == "verify":
                v = acc.verify_audit(with_copies=not args.redis_only)
                copies = (f"; {v.witnessed} checked against their copies in {settings.topic_audit}"
                          if v.witnessed is not None else
                          "; not checked against the audit topic (records removed from the end would not show)"
                          if v.ok else "")
                print(f"audit chain: {'OK' if v.ok else 'BROKEN'}, {v.records} verified records{copies}"
                      + ("" if v.ok else f"; first bad record {v.first_bad}: {v.reason}"))
                return 0 if v.ok else 1
            report = acc.audit_report(args.token or settings.token, args.agency)
    except PolicyError as e:
        return _error(e)
    except AuditError as e:
        print(f"audit: {e}" + ("; --redis-only checks the chain in Redis alone" if args.action == "verify" else ""),
              file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_share(args: argparse.Namespace, settings: Settings) -> int:
    from streams import sharing
    from streams.access import access
    from streams.policy import PolicyError

    try:
        with access(settings) as acc:
            policy = acc.policy()
            user = policy.authenticate(args.token or settings.token)
            if args.action == "request":
                out = sharing.request_access(acc.client, policy, acc.audit, user, args.agency, args.purposes,
                                             args.reason or "")
            elif args.action in ("approve", "refuse"):
                out = sharing.decide(acc.client, policy, acc.audit, user, args.agency, args.action == "approve",
                                     args.days, args.reason or "")
            else:
                rows = sharing.list_grants(acc.client, user.agency)
                sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
                return 0
    except PolicyError as e:
        return _error(e)
    sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_hotlist(args: argparse.Namespace, settings: Settings) -> int:
    from streams import hotlist
    from streams.access import access
    from streams.audit import AuditError
    from streams.policy import PolicyError
    from streams.query import QueryError, historical_hits

    try:
        with access(settings) as acc:
            policy = acc.policy()
            token = args.token or settings.token
            if args.action == "load":
                ctx = policy.context(token, "hotlist_response", args.case or "hotlist-load", role="admin")
                entries = hotlist.parse(args.target, ctx.agency.id)
                n = hotlist.store(acc.client, entries)
                acc.audit.append(action="hotlist.load", agency=ctx.agency.id, user=ctx.user.id,
                                 purpose="hotlist_response", case=ctx.case,
                                 terms={"entries": [e.id for e in entries]}, decision="recorded", result_count=n)
                print(f"loaded {n} entries for {ctx.agency.id}; new reads are matched within seconds")
                if args.history:
                    for e in entries:
                        try:
                            r = historical_hits(acc.client, settings, policy, ctx, acc.audit, e)
                        except QueryError as err:
                            print(f"  {e.id}: not run against history: {err}")
                            continue
                        print(f"  {e.id} ({e.region}): {len(r.rows)} historical sightings (audit #{r.audit_seq})")
                return 0
            ctx = policy.context(token, "hotlist_response", args.case)
            if args.action == "list":
                for e in hotlist.load_all(acc.client):
                    if e.agency == ctx.agency.id:
                        print(f"{e.id}  {e.plate:12s} {e.region:7s} p{e.priority}  {e.reason}")
                return 0
            found = [e for e in hotlist.load_all(acc.client) if e.id == args.target and e.agency == ctx.agency.id]
            if not found:
                print(f"error: no entry {args.target} of {ctx.agency.id}", file=sys.stderr)
                return 2
            result = historical_hits(acc.client, settings, policy, ctx, acc.audit, found[0])
    except (PolicyError, QueryError, AuditError, hotlist.HotlistError, OSError) as e:
        return _error(e)
    print_trail(result.rows)
    print(f"audit record #{result.audit_seq}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from streams.api import serve

    print(f"platestream API on http://{args.host}:{args.port} (OpenAPI at /openapi.json)", file=sys.stderr)
    serve(settings, args.host, args.port)
    return 0


def cmd_transparency(args: argparse.Namespace, settings: Settings) -> int:
    from streams.access import access
    from streams.transparency import markdown, report

    with access(settings, publish=False) as acc:
        rep = report(acc.client, acc.audit, args.agency, args.by)
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(rep, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(markdown(rep), end="")
    return 0


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from kafka.errors import KafkaError

    from streams.access import access
    from streams.policy import PolicyError
    from streams.retention import sweep
    from streams.store import LayoutError
    from streams.topics import apply_retention

    try:
        with access(settings, publish=False) as acc:
            policy = acc.policy()
            removed = sweep(acc.client, settings, policy, int(time.time() * 1000), full=args.full)
    except (PolicyError, LayoutError) as e:
        return _error(e)
    print(f"removed {sum(removed.values())} sightings past their agency's retention: {dict(removed)}")
    # and Kafka's copies, as a worker does at start and when the policy changes
    try:
        lowered = apply_retention(settings, policy, existing_only=True)
    except KafkaError as e:  # no ALTER_CONFIGS right, say: Redis is swept, Kafka keeps longer than it should
        print(f"error: Kafka topics' retention not set to the policy's: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"Kafka topics' retention lowered to the policy's: {lowered}" if lowered
          else "Kafka topics' retention already within the policy's")
    return 0


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    from streams.connect import redis_client
    from streams.dlq import chosen_by, letters, replay, summarize
    from streams.producer import SendError

    topic = args.topic or settings.topic_dlq
    if args.dlq_command == "summary":
        found = summarize(letters(settings, topic))
        if args.format == "json":
            print(orjson.dumps(found.to_dict()).decode())
            return 0
        if not found.letters:
            print(f"{topic}: no dead letters")
            return 0
        first, last = (datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
                       for ms in (found.first_ms or 0, found.last_ms or 0))
        print(f"{topic}: {found.letters:,} dead letters, written {first} .. {last}")
        for title, counts in (("reason", found.reasons), ("reason:field", found.fields), ("from topic", found.sources)):
            for name, n in counts.most_common():
                print(f"  {title:<13} {name:<40} {n:>10,}")
        if found.truncated:
            print(f"  {len(found.truncated):,} letters hold only the start of their message; whole at: "
                  + ", ".join(found.truncated[:10]) + (" ..." if len(found.truncated) > 10 else ""))
        return 0

    client = redis_client(settings)
    try:
        done = replay(settings, letters(settings, topic), chosen_by(args.reason or (), args.since), client,
                      to=args.to, dry_run=args.dry_run, again=args.again, topic=topic)
    except (KafkaError, SendError, RedisError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    verb = "would send" if args.dry_run else "sent"
    print(f"{verb} {sum(done.sent.values()):,} messages back: {dict(done.sent)}"
          + (f"; skipped {done.before:,} replayed before (--again sends them again)" if done.before else ""))
    if done.not_whole:
        print(f"{len(done.not_whole):,} chosen letters hold only the start of their message (whole at: "
              + ", ".join(done.not_whole[:10]) + (" ..." if len(done.not_whole) > 10 else "") + ")", file=sys.stderr)
    return 0


def cmd_store(args: argparse.Namespace, settings: Settings) -> int:
    from streams.connect import redis_client
    from streams.migrate import MigrationError, migrate

    client = redis_client(settings)
    try:
        done = migrate(client, settle_s=args.settle)
    except MigrationError as e:
        return _error(e)
    finally:
        client.close()
    if done.from_layout is None:
        print("nothing to migrate: Redis is fresh or already in this version's layout")
    else:
        print(f"migrated layout {done.from_layout} -> this version's: {done.members} sightings rewritten in "
              f"{done.trails} trails ({done.current} were already rewritten)")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    import secrets

    from streams.policy import Policy, PolicyError, token_hash

    if args.action == "token":
        token = secrets.token_urlsafe(32)
        print(f"token:        {token}\ntoken_sha256: {token_hash(token)}   <- put this in the policy file")
        return 0
    try:
        p = Policy.load(args.file)
    except (PolicyError, OSError) as e:
        return _error(e)
    print(f"{args.file}: valid; {len(p.agencies)} agencies, {len(p.users)} users")
    return 0


def print_trail(rows: list[dict]) -> None:
    if not rows:
        print("no sightings")
        return
    head = (f"{'time (UTC)':<25} {'camera':<12} {'agency':<16} {'lat':>10} {'lon':>11} {'geohash':<10} "
            f"{'conf':>5} {'reads':>5}  read_id")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{_iso(r['ts']):<25} {r['camera_id']:<12} {r['agency']:<16} {r['lat']:>10.5f} {r['lon']:>11.5f} "
              f"{r['geohash']:<10} {r['confidence']:>5.2f} {r['reads']:>5}  {r['read_id']}")


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(Path(args.state_dir), vehicles=args.vehicles)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="platestream", description=__doc__,
                                epilog="settings: " + ", ".join(ENV_VARS))
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start/stop the local Kafka (KRaft) + Redis stack")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--wipe", action="store_true", help="with down: delete Kafka and Redis data")
    s.add_argument("--state-dir", default=ENV_VARS["PLATESTREAM_STATE_DIR"][0])

    w = sub.add_parser("worker", help="run the stream processor (a faust worker)")
    w.add_argument("--loglevel", default="info")

    sim = sub.add_parser("simulate", help="produce simulated camera traffic (seeded, reproducible)")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--vehicles", type=int, default=2000)
    sim.add_argument("--sites", type=int, default=60)
    sim.add_argument("--hours", type=float, default=24.0, help="event-time span of the traffic")
    sim.add_argument("--malformed", type=float, default=0.01, help="share of malformed messages")
    sim.add_argument("--late", type=float, default=0.02, help="share of reads that arrive late")
    sim.add_argument("--rate", type=float, default=0.0, help="max messages/s (0 = unlimited)")
    sim.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    sim.add_argument("--start", type=_time, help="event time of the first read (default: hours before now)")
    sim.add_argument("--truth", help="write the ground-truth sightings to this JSONL file")
    sim.add_argument("--output", help="write the messages to this JSONL file instead of Kafka")

    pr = sub.add_parser("produce", help="send a JSONL file (or - for stdin) to the reads topic")
    pr.add_argument("file")
    pr.add_argument("--topic")
    pr.add_argument("--rate", type=float, default=0.0)

    t = sub.add_parser("trail", help="time-ordered sightings of one vehicle")
    t.add_argument("plate")
    t.add_argument("--region", required=True, help="issuing jurisdiction, e.g. US-CT")
    t.add_argument("--since", type=_time, help="epoch ms or ISO 8601")
    t.add_argument("--until", type=_time, help="epoch ms or ISO 8601")
    t.add_argument("--limit", type=_count)
    t.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default="table",
                   help="table for people; jsonl (= json) or csv to export")

    se = sub.add_parser("search", help="partial/wildcard plate search over stored history (OCR-tolerant)")
    se.add_argument("pattern", help="* = any run, ? = one character, e.g. '7AB*' or '?ABC12?'")
    se.add_argument("--region", help="issuing jurisdiction (default: every region)")
    se.add_argument("--since", type=_time, help="epoch ms or ISO 8601")
    se.add_argument("--until", type=_time, help="epoch ms or ISO 8601")
    se.add_argument("--limit", type=_count)
    se.add_argument("--format", choices=["table", "jsonl", "csv"], default="table")

    ar = sub.add_parser("area", help="which vehicles (by pseudonym) passed within a radius or polygon in a "
                                     "time range")
    ar.add_argument("--lat", type=float)
    ar.add_argument("--lon", type=float)
    ar.add_argument("--radius", type=float, help="metres (at most 50,000)")
    ar.add_argument("--polygon", type=_polygon, help="instead of a circle: 'lat,lon;lat,lon;lat,lon;...'")
    ar.add_argument("--since", type=_time, required=True, help="epoch ms or ISO 8601")
    ar.add_argument("--until", type=_time, required=True, help="epoch ms or ISO 8601")
    ar.add_argument("--format", choices=["jsonl", "json", "csv"], default="jsonl")
    for cmd in (t, se, ar):
        cmd.add_argument("--purpose", help="why you ask: one of the policy's purposes (required)")
        cmd.add_argument("--case", help="case number (required)")
        cmd.add_argument("--token", help="API token (default: PLATESTREAM_TOKEN)")

    au = sub.add_parser("audit", help="verify the audit chain, or report who queried what")
    au.add_argument("action", choices=["verify", "report"])
    au.add_argument("--agency", help="with report: the agency to report on")
    au.add_argument("--token", help="API token of an auditor (default: PLATESTREAM_TOKEN)")
    au.add_argument("--redis-only", action="store_true",
                    help="with verify: check the chain in Redis only, not against the audit topic's copies")

    sh = sub.add_parser("share", help="request, approve, refuse or list access to another agency's data")
    sh.add_argument("action", choices=["request", "approve", "refuse", "list"])
    sh.add_argument("--agency", help="request: the owner; approve/refuse: the requesting agency")
    sh.add_argument("--purposes", nargs="*", default=[], help="request: purposes asked for")
    sh.add_argument("--reason", help="request: why; approve/refuse: a note")
    sh.add_argument("--days", type=float, help="approve: grant lifetime in days (default: until revoked)")
    sh.add_argument("--token", help="API token of an admin (default: PLATESTREAM_TOKEN)")

    hl = sub.add_parser("hotlist", help="load hotlists, list them, or run an entry against stored history")
    hl.add_argument("action", choices=["load", "list", "history"])
    hl.add_argument("target", nargs="?", help="load: CSV/JSON file; history: entry id")
    hl.add_argument("--history", action="store_true", help="load: also run the new entries against history")
    hl.add_argument("--case", help="case number (required for list/history)")
    hl.add_argument("--token", help="API token (default: PLATESTREAM_TOKEN)")

    sv = sub.add_parser("serve", help="run the HTTP API (governed queries, sharing, audit verify)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)

    tr = sub.add_parser("transparency", help="publishable per-period report of an agency's collection and use")
    tr.add_argument("--agency", required=True)
    tr.add_argument("--by", choices=["day", "month"], default="month")
    tr.add_argument("--format", choices=["md", "json"], default="md")

    dl = sub.add_parser("dlq", help="count the dead letters by reason, or send rejected messages back")
    dls = dl.add_subparsers(dest="dlq_command", required=True)
    dsum = dls.add_parser("summary", help="dead letters by reason, field and source topic (no payloads)")
    dsum.add_argument("--topic", help="the dead-letter topic (default: PLATESTREAM_TOPIC_DLQ)")
    dsum.add_argument("--format", choices=("table", "json"), default="table")
    drep = dls.add_parser("replay", help="send dead-lettered messages back to the topic they came from, once "
                                         "what rejected them is fixed (they are dead-lettered again if not)")
    drep.add_argument("--topic", help="the dead-letter topic (default: PLATESTREAM_TOPIC_DLQ)")
    drep.add_argument("--reason", action="append", help="only letters with this reason (repeatable); without it, "
                      "letters of any reason but corrupt_batch (a damaged batch's records: name it to send them)")
    drep.add_argument("--since", type=_time, help="only letters written at or after this time (ISO 8601 or epoch ms)")
    drep.add_argument("--to", help="send to this topic instead of each message's own")
    drep.add_argument("--dry-run", action="store_true", help="count what would be sent, send nothing")
    drep.add_argument("--again", action="store_true",
                      help="also letters replayed before (each is otherwise sent back once, recorded in Redis)")
    rt = sub.add_parser("retention", help="run the retention sweeper once")
    rt.add_argument("action", choices=["sweep"])
    rt.add_argument("--full", action="store_true", help="read every trail below the newest cutoff, not only what "
                    "aged past a limit since the last complete pass")

    so = sub.add_parser("store", help="rewrite Redis data of an earlier layout in place (stop the workers first)")
    so.add_argument("action", choices=["migrate"])
    so.add_argument("--settle", type=float, default=5.0,
                    help="seconds the checkpoints must stand still before it begins (default 5)")

    po = sub.add_parser("policy", help="check a policy file, or make a new API token and its hash")
    po.add_argument("action", choices=["check", "token"])
    po.add_argument("file", nargs="?")

    d = sub.add_parser("demo", help="stack up, simulate, process, print a trail and the throughput")
    d.add_argument("--vehicles", type=int, default=6000)
    d.add_argument("--state-dir", default=ENV_VARS["PLATESTREAM_STATE_DIR"][0])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # (before the settings are read, which may fail: an unknown format is reported by them, logged as text)
    fmt = os.environ.get("PLATESTREAM_LOG_FORMAT", "text")
    logs.setup(fmt if fmt in logs.FORMATS else "text", logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("kafka", "aiokafka"):  # client libraries log every connection at INFO
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "stack":
        return cmd_stack(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "policy":
        return cmd_policy(args)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handler = {"worker": cmd_worker, "simulate": cmd_simulate, "produce": cmd_produce, "trail": cmd_trail,
               "search": cmd_search, "audit": cmd_audit, "share": cmd_share, "retention": cmd_retention,
               "store": cmd_store, "dlq": cmd_dlq, "hotlist": cmd_hotlist, "serve": cmd_serve, "area": cmd_area,
               "transparency": cmd_transparency}
    return handler[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
