"""A synthetic city of ALPR cameras with known ground truth (seeded, reproducible).

Sites hold 1-3 cameras; vehicles drive trips from site to site; each pass of a camera yields 1-6 frames
within two seconds, some with OCR confusions (always at lower confidence than the pass's best clean
frame, as a real OCR engine would score them). A share of reads arrives late (out of event-time order,
within the allowed lateness) and a share of messages is malformed. ``Traffic.truth`` lists every true
sighting, so tests can demand exactly one trail entry per pass with the right plate and read.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.kernels.plates import CONFUSABLE

_CONFUSE = {**CONFUSABLE, **{v: k for k, v in CONFUSABLE.items()}}
AGENCIES = ["hartford-pd", "westport-pd", "ct-state-police", "norwalk-pd", "stratford-pd"]
REGIONS = ["US-CT"] * 8 + ["US-NY", "US-MA"]
CENTER = (41.7637, -72.6851)  # Hartford, CT


@dataclass(frozen=True, slots=True)
class Camera:
    camera_id: str
    agency: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class TrueSighting:
    plate: str
    region: str
    camera_id: str
    agency: str
    ts: int
    ts_last: int
    reads: int
    best_read_id: str


@dataclass
class Traffic:
    messages: list[tuple[bytes, bytes]]  # (key = camera_id, value) in send order
    truth: list[TrueSighting]
    valid_reads: int
    malformed: int
    plates: dict[str, str] = field(default_factory=dict)  # plate -> region

    def truth_json(self) -> Iterator[bytes]:
        for t in self.truth:
            yield orjson.dumps(dataclasses.asdict(t))


def _plate(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.6:  # 7ABC123
        return (rng.choice(string.digits) + "".join(rng.choices(string.ascii_uppercase, k=3))
                + "".join(rng.choices(string.digits, k=3)))
    if style < 0.9:  # AB12345
        return "".join(rng.choices(string.ascii_uppercase, k=2)) + "".join(rng.choices(string.digits, k=5))
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=rng.randint(3, 7)))


def _confuse(plate: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(plate) if ch in _CONFUSE]
    if not spots:
        return plate
    i = rng.choice(spots)
    return plate[:i] + _CONFUSE[plate[i]] + plate[i + 1 :]


def _display(plate: str, rng: random.Random) -> str:
    """How a camera might print a plate: sometimes with a space or dash, sometimes lower case."""
    r = rng.random()
    if r < 0.1 and len(plate) > 3:
        return plate[:3] + "-" + plate[3:]
    if r < 0.15 and len(plate) > 3:
        return plate[:3] + " " + plate[3:]
    if r < 0.18:
        return plate.lower()
    return plate


def build_cameras(rng: random.Random, sites: int) -> list[list[Camera]]:
    out = []
    for s in range(sites):
        lat = CENTER[0] + rng.uniform(-0.08, 0.08)
        lon = CENTER[1] + rng.uniform(-0.1, 0.1)
        agency = rng.choice(AGENCIES)
        out.append([Camera(f"cam-{s:04d}-{k}", agency, round(lat + rng.uniform(-2e-4, 2e-4), 6),
                           round(lon + rng.uniform(-2e-4, 2e-4), 6)) for k in range(rng.randint(1, 3))])
    return out


def malformed_message(rng: random.Random, good: dict[str, Any]) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(20))
    if kind == 1:
        return orjson.dumps(good)[:-7]
    if kind == 2:
        return orjson.dumps([good])
    bad = dict(good)
    if kind == 3:
        del bad[rng.choice(["ts", "plate", "camera_id", "lat"])]
    elif kind == 4:
        bad["lat"] = 123.4
    elif kind == 5:
        bad["plate"] = "!!" + bad["plate"]
    elif kind == 6:
        bad["ts"] = "yesterday"
    else:
        bad["confidence"] = 1.7
    return orjson.dumps(bad)


def _earlier(reads: list[tuple[int, int, bytes, bytes, bytes | None]], truth: list[TrueSighting],
             ms: int) -> tuple[list[tuple[int, int, bytes, bytes, bytes | None]], list[TrueSighting]]:
    """The same traffic ``ms`` earlier: every read's capture and arrival time, and the true sightings' times
    (a malformed message stays as it is: it is dead-lettered whatever its time)."""
    loads, dumps = orjson.loads, orjson.dumps
    moved = []
    for arrive, n, key, value, bad in reads:
        doc = loads(value)
        doc["ts"] -= ms
        moved.append((arrive - ms, n, key, memoryview(dumps(doc)).tobytes(), bad))
    return moved, [dataclasses.replace(s, ts=s.ts - ms, ts_last=s.ts_last - ms) for s in truth]


def _generate(
    seed: int = 7, vehicles: int = 2000, sites: int = 60, hours: float = 24.0, trips_per_vehicle: float = 2.0,
    malformed: float = 0.01, late: float = 0.02, max_delay_s: int = 300, start_ts: int | None = None,
) -> Traffic:
    """Generate a seeded day of traffic; see the module docstring."""
    rng = random.Random(seed)
    cams = build_cameras(rng, sites)
    classes: set[str] = set()
    fleet: list[tuple[str, str]] = []
    while len(fleet) < vehicles:  # plates unique up to OCR confusion, so ground truth is unambiguous
        p = _plate(rng)
        cls = "".join(CONFUSABLE.get(c, c) for c in p)
        if cls not in classes:
            classes.add(cls)
            fleet.append((p, rng.choice(REGIONS)))
    span_ms = int(hours * 3_600_000)
    # unless given a start, the traffic ends by the hour before now (shifted there below: trips run past the
    # span), so retention limits apply realistically and no capture time is ahead of the moment it is sent
    end_by = None if start_ts is not None else int(time.time() // 3600 * 3600 * 1000)
    if start_ts is None:
        start_ts = (end_by or 0) - span_ms
    # (arrival time, sequence, key, message, malformed message sent just before it or None); documents
    # are serialized at once so millions of reads fit in memory
    reads: list[tuple[int, int, bytes, bytes, bytes | None]] = []
    truth: list[TrueSighting] = []
    n = 0
    for plate, region in fleet:
        trips = max(1, round(rng.expovariate(1 / trips_per_vehicle)))
        t = start_ts + rng.randrange(max(1, span_ms // (trips + 1)))
        for _ in range(trips):  # trips follow each other, so one vehicle is never in two places at once
            for _stop in range(rng.randint(2, 8)):
                cam = rng.choice(rng.choice(cams))
                frames = rng.choices([1, 2, 3, 4, 5, 6], weights=[15, 25, 25, 15, 12, 8])[0]
                best_conf = round(rng.uniform(0.8, 0.99), 4)
                best_i = rng.randrange(frames)
                first = ts = t
                ids = []
                for f in range(frames):
                    ts += rng.randint(80, 400) if f else 0
                    confused = f != best_i and rng.random() < 0.3
                    conf = best_conf if f == best_i else round(best_conf - rng.uniform(0.01, 0.3), 4)
                    text = _confuse(plate, rng) if confused else plate
                    read_id = f"r{seed:x}-{n:x}"
                    n += 1
                    ids.append(read_id)
                    doc: dict[str, Any] = {
                        "read_id": read_id, "camera_id": cam.camera_id, "agency": cam.agency,
                        "plate": _display(text, rng), "region": region, "ts": ts,
                        "lat": cam.lat, "lon": cam.lon, "confidence": conf,
                    }
                    if rng.random() < 0.3:
                        doc["heading"] = rng.randrange(360)
                        doc["vehicle"] = {"color": rng.choice(["white", "black", "silver", "red", "blue"])}
                    arrive = ts + (rng.randint(1, max_delay_s) * 1000 if rng.random() < late else 0)
                    bad_msg = malformed_message(rng, doc) if rng.random() < malformed else None
                    # orjson's result keeps its ~2 KiB working buffer; an exact-size copy keeps millions in RAM
                    value = memoryview(orjson.dumps(doc)).tobytes()
                    reads.append((arrive, n, cam.camera_id.encode(), value, bad_msg))
                    last = ts
                truth.append(TrueSighting(plate, region, cam.camera_id, cam.agency, first, last, frames,
                                          ids[best_i]))
                t = last + rng.randint(30_000, 600_000)  # drive to the next site
            t += rng.randrange(600_000, max(600_001, span_ms // trips))  # parked until the next trip
    if end_by is not None and reads and (over := max(r[0] for r in reads) - end_by) > 0:
        reads, truth = _earlier(reads, truth, over)
    # send in arrival order: a share of reads arrives late (event time stays, arrival is delayed)
    reads.sort(key=lambda r: (r[0], r[1]))
    messages: list[tuple[bytes, bytes]] = []
    bad = 0
    for _, _, key, value, bad_msg in reads:
        if bad_msg is not None:
            messages.append((key, bad_msg))
            bad += 1
        messages.append((key, value))
    return Traffic(messages, truth, len(reads), bad, dict(fleet))


def generate(**kwargs: Any) -> Traffic:
    """Generate a seeded day of traffic (see ``_generate`` for the parameters).

    The cyclic garbage collector is paused meanwhile: millions of long-lived tuples otherwise make each
    collection rescan them all, and generation time grows quadratically.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(**kwargs)
    finally:
        if enabled:
            gc.enable()
