"""The dead-letter topic for operators: what was rejected and why (``platestream dlq summary``), and sending
rejected messages back to their topic once what rejected them is fixed (``platestream dlq replay``).

A summary shows counts, never payloads: the payloads are raw camera reads, plates in clear. A replay sends each
chosen letter's original key and payload to the topic it came from, where the worker takes it like any other
message: stored, merged, or dead-lettered again (with a new letter) if it is still rejected. Letters cut to fit
Kafka (``value_truncated``) cannot be replayed from the letter; the summary and the replay name where the whole
message is. A letter is replayed once: the letters sent are recorded in Redis (``REPLAYED_KEY``), and a later
replay skips them unless told ``again``; ``--since`` picks letters by when they were dead-lettered. (A DLQ topic
deleted and made again restarts its offsets: its first replay needs ``again``.)
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from streams.producer import send_all
from streams.records import CORRUPT_BATCH
from streams.settings import Settings
from streams.topics import read_to_end


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it is in the DLQ topic, when it was written there, and its record (``dlq.v1``)."""

    partition: int
    offset: int
    timestamp: int
    record: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.record.get("reason"))

    @property
    def source(self) -> str:
        """topic/partition@offset of the rejected message."""
        r = self.record
        return f"{r.get('topic')}/{r.get('partition')}@{r.get('offset')}"

    def original(self) -> tuple[bytes | None, bytes] | None:
        """The rejected message's key and payload, or None if the letter holds only part of it."""
        r = self.record
        if r.get("value_truncated"):
            return None
        value = str(r.get("value", ""))
        payload = base64.b64decode(value) if r.get("value_encoding") == "base64" else value.encode()
        key = r.get("key")
        return (None if key is None else str(key).encode()), payload


# reasons a replay sends back only when named (``--reason``): a damaged record batch's letters hold its records as
# read, and one of them is damaged; if it still passes validation (a plate one bit off is another vehicle's), a
# replay would store it as a true sighting
NAMED_ONLY = frozenset({CORRUPT_BATCH})


def chosen_by(reasons: Collection[str] = (), since: int | None = None) -> Callable[[Letter], bool]:
    """Which letters a replay picks: those of ``reasons`` (none given: of any reason but ``NAMED_ONLY``'s), written
    at or after ``since`` (epoch ms)."""
    wanted = frozenset(reasons)

    def chosen(letter: Letter) -> bool:
        reason_ok = letter.reason in wanted if wanted else letter.reason not in NAMED_ONLY
        return reason_ok and (since is None or letter.timestamp >= since)

    return chosen


def letters(s: Settings, topic: str | None = None, timeout_ms: int = 10_000) -> Iterator[Letter]:
    """Every letter in the DLQ topic (``topic``: another one) as of now, partition by partition, oldest first
    (partitions whose letters retention, which follows the policy, deleted are skipped)."""
    for rec in read_to_end(s, topic or s.topic_dlq, timeout_ms):
        yield Letter(rec.partition, rec.offset, rec.timestamp, orjson.loads(rec.value))


@dataclass
class Summary:
    """Counts of dead letters by reason, by reason and field, and by source topic; the letters cut to fit."""

    letters: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    fields: Counter[str] = field(default_factory=Counter)  # "reason:field"
    sources: Counter[str] = field(default_factory=Counter)
    truncated: list[str] = field(default_factory=list)  # where each whole message is (``Letter.source``)
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, letter: Letter) -> None:
        self.letters += 1
        self.reasons[letter.reason] += 1
        if letter.record.get("field") is not None:
            self.fields[f"{letter.reason}:{letter.record['field']}"] += 1
        self.sources[str(letter.record.get("topic"))] += 1
        if letter.record.get("value_truncated"):
            self.truncated.append(letter.source)
        self.first_ms = letter.timestamp if self.first_ms is None else min(self.first_ms, letter.timestamp)
        self.last_ms = letter.timestamp if self.last_ms is None else max(self.last_ms, letter.timestamp)

    def to_dict(self) -> dict[str, Any]:
        return {"letters": self.letters, "reasons": dict(self.reasons.most_common()),
                "fields": dict(self.fields.most_common()), "sources": dict(self.sources.most_common()),
                "truncated": self.truncated, "first_ms": self.first_ms, "last_ms": self.last_ms}


def summarize(found: Iterator[Letter]) -> Summary:
    out = Summary()
    for letter in found:
        out.add(letter)
    return out


# per DLQ topic and partition: the offsets of the letters replayed (as scores), so a replay does not send a letter
# twice (a replayed read would count twice in its sighting); pruned below the oldest letter the partition still holds
REPLAYED_KEY = "ps:dlq:replayed:{}:{}"


def replayed_key(topic: str, partition: int) -> str:
    return REPLAYED_KEY.format(topic, partition)


@dataclass
class Replay:
    """What a replay sent (by topic), the chosen letters it could not send (cut to fit: their sources), and the
    chosen letters it skipped as replayed before."""

    sent: Counter[str] = field(default_factory=Counter)
    not_whole: list[str] = field(default_factory=list)
    before: int = 0


def replay(s: Settings, found: Iterator[Letter], chosen: Callable[[Letter], bool], client: redis.Redis,
           to: str | None = None, dry_run: bool = False, again: bool = False, topic: str | None = None) -> Replay:
    """Send each ``chosen`` letter's original message back to the topic it came from (``to``: that topic
    instead), in the order the letters are found; ``dry_run``: count only. Letters of ``topic`` (the DLQ topic,
    default the setting's) replayed before are skipped unless ``again``; the ones sent are recorded in Redis
    once every message is acknowledged (``send_all``, which raises otherwise): a replay that fails part-way
    records none, and the next sends its letters again (at least once, never lost)."""
    dlq_topic = topic or s.topic_dlq
    out = Replay()
    picked: list[Letter] = []
    oldest: dict[int, int] = {}
    for letter in found:
        oldest[letter.partition] = min(oldest.get(letter.partition, letter.offset), letter.offset)
        if chosen(letter):
            picked.append(letter)
    if picked and not again:
        parts = sorted({x.partition for x in picked})
        with client.pipeline(transaction=False) as pipe:
            for p in parts:
                pipe.zmscore(replayed_key(dlq_topic, p), [str(x.offset) for x in picked if x.partition == p])
            done = {(p, off) for p, scores in zip(parts, pipe.execute(), strict=True)
                    for off in (int(x) for x in scores if x is not None)}
        out.before = sum((x.partition, x.offset) in done for x in picked)
        picked = [x for x in picked if (x.partition, x.offset) not in done]
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {}
    sending: list[Letter] = []
    for letter in picked:
        message = letter.original()
        if message is None:
            out.not_whole.append(letter.source)
            continue
        by_topic.setdefault(to or str(letter.record.get("topic")), []).append(message)
        sending.append(letter)
    for target, messages in by_topic.items():
        out.sent[target] = len(messages) if dry_run else send_all(s, target, messages)
    if not dry_run:
        with client.pipeline(transaction=False) as pipe:
            for p, start in oldest.items():
                key = replayed_key(dlq_topic, p)
                pipe.zremrangebyscore(key, "-inf", f"({start}")  # letters retention has deleted
                offsets = [x.offset for x in sending if x.partition == p]
                if offsets:
                    pipe.zadd(key, {str(o): o for o in offsets})
            pipe.execute()
    return out
