"""The compiled literals-only Huffman kernel (``fastims._ext._deflate``) vs its NumPy twin and zlib."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastims._reference import deflate as ref

ext = pytest.importorskip("fastims._ext._deflate", reason="compiled _deflate not built")

SETTINGS = settings(max_examples=120, deadline=None)


def inflate(block: bytes, final: bool) -> bytes:
    """Raw-inflate one block (plus zlib's final empty block after a non-final one)."""
    d = zlib.decompressobj(-15)
    data = d.decompress(block + (b"" if final else b"\x03\x00"))
    assert d.eof and not d.unused_data
    return data


def bound(n: int) -> int:
    return n + n // 2048 + 160


@SETTINGS
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=3000),
        st.tuples(st.integers(1, 40000), st.integers(1, 256), st.integers(0, 2**32 - 1)).map(
            lambda a: np.random.default_rng(a[2]).integers(0, a[1], a[0], dtype=np.uint8).tobytes()
        ),
        st.tuples(st.integers(1, 40000), st.floats(0.05, 0.95), st.integers(0, 2**32 - 1)).map(
            lambda a: np.minimum(np.random.default_rng(a[2]).geometric(a[1], a[0]), 255).astype(np.uint8).tobytes()
        ),
    ),
    final=st.booleans(),
)
def test_huffman_block_matches_twin_and_inflates(data, final):
    src = np.frombuffer(data, np.uint8)
    outs = []
    for fn in (ext.huffman_block, ref.huffman_block):
        out = np.full(bound(src.size), 0xAB, np.uint8)
        n = fn(src, out, final)
        assert 0 < n <= bound(src.size) - 8
        outs.append(out[:n].tobytes())
    assert outs[0] == outs[1]
    assert inflate(outs[0], final) == data
    if not final:
        assert outs[0].endswith(b"\x00\x00\xff\xff")  # byte-aligned: the next block joins as bytes


def test_codes_longer_than_15_bits_are_limited():
    """Fibonacci counts make an unlimited Huffman code 29 bits deep; deflate allows 15."""
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    src = np.repeat(np.arange(30, dtype=np.uint8), fib)
    np.random.default_rng(3).shuffle(src)
    blocks = []
    for fn in (ext.huffman_block, ref.huffman_block):
        out = np.empty(bound(src.size), np.uint8)
        blocks.append(out[: fn(src, out, True)].tobytes())
    assert blocks[0] == blocks[1]
    assert inflate(blocks[0], True) == src.tobytes()
    assert len(blocks[0]) < src.size // 3  # still a compact code


def test_worst_case_bound_and_refusal():
    src = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8)  # incompressible
    for fn in (ext.huffman_block, ref.huffman_block):
        out = np.empty(bound(src.size), np.uint8)
        n = fn(src, out, False)
        assert n > 0 and inflate(out[:n].tobytes(), False) == src.tobytes()
        small = np.full(n, 0xAB, np.uint8)  # fits the block, not the encoder's 8 spare bytes
        assert fn(src, small, False) == -1
        assert (small == 0xAB).all()  # nothing written
        with pytest.raises(ValueError, match="at least one byte"):
            fn(np.empty(0, np.uint8), out)
        with pytest.raises((TypeError, ValueError)):
            fn(src.view(np.uint16), out)
