"""Pure-NumPy twin of :mod:`fastims._ext._deflate`: literals-only dynamic-Huffman deflate blocks.

Same name, signature and bytes as the compiled kernel; the test oracle.
"""

from __future__ import annotations

import numpy as np

__all__ = ["huffman_block"]

_NSYM = 257  # literals 0..255 and end-of-block
_EOB = 256
_MAX_BITS = 15
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _code_lengths(freq: list[int]) -> list[int]:
    """Length-limited Huffman code lengths, with the compiled kernel's exact tie-breaking."""
    syms = sorted((s for s in range(_NSYM) if freq[s]), key=lambda s: (freq[s], s))
    m = len(syms)
    weight = [freq[s] for s in syms] + [0] * (m - 1)
    parent = [0] * (2 * m - 1)
    leaf, inner = 0, m
    for node in range(m, 2 * m - 1):
        picked = []
        for _ in range(2):  # the lighter front of the leaf queue and the inner-node queue
            if leaf < m and (inner >= node or weight[leaf] <= weight[inner]):
                picked.append(leaf)
                leaf += 1
            else:
                picked.append(inner)
                inner += 1
        weight[node] = weight[picked[0]] + weight[picked[1]]
        parent[picked[0]] = parent[picked[1]] = node
    depth = [0] * (2 * m - 1)
    for node in range(2 * m - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    bl_count = [0] * (2 * _NSYM)
    for i in range(m):
        bl_count[depth[i]] += 1
    # ITU T.81 Annex K.3: move leaves up from beyond the limit, keeping the code complete
    for i in range(max(depth[:m]), _MAX_BITS, -1):
        while bl_count[i] > 0:
            j = i - 2
            while bl_count[j] == 0:
                j -= 1
            bl_count[i] -= 2
            bl_count[i - 1] += 1
            bl_count[j + 1] += 2
            bl_count[j] -= 1
    length = [0] * _NSYM
    k = m - 1  # the most frequent symbols get the shortest codes
    for i in range(1, _MAX_BITS + 1):
        for _ in range(bl_count[i]):
            length[syms[k]] = i
            k -= 1
    return length


def _reverse(code: int, nbits: int) -> int:
    return int(f"{code:0{nbits}b}"[::-1], 2) if nbits else 0


def _canonical(length: list[int]) -> list[int]:
    """Canonical codes (RFC 1951, 3.2.2), bit-reversed for LSB-first output."""
    bl_count = [0] * (_MAX_BITS + 1)
    for n in length:
        bl_count[n] += 1
    bl_count[0] = 0
    next_code = [0] * (_MAX_BITS + 2)
    code = 0
    for i in range(1, _MAX_BITS + 1):
        code = (code + bl_count[i - 1]) << 1
        next_code[i] = code
    codes = []
    for n in length:
        if n:
            codes.append(_reverse(next_code[n], n))
            next_code[n] += 1
        else:
            codes.append(0)
    return codes


def huffman_block(src: np.ndarray, out: np.ndarray, final: bool = False) -> int:
    """Deflate `src` as one dynamic-Huffman block of literals only, into `out`.

    Returns the bytes written, or -1 (nothing written) when `out` is too small; see the
    compiled kernel for the layout.
    """
    for name, arr in (("src", src), ("out", out)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 1-D uint8 array")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if src.shape[0] == 0:
        raise ValueError("huffman_block needs at least one byte")
    freq = [int(x) for x in np.bincount(src, minlength=256)] + [1]
    length = _code_lengths(freq)
    codes = _canonical(length)
    # the header: BFINAL + BTYPE 2, HLIT, HDIST, HCLEN, the code-length code (symbols 0..15
    # at 4 bits, whose canonical code of v is v), then 257 + 2 code lengths
    head = [(int(final) | (2 << 1), 3), (_NSYM - 257, 5), (2 - 1, 5), (19 - 4, 4)]
    head += [(0 if s >= 16 else 4, 3) for s in _CL_ORDER]
    head += [(_reverse(n, 4), 4) for n in [*length, 1, 1]]
    tail = [(codes[_EOB], length[_EOB])] + ([] if final else [(0, 3)])
    table_codes = np.array(codes[:256], np.uint32)
    table_lengths = np.array(length[:256], np.int64)
    values = np.concatenate([np.array([v for v, _ in head], np.uint32), table_codes[src],
                             np.array([v for v, _ in tail], np.uint32)])
    widths = np.concatenate([np.array([w for _, w in head], np.int64), table_lengths[src],
                             np.array([w for _, w in tail], np.int64)])
    total = int(widths.sum())
    nbytes = -(-total // 8) + (0 if final else 4)
    if nbytes + 8 > out.shape[0]:
        return -1
    starts = np.cumsum(widths) - widths
    bits = np.zeros(total, np.uint8)
    for b in range(_MAX_BITS):
        sel = widths > b
        bits[starts[sel] + b] = (values[sel] >> b) & 1
    packed = np.packbits(bits, bitorder="little").tobytes()
    if not final:
        packed += b"\x00\x00\xff\xff"  # the empty stored block's LEN and NLEN
    out[: len(packed)] = np.frombuffer(packed, np.uint8)
    return len(packed)
