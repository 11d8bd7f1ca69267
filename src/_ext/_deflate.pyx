# cython: language_level=3
"""Deflate (RFC 1951) blocks of literals only: Huffman coding without LZ77 matching.

The low-byte plane of a byte-shuffled camera chunk is photon noise: LZ77 finds almost no
matches there, yet a match search (ISA-L, zlib) spends most of a chunk's deflate time on it,
while Huffman coding alone reaches the same size (the noise's byte distribution is skewed;
that is what shrinks it). ``huffman_block`` codes such a plane as one dynamic-Huffman block
of literals, with a length-limited (15-bit) code built from the plane's own byte counts; the
writer puts it into an ordinary zlib stream next to LZ77-coded planes
(:mod:`fastims.compression`), so every inflate decodes it.

The kernel releases the GIL and has a pure-NumPy twin of the same name and signature in
:mod:`fastims._reference.deflate`, which writes the same bytes.
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

cdef enum:
    NSYM = 257        # literals 0..255 and end-of-block (256)
    EOB = 256
    MAX_BITS = 15     # deflate's longest code
    # header bits: BFINAL+BTYPE, HLIT, HDIST, HCLEN, 19 code-length-code lengths, then the
    # 257 literal/length and 2 distance code lengths at 4 bits each (see _write_header)
    HEADER_BITS = 3 + 5 + 5 + 4 + 19 * 3 + (NSYM + 2) * 4

# order in which the code-length code's lengths are sent (RFC 1951, 3.2.7)
cdef int _CL_ORDER[19]
_CL_ORDER[:] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]


cdef inline uint32_t _reverse(uint32_t code, int nbits) noexcept nogil:
    cdef uint32_t r = 0
    cdef int i
    for i in range(nbits):
        r = (r << 1) | (code & 1)
        code >>= 1
    return r


cdef struct _Bits:
    uint8_t* out
    Py_ssize_t pos
    uint64_t acc
    int n


cdef inline void _put(_Bits* b, uint32_t value, int nbits) noexcept nogil:
    """Append `nbits` (<= 32) bits, least significant first; whole 32-bit words are stored."""
    b.acc |= (<uint64_t>value) << b.n
    b.n += nbits
    if b.n >= 32:
        b.out[b.pos] = <uint8_t>b.acc
        b.out[b.pos + 1] = <uint8_t>(b.acc >> 8)
        b.out[b.pos + 2] = <uint8_t>(b.acc >> 16)
        b.out[b.pos + 3] = <uint8_t>(b.acc >> 24)
        b.pos += 4
        b.acc >>= 32
        b.n -= 32


cdef inline void _align(_Bits* b) noexcept nogil:
    """Store the pending bits, zero-padded to a whole byte."""
    while b.n > 0:
        b.out[b.pos] = <uint8_t>b.acc
        b.pos += 1
        b.acc >>= 8
        b.n -= 8 if b.n >= 8 else b.n


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _count(const uint8_t* s, Py_ssize_t n, uint64_t* freq) noexcept nogil:
    # four interleaved sub-counts, so repeated bytes do not chain their increments
    cdef uint32_t sub[4][256]
    cdef Py_ssize_t i = 0, start = 0, stop
    cdef int j
    while start < n:
        stop = start + (1 << 30) if n - start > (1 << 30) else n  # no uint32 overflow
        memset(sub, 0, sizeof(sub))
        i = start
        while i + 4 <= stop:
            sub[0][s[i]] += 1
            sub[1][s[i + 1]] += 1
            sub[2][s[i + 2]] += 1
            sub[3][s[i + 3]] += 1
            i += 4
        while i < stop:
            sub[0][s[i]] += 1
            i += 1
        for j in range(256):
            freq[j] += <uint64_t>sub[0][j] + sub[1][j] + sub[2][j] + sub[3][j]
        start = stop


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _code_lengths(const uint64_t* freq, uint8_t* length) noexcept nogil:
    """Huffman code lengths (<= MAX_BITS) of the NSYM symbols; 0 for symbols never used.

    Two-queue Huffman construction over the used symbols sorted by (count, symbol), then the
    JPEG length-limiting step (ITU T.81 Annex K.3) when a code would exceed 15 bits, and the
    lengths handed out again by count, shortest to the most frequent. Needs >= 2 used symbols.
    """
    cdef int sym[NSYM]
    cdef uint64_t weight[2 * NSYM]
    cdef int parent[2 * NSYM]
    cdef int depth[2 * NSYM]
    cdef int bl_count[2 * NSYM]
    cdef int m = 0, i, j, k, s, node, a, b, leaf, inner, maxlen
    cdef uint64_t w
    for s in range(NSYM):
        length[s] = 0
        if freq[s]:
            # insertion sort by (count, symbol): at most 257 symbols
            j = m
            while j > 0 and freq[sym[j - 1]] > freq[s]:
                sym[j] = sym[j - 1]
                j -= 1
            sym[j] = s
            m += 1
    for i in range(m):
        weight[i] = freq[sym[i]]
    # leaves 0..m-1 in ascending weight; inner nodes m.. are made in ascending weight too
    leaf = 0
    inner = m
    for node in range(m, 2 * m - 1):
        for k in range(2):
            if leaf < m and (inner >= node or weight[leaf] <= weight[inner]):
                a = leaf
                leaf += 1
            else:
                a = inner
                inner += 1
            if k == 0:
                b = a
        weight[node] = weight[a] + weight[b]
        parent[a] = node
        parent[b] = node
    depth[2 * m - 2] = 0
    for node in range(2 * m - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    memset(bl_count, 0, sizeof(bl_count))
    maxlen = 0
    for i in range(m):
        bl_count[depth[i]] += 1
        if depth[i] > maxlen:
            maxlen = depth[i]
    # move leaves up from beyond the limit, keeping the code complete (Kraft sum 1)
    i = maxlen
    while i > MAX_BITS:
        while bl_count[i] > 0:
            j = i - 2
            while bl_count[j] == 0:
                j -= 1
            bl_count[i] -= 2
            bl_count[i - 1] += 1
            bl_count[j + 1] += 2
            bl_count[j] -= 1
        i -= 1
    # the most frequent symbols (end of sym[]) get the shortest codes
    k = m - 1
    for i in range(1, MAX_BITS + 1):
        for j in range(bl_count[i]):
            length[sym[k]] = <uint8_t>i
            k -= 1


cdef void _canonical(const uint8_t* length, int nsym, uint32_t* code) noexcept nogil:
    """Canonical deflate codes (RFC 1951, 3.2.2), bit-reversed for LSB-first output."""
    cdef int bl_count[MAX_BITS + 1]
    cdef uint32_t next_code[MAX_BITS + 2]
    cdef int s, i
    cdef uint32_t c = 0
    memset(bl_count, 0, sizeof(bl_count))
    for s in range(nsym):
        bl_count[length[s]] += 1
    bl_count[0] = 0
    for i in range(1, MAX_BITS + 1):
        c = (c + bl_count[i - 1]) << 1
        next_code[i] = c
    for s in range(nsym):
        if length[s]:
            code[s] = _reverse(next_code[length[s]], length[s])
            next_code[length[s]] += 1
        else:
            code[s] = 0


cdef inline void _store64(uint8_t* p, uint64_t v) noexcept nogil:
    # little-endian whatever the host order, as deflate's bit order needs
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)
    p[4] = <uint8_t>(v >> 32)
    p[5] = <uint8_t>(v >> 40)
    p[6] = <uint8_t>(v >> 48)
    p[7] = <uint8_t>(v >> 56)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _encode(const uint8_t* s, Py_ssize_t n, const uint8_t* length, const uint32_t* code,
                  _Bits* b) noexcept nogil:
    """Append the codes of `n` bytes; needs 8 bytes of room past the last whole byte written.

    Three codes (<= 45 bits) join the < 8 pending bits, then all 8 bytes of the accumulator
    are stored and the pointer moves by the whole bytes among them (libdeflate's scheme): one
    unconditional store per three bytes of input instead of a test per code.
    """
    cdef uint32_t tab[256]
    cdef Py_ssize_t i = 0, pos
    cdef uint64_t acc
    cdef int nb, k
    cdef uint32_t e0, e1, e2, l0, l1
    cdef uint64_t bits
    cdef uint8_t* out = b.out
    # flush to fewer than 8 pending bits first
    while b.n >= 8:
        out[b.pos] = <uint8_t>b.acc
        b.pos += 1
        b.acc >>= 8
        b.n -= 8
    for k in range(256):
        tab[k] = code[k] | (<uint32_t>length[k] << 16)
    acc = b.acc
    nb = b.n
    pos = b.pos
    while i + 3 <= n:
        # the three codes are joined apart from the accumulator, so only one shift-or and
        # one add wait for the previous step
        e0 = tab[s[i]]
        e1 = tab[s[i + 1]]
        e2 = tab[s[i + 2]]
        l0 = e0 >> 16
        l1 = e1 >> 16
        bits = (e0 & 0xFFFF) | ((<uint64_t>(e1 & 0xFFFF)) << l0) | ((<uint64_t>(e2 & 0xFFFF)) << (l0 + l1))
        acc |= bits << nb
        nb += l0 + l1 + (e2 >> 16)
        _store64(out + pos, acc)
        pos += nb >> 3
        acc >>= nb & ~7
        nb &= 7
        i += 3
    b.acc = acc
    b.n = nb
    b.pos = pos
    while i < n:
        _put(b, code[s[i]], length[s[i]])
        i += 1


def huffman_block(const uint8_t[::1] src, uint8_t[::1] out, bint final=False) -> int:
    """Deflate `src` as one dynamic-Huffman block of literals only, into `out`.

    Parameters
    ----------
    src : ndarray of uint8, 1-D, C-contiguous
        Bytes to code (at least one).
    out : ndarray of uint8, 1-D
        Receives the block, starting at a byte boundary of the deflate stream.
    final : bool, default False
        Mark the block as the stream's last (BFINAL) and pad it to a whole byte. Otherwise
        an empty stored block follows (``00 00 ff ff``, as zlib's sync flush), so the block
        ends on a byte boundary and the next block can be appended as bytes.

    Returns
    -------
    int
        Bytes written; -1, with nothing written, when the block would not fit in `out`.
        ``len(src) + len(src) // 2048 + 160`` bytes always suffice: a Huffman code is never
        longer than 8 bits per byte plus one bit per occurrence of the rarest byte, the
        block header takes 139 bytes, and the encoder stores 8 bytes at a time.
    """
    cdef Py_ssize_t n = src.shape[0]
    cdef uint64_t freq[NSYM]
    cdef uint8_t length[NSYM + 2]
    cdef uint32_t code[NSYM]
    cdef uint64_t bits
    cdef Py_ssize_t nbytes
    cdef _Bits b
    cdef int i, s
    if n == 0:
        raise ValueError("huffman_block needs at least one byte")
    with nogil:
        memset(freq, 0, sizeof(freq))
        _count(&src[0], n, freq)
        freq[EOB] = 1
        _code_lengths(freq, length)
        length[NSYM] = 1  # two distance codes of one bit: never used, but a complete code
        length[NSYM + 1] = 1
        _canonical(length, NSYM, code)
        bits = HEADER_BITS
        for s in range(NSYM):
            bits += freq[s] * length[s]
        if not final:
            bits += 3
        nbytes = <Py_ssize_t>((bits + 7) // 8) + (0 if final else 4)
    if nbytes + 8 > out.shape[0]:  # _encode's 8-byte stores may pass the end by 8 bytes
        return -1
    with nogil:
        b.out = &out[0]
        b.pos = 0
        b.acc = 0
        b.n = 0
        _put(&b, (1 if final else 0) | (2 << 1), 3)  # BFINAL, BTYPE = 2 (dynamic Huffman)
        _put(&b, NSYM - 257, 5)  # HLIT
        _put(&b, 2 - 1, 5)  # HDIST
        _put(&b, 19 - 4, 4)  # HCLEN: all 19 code-length-code lengths follow
        # the code-length code: symbols 0..15 at 4 bits each (a complete code), 16..18 unused,
        # so every length is sent as itself; canonical code of symbol v is v
        for i in range(19):
            _put(&b, 0 if _CL_ORDER[i] >= 16 else 4, 3)
        for s in range(NSYM + 2):
            _put(&b, _reverse(length[s], 4), 4)
        _encode(&src[0], n, length, code, &b)
        _put(&b, code[EOB], length[EOB])
        if not final:
            _put(&b, 0, 3)  # an empty stored block: BFINAL 0, BTYPE 0, then byte-aligned
            _align(&b)
            _put(&b, 0xFFFF0000, 32)  # LEN = 0, NLEN = 0xffff
        _align(&b)
    return b.pos
