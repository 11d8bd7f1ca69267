# cython: language_level=3
"""Chunk gather/pad and HDF5 byte-shuffle kernels.

``gather_chunk`` cuts one chunk out of a C-contiguous (Z, Y, X) slab and pads the part of the
chunk that lies beyond the slab with zeros, as HDF5 edge chunks and Imaris' padded ``Data``
need; ``gather_row`` does the same for a run of chunks of a slab held in parts (the engine's
slabs), in one call, optionally byte-shuffling as it copies. ``shuffle``/``unshuffle`` implement HDF5's byte-shuffle filter (filter id
2, ``H5Zshuffle.c``) bit for bit, including its handling of trailing bytes. ``lz4_frame`` writes
the HDF5-LZ4 frame (filter 32004) of a chunk into a caller's buffer through liblz4's
``LZ4_compress_fast``, the noise planes of a shuffled chunk as plain literals;
``lz4_frames`` shuffles and frames a run of chunks in one call. ``stream_copy`` copies bytes the
CPU will not read again soon with streaming stores.

All kernels assume validated, C-contiguous input, release the GIL for the copy and have a
pure-NumPy twin of the same name and signature in :mod:`fastims._reference.chunks`. The typed
memoryview arguments check dtype, rank and contiguity; the hot loops run on raw pointers in
``noexcept nogil`` helpers, so no bounds or wraparound checks are generated there.
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset

# gather_chunk only moves bytes, so the element type merely fixes the item size; float32 is
# listed so callers need not view it as uint32. Other dtypes of these widths (int16, ...)
# can be passed as ``arr.view(np.uintN)``.
ctypedef fused pixel_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t
    float

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Copy n bytes with non-temporal (streaming) stores where the CPU has them: the
       destination is not read into the cache first and not kept there afterwards. */
    static void fastims_stream_copy(char *dst, const char *src, size_t n) {
    #if defined(__SSE2__)
        size_t head = (16 - ((uintptr_t)dst & 15)) & 15, i = 0;
        if (head > n) head = n;
        memcpy(dst, src, head);
        dst += head; src += head; n -= head;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
            _mm_stream_si128((__m128i *)(dst + i), a);
            _mm_stream_si128((__m128i *)(dst + i + 16), b);
            _mm_stream_si128((__m128i *)(dst + i + 32), c);
            _mm_stream_si128((__m128i *)(dst + i + 48), d);
        }
        memcpy(dst + i, src + i, n - i);
        _mm_sfence();  /* the streamed bytes are visible to other threads and devices after this */
    #else
        memcpy(dst, src, n);
    #endif
    }
    """
    void fastims_stream_copy(char* dst, const char* src, size_t n) noexcept nogil


cdef enum:
    # elements per block in the generic shuffle, so the strided source block stays in L1
    _SHUFFLE_BLOCK = 2048
    # most output streams (chunks x byte planes) a shuffling gather_row writes at once, row by
    # row: the pages of 32 streams and the source stay within a 64-entry L1 data TLB; with 64
    # streams (a 4096-wide uint16 row) chunk by chunk was faster (4.0 against 3.3 GB/s)
    _RUN_STREAMS = 32


# ---------------------------------------------------------------------------------------
# gather + pad
# ---------------------------------------------------------------------------------------

@cython.cdivision(True)
cdef inline void _zero_bytes(char* out, Py_ssize_t off, Py_ssize_t nbytes, Py_ssize_t k,
                             Py_ssize_t n) noexcept nogil:
    """Zero chunk bytes [off, off + nbytes) of `out` (k > 1: of its HDF5 shuffle of `n` elements)."""
    cdef Py_ssize_t b
    if k <= 1:
        memset(out + off, 0, nbytes)
        return
    for b in range(k):
        memset(out + b * n + off // k, 0, nbytes // k)


@cython.cdivision(True)
cdef inline void _put_bytes(char* out, Py_ssize_t off, const char* src, Py_ssize_t nbytes,
                            Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Copy `src` to chunk bytes [off, off + nbytes) of `out`; with k > 1 `out` holds the
    chunk byte-shuffled (HDF5 filter 2, `n` elements of `k` bytes): byte b of element i is
    at ``out[b * n + i]``, so the copy splits the elements into their byte planes."""
    cdef Py_ssize_t i, b, m = nbytes // k, e = off // k
    cdef const uint8_t* s = <const uint8_t*>src
    cdef uint8_t* d = <uint8_t*>out + e
    if k <= 1:
        memcpy(out + off, src, nbytes)
    elif k == 2:
        for i in range(m):
            d[i] = s[2 * i]
            d[n + i] = s[2 * i + 1]
    elif k == 4:
        for i in range(m):
            d[i] = s[4 * i]
            d[n + i] = s[4 * i + 1]
            d[2 * n + i] = s[4 * i + 2]
            d[3 * n + i] = s[4 * i + 3]
    else:
        for b in range(k):
            for i in range(m):
                d[b * n + i] = s[i * k + b]


@cython.cdivision(True)
cdef inline void _put_clipped(char* out, Py_ssize_t off, const char* row, Py_ssize_t xs, Py_ssize_t width,
                              Py_ssize_t sx, Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Chunk bytes [off, off + width) of `out` from bytes [xs, xs + width) of the source row
    `row` (`sx` bytes long), zeros where that range lies outside the row (see _put_bytes)."""
    cdef Py_ssize_t xa = xs if xs > 0 else 0
    cdef Py_ssize_t xb = xs + width if xs + width < sx else sx
    if xb <= xa:
        _zero_bytes(out, off, width, k, n)
        return
    if xa > xs:
        _zero_bytes(out, off, xa - xs, k, n)
    _put_bytes(out, off + xa - xs, row + xa, xb - xa, k, n)
    if xs + width > xb:
        _zero_bytes(out, off + xb - xs, xs + width - xb, k, n)


@cython.cdivision(True)
cdef void _gather_bytes(
    const char* src, Py_ssize_t sz, Py_ssize_t sy, Py_ssize_t sx,
    Py_ssize_t z0, Py_ssize_t y0, Py_ssize_t x0,
    char* out, Py_ssize_t off, Py_ssize_t cz, Py_ssize_t cy, Py_ssize_t cx,
    Py_ssize_t itemsize, Py_ssize_t k, Py_ssize_t n,
) noexcept nogil:
    """Copy the in-bounds part of the chunk row by row; zero everything else.

    The chunk's planes are written at byte `off` of the chunk `out` (a run of a chunk's
    planes may come from one source); with `k` > 1, `out` holds the whole chunk of `n`
    elements byte-shuffled (see _put_bytes), else plainly.
    """
    cdef Py_ssize_t row = cx * itemsize
    cdef Py_ssize_t plane = cy * row
    cdef Py_ssize_t ya = y0 if y0 > 0 else 0
    cdef Py_ssize_t yb = y0 + cy if y0 + cy < sy else sy
    cdef Py_ssize_t kz, j, z, y, o
    cdef const char* s
    if x0 + cx <= 0 or x0 >= sx or yb <= ya:  # wholly outside the source
        _zero_bytes(out, off, cz * plane, k, n)
        return
    for kz in range(cz):
        z = z0 + kz
        o = off + kz * plane
        if z < 0 or z >= sz:
            _zero_bytes(out, o, plane, k, n)
            continue
        # rows above / below the slab, as one zeroing each
        if ya > y0:
            _zero_bytes(out, o, (ya - y0) * row, k, n)
        if y0 + cy > yb:
            _zero_bytes(out, o + (yb - y0) * row, (y0 + cy - yb) * row, k, n)
        s = src + (z * sy + ya) * sx * itemsize
        o = o + (ya - y0) * row
        if x0 == 0 and cx == sx:
            # chunk spans whole source rows: the in-bounds rows are one contiguous block
            _put_bytes(out, o, s, (yb - ya) * row, k, n)
            continue
        for j in range(yb - ya):
            _put_clipped(out, o, s, x0 * itemsize, row, sx * itemsize, k, n)
            o += row
            s += sx * itemsize


@cython.cdivision(True)
cdef void _gather_run(
    const char** ptrs, const Py_ssize_t* depths, Py_ssize_t nparts, Py_ssize_t g,
    Py_ssize_t sy, Py_ssize_t sx, Py_ssize_t y0, Py_ssize_t x0,
    char* op, Py_ssize_t step, Py_ssize_t n, Py_ssize_t cz, Py_ssize_t cy, Py_ssize_t cxb,
    Py_ssize_t k, Py_ssize_t nelem,
) noexcept nogil:
    """The n chunks of :func:`gather_row` spanning whole source rows, row by row: the slab is
    read once, in order, and each row's pieces go to the n chunks (k > 1: byte-shuffled).

    Chunk by chunk, a 1 MiB chunk of a 2048-wide uint16 slab reads 256 bytes from each of
    4096 pages; read in order, the prefetchers stream the slab. Shuffled whole rows of a
    uint16 slab, one thread: 512 / 1024 / 2048 wide 6.9 / 7.5 / 4.8-7.2 GB/s against 2.8 /
    3.6 / 4.0. Plain copies keep the chunk order: faster alone (8.5 against 6.7 GB/s), but
    uncompressed stacks were slower end to end in 5 of 7 alternating pairs.
    """
    cdef Py_ssize_t plane = cy * cxb
    cdef Py_ssize_t z, p, kz, j, ix, y, o
    cdef const char* s
    cdef bint inside = x0 >= 0 and x0 + n * cxb <= sx
    for z in range(cz):
        p = z // g
        kz = z - p * g
        o = z * plane
        if p >= nparts or ptrs[p] == NULL or kz >= depths[p]:
            for ix in range(n):
                _zero_bytes(op + ix * step, o, plane, k, nelem)
            continue
        for j in range(cy):
            y = y0 + j
            if y < 0 or y >= sy:
                for ix in range(n):
                    _zero_bytes(op + ix * step, o, cxb, k, nelem)
            else:
                s = ptrs[p] + (kz * sy + y) * sx
                if inside:  # the common case, without the bounds per chunk
                    for ix in range(n):
                        _put_bytes(op + ix * step, o, s + x0 + ix * cxb, cxb, k, nelem)
                    o += cxb
                    continue
                for ix in range(n):
                    _put_clipped(op + ix * step, o, s, x0 + ix * cxb, cxb, sx, k, nelem)
            o += cxb


def gather_chunk(
    const pixel_t[:, :, ::1] src,
    Py_ssize_t z0,
    Py_ssize_t y0,
    Py_ssize_t x0,
    pixel_t[:, :, ::1] out,
) -> None:
    """Copy ``src[z0:z0+cz, y0:y0+cy, x0:x0+cx]`` into `out`, zero-padding beyond `src`.

    Parameters
    ----------
    src : ndarray, shape (Z, Y, X), C-contiguous
        Source slab; uint8, uint16, uint32, uint64 or float32 (view other dtypes of these
        widths as the unsigned type of the same width).
    z0, y0, x0 : int
        Chunk origin in `src` coordinates. Any value is allowed: voxels of the chunk that fall
        outside `src` (including negative coordinates) are written as zeros.
    out : ndarray, shape (cz, cy, cx), C-contiguous, same dtype as `src`
        Destination chunk; every element is written. Must not overlap `src`.
    """
    cdef Py_ssize_t cz = out.shape[0], cy = out.shape[1], cx = out.shape[2]
    cdef Py_ssize_t sz = src.shape[0], sy = src.shape[1], sx = src.shape[2]
    cdef Py_ssize_t itemsize = sizeof(pixel_t)
    cdef const char* sp = NULL
    cdef char* op
    if cz == 0 or cy == 0 or cx == 0:
        return
    op = <char*>&out[0, 0, 0]
    if sz == 0 or sy == 0 or sx == 0:
        # empty source: the whole chunk is padding (x range test below handles it)
        sz = sy = sx = 0
    else:
        sp = <const char*>&src[0, 0, 0]
    with nogil:
        _gather_bytes(sp, sz, sy, sx, z0, y0, x0, op, 0, cz, cy, cx, itemsize, 1, 0)


def gather_row(list parts, Py_ssize_t g, Py_ssize_t depth, Py_ssize_t y0, Py_ssize_t x0,
               uint8_t[:, :, :, :] out, Py_ssize_t itemsize=1) -> None:
    """Cut consecutive chunks of a row out of a slab held in parts of `g` planes, zero-padded.

    One call per run of chunks instead of one per (chunk, part): the engine's slabs are
    lists of parts, and the Python overhead of a call per piece cost more than the copy.

    Parameters
    ----------
    parts : list of (ndarray of uint8, shape (g', Y, Xb), C-contiguous, or None)
        The slab's parts as bytes (``Xb`` = X times the item size); part ``k`` holds slab
        planes ``k * g`` onwards. None, or planes beyond `depth` or beyond a part's own
        length, read as zeros.
    g : int
        Planes per part (>= 1).
    depth : int
        Valid planes of the slab (the last slab of a stack may be shallower).
    y0 : int
        First row of the chunks, in slab coordinates.
    x0 : int
        First byte of the first chunk within a slab row (X times the item size).
    out : ndarray of uint8, shape (n, cz, cy, cxb)
        Receives chunk ``i`` = slab bytes ``[0:cz, y0:y0+cy, x0+i*cxb:x0+(i+1)*cxb]``,
        zero-padded beyond the slab. Each ``out[i]`` is C-contiguous; the chunks may lie
        apart (any first stride of at least a chunk), e.g. in the slots of
        :func:`lz4_frames_in_place`.
    itemsize : int, default 1
        Above 1, each chunk is stored byte-shuffled as HDF5's shuffle filter (id 2) with this
        element size encodes it, in the same pass: the chunks of a shuffled codec then need
        no second pass over their bytes. `x0`, ``cxb`` and the parts' row bytes must be
        multiples of it.
    """
    cdef Py_ssize_t n = out.shape[0], cz = out.shape[1], cy = out.shape[2], cxb = out.shape[3]
    cdef Py_ssize_t nparts = len(parts)
    cdef Py_ssize_t sy = -1, sx = -1, k, ix, kz, valid
    cdef Py_ssize_t chunk = cz * cy * cxb, step = out.strides[0]
    cdef Py_ssize_t nelem = chunk // itemsize if itemsize > 0 else 0
    cdef const uint8_t[:, :, ::1] view
    cdef const char** ptrs
    cdef Py_ssize_t* depths
    cdef char* op
    if g < 1:
        raise ValueError(f"g must be >= 1, got {g}")
    if itemsize < 1:
        raise ValueError(f"itemsize must be >= 1, got {itemsize}")
    if x0 % itemsize or cxb % itemsize:
        raise ValueError(f"x0 ({x0}) and the chunk row ({cxb} bytes) must be whole {itemsize}-byte elements")
    if n == 0 or chunk == 0:
        return
    if ((cz > 1 and out.strides[1] != cy * cxb) or (cy > 1 and out.strides[2] != cxb)
            or (cxb > 1 and out.strides[3] != 1) or (n > 1 and step < chunk)):
        raise ValueError("out's chunks must each be C-contiguous and must not overlap")
    op = <char*>&out[0, 0, 0, 0]
    views = []  # keeps every buffer acquired while the GIL is released
    ptrs = <const char**>malloc(nparts * sizeof(char*) + 1)
    depths = <Py_ssize_t*>malloc(nparts * sizeof(Py_ssize_t) + 1)
    if ptrs == NULL or depths == NULL:
        free(ptrs)
        free(depths)
        raise MemoryError()
    try:
        for k in range(nparts):
            ptrs[k] = NULL
            depths[k] = 0
            part = parts[k]
            valid = min(g, depth - k * g)
            if part is None or valid <= 0:
                continue
            view = part
            if view.shape[0] == 0 or view.shape[1] == 0 or view.shape[2] == 0:
                continue
            if sy < 0:
                sy, sx = view.shape[1], view.shape[2]
                if sx % itemsize:
                    raise ValueError(f"part rows of {sx} bytes are not whole {itemsize}-byte elements")
            elif view.shape[1] != sy or view.shape[2] != sx:
                raise ValueError(f"part {k} is {view.shape[1]} x {view.shape[2]}, part 0 {sy} x {sx}")
            views.append(view)
            ptrs[k] = <const char*>&view[0, 0, 0]
            depths[k] = min(valid, view.shape[0])
        with nogil:
            if itemsize > 1 and x0 <= 0 and x0 + n * cxb >= sx and n * itemsize <= _RUN_STREAMS:
                _gather_run(ptrs, depths, nparts, g, sy, sx, y0, x0, op, step, n, cz, cy, cxb, itemsize, nelem)
            else:
                for ix in range(n):
                    for k in range((cz + g - 1) // g):
                        kz = min(g, cz - k * g)  # chunk planes this part fills
                        if k >= nparts or ptrs[k] == NULL:
                            _zero_bytes(op + ix * step, k * g * cy * cxb, kz * cy * cxb, itemsize, nelem)
                        else:
                            _gather_bytes(ptrs[k], depths[k], sy, sx, 0, y0, x0 + ix * cxb, op + ix * step,
                                          k * g * cy * cxb, kz, cy, cxb, 1, itemsize, nelem)
    finally:
        free(ptrs)
        free(depths)


# ---------------------------------------------------------------------------------------
# HDF5 byte shuffle (filter id 2)
# ---------------------------------------------------------------------------------------

cdef void _unshuffle2(const uint8_t* s, uint8_t* d, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef const uint8_t* s1 = s + n
    for i in range(n):
        d[2 * i] = s[i]
        d[2 * i + 1] = s1[i]


cdef void _unshuffle4(const uint8_t* s, uint8_t* d, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef const uint8_t* s1 = s + n
    cdef const uint8_t* s2 = s + 2 * n
    cdef const uint8_t* s3 = s + 3 * n
    for i in range(n):
        d[4 * i] = s[i]
        d[4 * i + 1] = s1[i]
        d[4 * i + 2] = s2[i]
        d[4 * i + 3] = s3[i]


cdef void _shuffle_generic(
    const uint8_t* s, uint8_t* d, Py_ssize_t n, Py_ssize_t k, bint reverse
) noexcept nogil:
    """Shuffle (or unshuffle) `n` elements of `k` bytes, blocked over elements."""
    cdef Py_ssize_t start = 0, stop, i, j
    while start < n:
        stop = start + _SHUFFLE_BLOCK if start + _SHUFFLE_BLOCK < n else n
        for j in range(k):
            if reverse:
                for i in range(start, stop):
                    d[i * k + j] = s[j * n + i]
            else:
                for i in range(start, stop):
                    d[j * n + i] = s[i * k + j]
        start = stop


@cython.cdivision(True)
cdef void _shuffle_bytes(
    const uint8_t* s, uint8_t* d, Py_ssize_t nbytes, Py_ssize_t k, bint reverse
) noexcept nogil:
    # H5Z_filter_shuffle: only whole elements are (un)shuffled, and only when there are at
    # least two of them and k > 1; the nbytes % k trailing bytes are copied unchanged.
    cdef Py_ssize_t n = nbytes // k
    cdef Py_ssize_t body = n * k
    if k <= 1 or n <= 1:
        memcpy(d, s, nbytes)
        return
    if not reverse and (k == 2 or k == 4):
        # the gather's shuffled copy, over the whole chunk
        _put_bytes(<char*>d, 0, <const char*>s, body, k, n)
    elif k == 2:
        _unshuffle2(s, d, n)
    elif k == 4:
        _unshuffle4(s, d, n)
    else:
        _shuffle_generic(s, d, n, k, reverse)
    if nbytes > body:
        memcpy(d + body, s + body, nbytes - body)


cdef int _check_shuffle_args(Py_ssize_t nsrc, Py_ssize_t itemsize, Py_ssize_t nout) except -1:
    if itemsize < 1:
        raise ValueError(f"itemsize must be >= 1, got {itemsize}")
    if nout < nsrc:
        raise ValueError(f"out has {nout} bytes, fewer than the {nsrc} bytes of src")
    return 0


def stream_copy(uint8_t[::1] dst, const uint8_t[::1] src) -> None:
    """Copy `src` into `dst` (C-contiguous uint8, the same length) with streaming stores.

    For bytes the CPU will not read again soon: a staged run that goes to the disk by DMA, a
    camera frame whose slab is read only once the slab is complete (by then beyond the
    cache). Skipping the read of the destination into the cache (and the eviction it causes)
    made such copies 1.5-1.8x faster than ``memcpy`` on the VMs we target. Plain ``memcpy``
    where the CPU has no streaming stores.
    """
    cdef Py_ssize_t n = src.shape[0]
    if dst.shape[0] != n:
        raise ValueError(f"stream_copy: dst has {dst.shape[0]} bytes, src {n}")
    if n == 0:
        return
    with nogil:
        fastims_stream_copy(<char*> &dst[0], <const char*> &src[0], n)


def shuffle(const uint8_t[::1] src, Py_ssize_t itemsize, uint8_t[::1] out) -> None:
    """Byte-shuffle `src` into `out` exactly as HDF5's shuffle filter (id 2) encodes.

    Parameters
    ----------
    src : ndarray of uint8, 1-D, C-contiguous
        Raw bytes of ``len(src) // itemsize`` elements, possibly followed by trailing bytes.
    itemsize : int
        Element size in bytes (the filter's ``cd_values[0]``).
    out : ndarray of uint8, 1-D, C-contiguous
        Receives the shuffled bytes in ``out[:len(src)]``; must not overlap `src`.
        Byte ``b`` of element ``i`` goes to ``out[b * n + i]`` with ``n = len(src) // itemsize``;
        trailing bytes are copied unchanged to the end. With ``itemsize == 1`` or fewer than
        two whole elements, ``out`` is a plain copy (HDF5 leaves such buffers untouched).
    """
    cdef Py_ssize_t n = src.shape[0]
    _check_shuffle_args(n, itemsize, out.shape[0])
    if n == 0:
        return
    with nogil:
        _shuffle_bytes(&src[0], &out[0], n, itemsize, False)


def unshuffle(const uint8_t[::1] src, Py_ssize_t itemsize, uint8_t[::1] out) -> None:
    """Invert :func:`shuffle` (HDF5 shuffle filter, read direction).

    Parameters
    ----------
    src : ndarray of uint8, 1-D, C-contiguous
        Shuffled bytes.
    itemsize : int
        Element size in bytes.
    out : ndarray of uint8, 1-D, C-contiguous
        Receives the element-interleaved bytes in ``out[:len(src)]``; must not overlap `src`.
    """
    cdef Py_ssize_t n = src.shape[0]
    _check_shuffle_args(n, itemsize, out.shape[0])
    if n == 0:
        return
    with nogil:
        _shuffle_bytes(&src[0], &out[0], n, itemsize, True)


# ---------------------------------------------------------------------------------------
# the HDF5-LZ4 frame written in place
# ---------------------------------------------------------------------------------------

# liblz4's LZ4_compress_fast (LZ4_compress_default is acceleration 1)
ctypedef int (*_lz4_compress_t)(const char* src, char* dst, int src_size, int dst_capacity,
                                int acceleration) noexcept nogil


cdef inline void _put_be(uint8_t* p, uint64_t value, int nbytes) noexcept nogil:
    cdef int i
    for i in range(nbytes):
        p[i] = <uint8_t>(value >> (8 * (nbytes - 1 - i)))


cdef inline Py_ssize_t _frame_header(uint8_t* out, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """The 16-byte header of a one-block frame of `n` bytes whose block has `c`; the frame's length."""
    _put_be(out, <uint64_t>n, 8)
    _put_be(out + 8, <uint64_t>n, 4)
    _put_be(out + 12, <uint64_t>c, 4)
    return 16 + c


@cython.cdivision(True)
cdef Py_ssize_t _frame(const uint8_t* src, Py_ssize_t n, uint8_t* out, Py_ssize_t cap,
                       _lz4_compress_t fn, int acceleration) noexcept nogil:
    """One-block HDF5-LZ4 frame of `n` bytes into `out` (`cap` >= the bound); its length."""
    cdef int c = fn(<const char*>src, <char*>(out + 16), <int>n, <int>(cap - 16), acceleration)
    if c <= 0 or c >= n:
        # a block that does not shrink is stored verbatim, as H5Zlz4.c does
        memcpy(out + 16, src, n)
        c = <int>n
    return _frame_header(out, n, c)


cdef enum:
    # byte planes of a shuffled chunk are tried for literals from this size on, on three
    # windows (start, middle, end) of this many bytes, compressed together in one call
    _LITERAL_MIN_PLANE = 32768
    _TRIAL = 2048
    _TRIAL_BOUND = 6184  # LZ4_compressBound(3 * _TRIAL): n + n / 255 + 16


@cython.cdivision(True)
cdef bint _incompressible(const uint8_t* p, Py_ssize_t n, _lz4_compress_t fn, int acceleration) noexcept nogil:
    """True when LZ4 shrinks three windows of the `n` bytes at `p` by less than 2 %."""
    cdef uint8_t win[3 * _TRIAL]
    cdef uint8_t dst[_TRIAL_BOUND]
    memcpy(win, p, _TRIAL)
    memcpy(win + _TRIAL, p + (n - _TRIAL) // 2, _TRIAL)
    memcpy(win + 2 * _TRIAL, p + n - _TRIAL, _TRIAL)
    cdef int c = fn(<const char*>win, <char*>dst, 3 * _TRIAL, <int>sizeof(dst), acceleration)
    return c <= 0 or c * 51 >= 3 * _TRIAL * 50


@cython.cdivision(True)
cdef inline Py_ssize_t _literal_header(Py_ssize_t length) noexcept nogil:
    """Bytes of an LZ4 token with a literal run of `length` (its length bytes included)."""
    return 1 if length < 15 else 2 + (length - 15) // 255


cdef Py_ssize_t _noise_planes(const uint8_t* src, Py_ssize_t pb, Py_ssize_t planes, _lz4_compress_t fn,
                              int acceleration) noexcept nogil:
    """How many leading planes of `pb` bytes at `src` are noise (copied as literals, not searched)."""
    cdef Py_ssize_t k = 0
    if pb >= _LITERAL_MIN_PLANE:
        while k < planes and _incompressible(src + k * pb, pb, fn, acceleration):
            k += 1
    return k


cdef inline Py_ssize_t _first_run(const uint8_t* q, Py_ssize_t* head) noexcept nogil:
    """The literal run of the LZ4 sequence at `q`; its token and length bytes into `head`."""
    cdef Py_ssize_t lit = q[0] >> 4, h = 1
    cdef uint8_t b = 255
    if lit == 15:
        while b == 255:
            b = q[h]
            h += 1
            lit += b
    head[0] = h
    return lit


cdef inline void _put_token(uint8_t* out, uint8_t match_nibble, Py_ssize_t lit) noexcept nogil:
    """An LZ4 token with a literal run of `lit` and its length bytes (_literal_header(lit) of them)."""
    cdef Py_ssize_t pos = 1, v
    out[0] = <uint8_t>(((15 if lit >= 15 else lit) << 4) | match_nibble)
    if lit >= 15:
        v = lit - 15
        while v >= 255:
            out[pos] = 255
            pos += 1
            v -= 255
        out[pos] = <uint8_t>v


@cython.cdivision(True)
cdef Py_ssize_t _frame_planes(const uint8_t* src, Py_ssize_t n, Py_ssize_t planes, uint8_t* out,
                              Py_ssize_t cap, _lz4_compress_t fn, int acceleration) noexcept nogil:
    """:func:`_frame` of a chunk of `planes` byte planes (a shuffled chunk), whose leading
    planes of noise are emitted as the literals of the block's first sequence.

    LZ4 finds nothing to match in a plane of photon noise (the low bytes of camera data:
    ratio 0.996) yet spends most of its time searching it. The planes LZ4 would shrink by
    less than 2 % (tried on windows) are copied instead: the rest is compressed after room
    for them, its first token's literal length grows by their length, and the result is
    still one standard LZ4 block (the rest's matches reach back only into the rest).
    """
    cdef Py_ssize_t pb = n // planes if planes > 1 else 0
    cdef Py_ssize_t k = _noise_planes(src, pb, planes, fn, acceleration)
    cdef Py_ssize_t p = k * pb, h, h1, lit, hn, body
    cdef uint8_t* q
    cdef uint8_t token
    cdef int c = 0
    if k == 0:
        return _frame(src, n, out, cap, fn, acceleration)
    if k < planes:
        h = _literal_header(n)  # room for the merged token: its literal run is at most n
        q = out + 16 + h + p
        c = fn(<const char*>(src + p), <char*>q, <int>(n - p), <int>(cap - 16 - h - p), acceleration)
    if c > 0:
        # the rest's first literal run grows by the planes; everything after it moves up
        lit = _first_run(q, &h1) + p
        hn = _literal_header(lit)
        body = c - h1
        if hn + p + body < n:
            token = q[0]  # read before the move, which may overwrite it
            memmove(out + 16 + hn + p, q + h1, body)
            _put_token(out + 16, token & 15, lit)
            memcpy(out + 16 + hn, src, p)
            return _frame_header(out, n, hn + p + body)
    # nothing shrinks: stored verbatim, as H5Zlz4.c does
    memcpy(out + 16, src, n)
    return _frame_header(out, n, n)


@cython.cdivision(True)
cdef Py_ssize_t _frame_in_place(uint8_t* slot, Py_ssize_t off, Py_ssize_t n, Py_ssize_t planes,
                                uint8_t* tmp, Py_ssize_t tcap, _lz4_compress_t fn, int acceleration,
                                Py_ssize_t* start) noexcept nogil:
    """:func:`_frame_planes` of the chunk at ``slot + off``, framed where it lies.

    The frame is written inside ``slot[0:off + n]`` from ``slot[start]`` on: literal planes
    stay where the chunk was gathered, and their token and the frame header go just before
    them (``off >= 16 + _literal_header(n)`` leaves room for any run), so only LZ4's output
    (through `tmp`, ``tcap >= n + n // 255 + 16``) is copied. Same bytes as _frame_planes.
    """
    cdef uint8_t* src = slot + off
    cdef Py_ssize_t pb = n // planes if planes > 1 else 0
    cdef Py_ssize_t k = _noise_planes(src, pb, planes, fn, acceleration)
    cdef Py_ssize_t p = k * pb, h1, lit, hn, body, s
    cdef int c = 0
    if k < planes:
        c = fn(<const char*>(src + p), <char*>tmp, <int>(n - p), <int>tcap, acceleration)
    if c > 0 and k == 0 and c < n:
        memcpy(slot + 16, tmp, c)
        start[0] = 0
        return _frame_header(slot, n, c)
    if c > 0 and k > 0:
        lit = _first_run(tmp, &h1) + p
        hn = _literal_header(lit)
        body = c - h1
        if hn + p + body < n:
            memcpy(src + p, tmp + h1, body)  # over the rest's bytes, compressed by now
            s = off - hn
            _put_token(slot + s, tmp[0] & 15, lit)
            start[0] = s - 16
            return _frame_header(slot + s - 16, n, hn + p + body)
    # nothing shrinks: the chunk, where it lies, is the block (stored verbatim, as H5Zlz4.c)
    start[0] = off - 16
    return _frame_header(slot + off - 16, n, n)


cdef inline Py_ssize_t _bound(Py_ssize_t n, Py_ssize_t planes) noexcept nogil:
    # with literal planes the rest is compressed after the longest merged token (n // 255 + 2)
    return 16 + n + n // 255 + 16 + (n // 255 + 2 if planes > 1 else 0)


cdef int _check_frame_args(Py_ssize_t n, Py_ssize_t cap, size_t compress, Py_ssize_t acceleration,
                           Py_ssize_t planes=1) except -1:
    # cap < 0: no frame bound to check (frames written in place)
    if n < 1 or n > 0x7E000000:
        raise ValueError(f"LZ4 frames hold 1..{0x7E000000} bytes in one block, got {n}")
    if planes < 1 or planes > 64:
        raise ValueError(f"planes must be in 1..64, got {planes}")
    if cap >= 0 and cap < _bound(n, planes):
        raise ValueError(f"out holds {cap} bytes, the frame may need {_bound(n, planes)}")
    if compress == 0:
        raise ValueError("no LZ4 compressor address")
    if acceleration < 1 or acceleration > 65537:
        raise ValueError(f"LZ4 acceleration must be in 1..65537, got {acceleration}")
    return 0


def lz4_frame(const uint8_t[::1] src, uint8_t[::1] out, size_t compress, Py_ssize_t acceleration=1,
              Py_ssize_t planes=1) -> int:
    """Encode `src` as one-block HDF5-LZ4 frame (filter 32004) into `out`; return its length.

    `compress` is the address of liblz4's ``LZ4_compress_fast`` (resolved once by
    :mod:`fastims.compression`), called with `acceleration` (1 = ``LZ4_compress_default``):
    the block is compressed straight after the 16-byte header, GIL released, with no
    intermediate bytes object. A block that does not shrink is stored verbatim, as
    ``H5Zlz4.c`` does. `out` needs ``16 + n + n // 255 + 16`` bytes, and ``n // 255 + 2``
    more when ``planes > 1``.

    With ``planes > 1``, `src` is taken as that many equal byte planes (a byte-shuffled
    chunk; trailing bytes after them belong to the last). Leading planes of at least 32 KiB
    that LZ4 shrinks by less than 2 % on three 2 KiB windows (start, middle, end) are
    copied as the literals of the block's first sequence instead of being searched; the
    block stays one standard LZ4 block.
    """
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t cap = out.shape[0]
    cdef Py_ssize_t size
    _check_frame_args(n, cap, compress, acceleration, planes)
    with nogil:
        size = _frame_planes(&src[0], n, planes, &out[0], cap, <_lz4_compress_t>compress, <int>acceleration)
    return size


def lz4_frames(const uint8_t[::1] src, Py_ssize_t chunk_bytes, Py_ssize_t itemsize, uint8_t[::1] scratch,
               size_t compress, uint8_t[::1] out, Py_ssize_t stride, int64_t[::1] sizes,
               Py_ssize_t acceleration=1, Py_ssize_t planes=1) -> None:
    """HDF5-LZ4 frames of ``len(sizes)`` consecutive chunks, each byte-shuffled first if asked.

    One call (GIL released throughout) per row of chunks instead of a shuffle and an
    encode call per chunk.

    Parameters
    ----------
    src : ndarray of uint8, 1-D, C-contiguous
        ``n * chunk_bytes`` bytes: chunk ``i`` is ``src[i * chunk_bytes:(i + 1) * chunk_bytes]``.
    chunk_bytes : int
        Bytes per chunk (1 .. 0x7E000000, one LZ4 block).
    itemsize : int
        Byte-shuffle each chunk with this element size first (HDF5 filter 2); <= 1: no shuffle.
    scratch : ndarray of uint8, 1-D
        Room for one shuffled chunk (``chunk_bytes``) when shuffling; unused otherwise.
    compress : int
        Address of liblz4's ``LZ4_compress_fast``.
    out : ndarray of uint8, 1-D
        Frame ``i`` is written at ``out[i * stride]``; needs ``n * stride`` bytes.
    stride : int
        At least the frame bound of :func:`lz4_frame` for `chunk_bytes` and `planes`.
    sizes : ndarray of int64, 1-D
        Receives the length of every frame; its length is the number of chunks ``n``.
    acceleration : int, default 1
        LZ4 acceleration (1 .. 65537; 1 = ``LZ4_compress_default``).
    planes : int, default 1
        Byte planes of each (shuffled) chunk, whose leading planes of noise become literals
        (see :func:`lz4_frame`); the item size when the chunks are or get shuffled.
    """
    cdef Py_ssize_t n = sizes.shape[0], i
    cdef const uint8_t* s
    cdef const uint8_t* sp
    cdef uint8_t* op
    cdef uint8_t* tmp = NULL
    cdef _lz4_compress_t fn = <_lz4_compress_t>compress
    if n == 0:
        return
    _check_frame_args(chunk_bytes, stride, compress, acceleration, planes)
    if src.shape[0] < n * chunk_bytes:
        raise ValueError(f"src holds {src.shape[0]} bytes, {n} chunks need {n * chunk_bytes}")
    if out.shape[0] < n * stride:
        raise ValueError(f"out holds {out.shape[0]} bytes, {n} frames need {n * stride}")
    if itemsize > 1:
        if scratch.shape[0] < chunk_bytes:
            raise ValueError(f"scratch holds {scratch.shape[0]} bytes, a chunk needs {chunk_bytes}")
        tmp = &scratch[0]
    sp = &src[0]
    op = &out[0]
    with nogil:
        for i in range(n):
            s = sp + i * chunk_bytes
            if tmp != NULL:
                _shuffle_bytes(s, tmp, chunk_bytes, itemsize, False)
                s = tmp
            sizes[i] = _frame_planes(s, chunk_bytes, planes, op + i * stride, stride, fn, <int>acceleration)


def lz4_frames_in_place(uint8_t[::1] buf, Py_ssize_t offset, Py_ssize_t chunk_bytes, Py_ssize_t stride,
                        uint8_t[::1] scratch, size_t compress, int64_t[::1] sizes, int64_t[::1] starts,
                        Py_ssize_t acceleration=1, Py_ssize_t planes=1) -> None:
    """HDF5-LZ4 frames of ``len(sizes)`` chunks, each framed in the slot it was gathered in.

    The frames equal :func:`lz4_frame`'s of the same chunks. A shuffled chunk's literal
    noise planes (see :func:`lz4_frame`) are not copied: they stay where they lie, and the
    frame header and first token are written just before them, so a frame starts anywhere
    in its slot's first `offset` bytes. Only LZ4's own output is copied (through `scratch`).

    Parameters
    ----------
    buf : ndarray of uint8, 1-D, C-contiguous
        ``len(sizes)`` slots of `stride` bytes; chunk ``i`` (already byte-shuffled when
        `planes` > 1) lies at ``buf[i * stride + offset:][:chunk_bytes]``. Overwritten by
        the frames.
    offset : int
        Room before each chunk for the frame header and the longest first token: at least
        ``18 + (chunk_bytes - 15) // 255`` (17 for chunks under 15 bytes).
    chunk_bytes : int
        Bytes per chunk (1 .. 0x7E000000, one LZ4 block).
    stride : int
        Bytes per slot, at least ``offset + chunk_bytes``.
    scratch : ndarray of uint8, 1-D
        At least ``chunk_bytes + chunk_bytes // 255 + 16`` bytes for LZ4's output.
    compress : int
        Address of liblz4's ``LZ4_compress_fast``.
    sizes, starts : ndarray of int64, 1-D, one per chunk
        Receive frame ``i``'s length and its start within slot ``i``: the frame is
        ``buf[i * stride + starts[i]:][:sizes[i]]``.
    acceleration : int, default 1
        LZ4 acceleration (1 .. 65537; 1 = ``LZ4_compress_default``).
    planes : int, default 1
        Byte planes of each chunk (the item size of a shuffled chunk).
    """
    cdef Py_ssize_t n = sizes.shape[0], i, start = 0
    cdef uint8_t* bp
    cdef uint8_t* tp
    cdef Py_ssize_t tcap = scratch.shape[0]
    cdef _lz4_compress_t fn = <_lz4_compress_t>compress
    _check_frame_args(chunk_bytes, -1, compress, acceleration, planes)
    if starts.shape[0] != n:
        raise ValueError(f"starts has {starts.shape[0]} entries, sizes {n}")
    if offset < 16 + _literal_header(chunk_bytes):
        raise ValueError(f"offset {offset} leaves no room for the frame header and first token "
                         f"(needs {16 + _literal_header(chunk_bytes)})")
    if stride < offset + chunk_bytes:
        raise ValueError(f"stride {stride} is shorter than offset + chunk_bytes ({offset + chunk_bytes})")
    if tcap < chunk_bytes + chunk_bytes // 255 + 16:
        raise ValueError(f"scratch holds {tcap} bytes, LZ4 may need {chunk_bytes + chunk_bytes // 255 + 16}")
    if n == 0:
        return
    if buf.shape[0] < n * stride:
        raise ValueError(f"buf holds {buf.shape[0]} bytes, {n} slots need {n * stride}")
    bp = &buf[0]
    tp = &scratch[0]
    with nogil:
        for i in range(n):
            sizes[i] = _frame_in_place(bp + i * stride, offset, chunk_bytes, planes, tp, tcap, fn,
                                       <int>acceleration, &start)
            starts[i] = start
