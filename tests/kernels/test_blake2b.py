"""The batch BLAKE2b kernel against ``hashlib.blake2b``, byte for byte."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kernels.blake2b import Blake2b

# around the 128-byte block boundary on purpose: exactly one block, one byte more, two blocks, ...
message = st.binary(max_size=300) | st.sampled_from([b"a" * n for n in (127, 128, 129, 255, 256, 257)])


def _bounds(messages: list[bytes]) -> np.ndarray:
    out = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum([len(m) for m in messages], out=out[1:])
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=12), st.integers(1, 64))
def test_unkeyed_digests_match_hashlib(messages: list[bytes], size: int) -> None:
    got = Blake2b(size).digests(b"".join(messages), _bounds(messages))
    assert [row.tobytes() for row in got] == [hashlib.blake2b(m, digest_size=size).digest() for m in messages]


@settings(max_examples=200, deadline=None)
@given(st.lists(message.filter(len), max_size=12), st.binary(min_size=1, max_size=64), st.integers(1, 64))
def test_keyed_digests_match_hashlib(messages: list[bytes], key: bytes, size: int) -> None:
    got = Blake2b(size, key).digests(b"".join(messages), _bounds(messages))
    assert [row.tobytes() for row in got] == [hashlib.blake2b(m, key=key, digest_size=size).digest()
                                              for m in messages]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12), st.binary(min_size=1, max_size=64))
def test_strings_are_hashed_as_utf8(texts: list[str], key: bytes) -> None:
    texts = [t + "|" for t in texts]  # keyed messages are never empty (the vehicle ids' "region|plate")
    got = Blake2b(12, key).of_strings(texts)
    assert [row.tobytes() for row in got] == [hashlib.blake2b(t.encode(), key=key, digest_size=12).digest()
                                              for t in texts]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), max_size=12), st.binary(max_size=150))
def test_decimals_are_hashed_after_the_prefix(numbers: list[int], prefix: bytes) -> None:
    got = Blake2b(8).of_decimals(prefix, np.array(numbers, dtype=np.int64))
    assert [row.tobytes() for row in got] == [hashlib.blake2b(prefix + str(n).encode(), digest_size=8).digest()
                                              for n in numbers]


def test_refuses_what_it_would_get_wrong() -> None:
    with pytest.raises(ValueError, match="must not be empty"):  # the key block would have to be the last
        Blake2b(12, b"key").digests(b"ab", np.array([0, 0, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        Blake2b(8).of_decimals(b"p", np.array([-1], dtype=np.int64))
    with pytest.raises(ValueError, match="digest size"):
        Blake2b(65)
