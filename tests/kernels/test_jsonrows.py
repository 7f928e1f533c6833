"""Column-wise JSON objects against ``orjson.dumps`` of each row's dict, byte for byte (the oracle is the encoder
the messages used to be written with)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.jsonrows import Template, split_array
from streams.pipeline import SIGHTING_COLUMNS, sighting_template

# strings with everything JSON escapes or a splitter could trip on: quotes, backslashes, commas, brackets, controls
text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(['",', "\\", "]", "},{", "\x00\n\t", "é😀"])
scalar = (text | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
          | st.none())
extra = st.none() | st.dictionaries(text, scalar | st.lists(scalar, max_size=3), max_size=3)


def _message(topic: str, partition: int, values: tuple[Any, ...], offset: int, more: Any) -> dict[str, Any]:
    """A sighting upsert as the pipeline built it before: a dict (then ``orjson.dumps``)."""
    msg: dict[str, Any] = {"schema": "platestream.sighting.v1", "op": "upsert",
                           **dict(zip(SIGHTING_COLUMNS, values, strict=True)),
                           "source": {"topic": topic, "partition": partition, "offset": offset}}
    if more is not None:
        msg["extra"] = more
    return msg


@settings(max_examples=300, deadline=None)
@given(text, st.integers(0, 2**31 - 1),
       st.lists(st.tuples(st.tuples(*[scalar] * len(SIGHTING_COLUMNS)), st.integers(0, 2**63 - 1), extra),
                max_size=25))
def test_sighting_messages_are_the_bytes_of_their_dicts(topic: str, partition: int,
                                                        rows: list[tuple[tuple[Any, ...], int, Any]]) -> None:
    columns = [list(col) for col in zip(*[values for values, _, _ in rows], strict=True)] or [
        [] for _ in SIGHTING_COLUMNS]
    template, optional = sighting_template(topic, partition), [m for _, _, m in rows]
    dicts = [_message(topic, partition, values, offset, more) for values, offset, more in rows]
    assert template.dumps([*columns, [o for _, o, _ in rows]], optional) == list(map(orjson.dumps, dicts))
    assert template.dumps_array([*columns, [o for _, o, _ in rows]], optional) == orjson.dumps(dicts)
    joined, ends = template.dumps_joined([*columns, [o for _, o, _ in rows]], optional)
    assert joined.tobytes() == b"".join(map(orjson.dumps, dicts))
    assert ends.tolist() == np.cumsum([len(orjson.dumps(d)) for d in dicts], dtype=np.int64).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(scalar | st.lists(scalar, max_size=3) | st.dictionaries(text, scalar, max_size=3), max_size=30))
def test_split_finds_each_element_of_an_array(values: list[Any]) -> None:
    raw = orjson.dumps(values)
    starts, ends = np.empty(len(values), np.int64), np.empty(len(values), np.int64)
    assert split_array(np.frombuffer(raw, np.uint8), len(values), starts, ends) == len(values)
    assert [raw[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)] == [orjson.dumps(v) for v in values]
    more, fewer = np.empty(len(values) + 1, np.int64), np.empty(len(values) + 1, np.int64)
    assert split_array(np.frombuffer(raw, np.uint8), len(values) + 1, more, fewer) == -1  # one more: not there
    if values:
        assert split_array(np.frombuffer(raw, np.uint8), len(values) - 1, more, fewer) == -1  # one left over


def test_a_column_of_another_length_or_shape_is_refused() -> None:
    t = Template([("a", 1), "b", "c"])
    assert t.dumps([[1, 2], ["x", "y"]]) == [b'{"a":1,"b":1,"c":"x"}', b'{"a":1,"b":2,"c":"y"}']
    assert t.dumps_array([[1, 2], ["x", "y"]]) == b'[{"a":1,"b":1,"c":"x"},{"a":1,"b":2,"c":"y"}]'
    assert t.dumps_array([[], []]) == b"[]"
    with pytest.raises(ValueError, match="does not have 2 values"):
        t.dumps_array([[1, 2], ["x"]])
    with pytest.raises(ValueError, match="does not have 2 values"):
        t.dumps([[1, 2], ["x"]])
    with pytest.raises(ValueError, match="columns"):
        t.dumps([[1, 2]])
    with pytest.raises(ValueError, match="optional column comes last"):
        Template(["a?", "b"])


def test_assemble_refuses_bounds_it_would_read_past() -> None:
    from streams.kernels.jsonrows import assemble

    lits, values = np.frombuffer(b"{}", np.uint8), np.frombuffer(b"12", np.uint8)
    bounds = np.array([0, 1, 2], np.int64)
    out, ends = assemble(lits, bounds, values, np.array([[0]], np.int64), np.array([[2]], np.int64))
    assert out.tobytes() == b"{12}" and ends.tolist() == [4]
    with pytest.raises(ValueError, match="outside"):
        assemble(lits, bounds, values, np.array([[0]], np.int64), np.array([[3]], np.int64))
    with pytest.raises(ValueError, match="literal"):
        assemble(lits, np.array([0, 1, 2, 2], np.int64), values, np.array([[0]], np.int64), np.array([[2]], np.int64))
    with pytest.raises(ValueError, match="a literal's bounds"):
        assemble(lits, np.array([0, 2, 1], np.int64), values, np.array([[0]], np.int64), np.array([[2]], np.int64))
    with pytest.raises(ValueError, match="a literal's bounds"):
        assemble(lits, np.array([-1, 1, 2], np.int64), values, np.array([[0]], np.int64), np.array([[2]], np.int64))
