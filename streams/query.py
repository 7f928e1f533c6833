"""Trail lookup: the time-ordered sightings of one vehicle, read from its pseudonymous Redis trail."""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from streams.kernels.geohash import geohash_strings
from streams.records import Invalid, normalize_plate, validate_read
from streams.settings import Settings
from streams.store import read_trail, trail_key, vehicle_id


class QueryError(ValueError):
    """A query argument is invalid (the message says which and why)."""


def _check_plate(plate: str, region: str) -> str:
    probe = {"read_id": "q", "camera_id": "q", "agency": "q", "plate": plate, "region": region, "ts": 0,
             "lat": 0, "lon": 0, "confidence": 1}
    try:
        validate_read(probe)
    except Invalid as e:
        raise QueryError(e.detail) from None
    return normalize_plate(plate)


def trail(client: redis.Redis, settings: Settings, plate: str, region: str, since: int | None = None,
          until: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Sightings of ``plate`` in ``region`` with first capture time in [since, until] (epoch ms), oldest first."""
    norm = _check_plate(plate, region)
    key = trail_key(vehicle_id(settings.hash_key, region, norm))
    out = []
    for s in read_trail(client, key, "-inf" if since is None else since, "+inf" if until is None else until,
                        limit):
        d = s.as_dict()
        d["plate"] = norm
        d["region"] = region
        d["geohash"] = geohash_strings(np.array([d["lat"]]), np.array([d["lon"]]), settings.geohash_precision)[0]
        out.append(d)
    return out
