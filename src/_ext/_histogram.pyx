# cython: language_level=3
"""Exact bincounts of uint8 and uint16 data (Imaris ``Histogram`` accumulators).

Both kernels add into a caller-owned uint64 ``counts`` array and release the GIL, so several
threads may histogram different chunks at once (each into its own ``counts``).

Speed trick: a plain ``counts[v] += 1`` loop is bound by the store-to-load dependency when
consecutive values repeat (camera data sits in a narrow band). We keep 4 (uint16)
or 8 (uint8) uint32 sub-histograms and send consecutive elements to different ones, so
consecutive increments rarely touch the same address; uint32 also halves the cache footprint
compared with uint64. The sub-histograms are flushed into ``counts`` at the end and before
any of them could overflow.

The uint16 sub-histograms (1 MiB) are kept for the next call in a small free list (taken and
returned with the GIL held, always zeroed by the flush): a fresh 1 MiB ``calloc`` per call is
an ``mmap`` whose 256 pages fault in and whose ``munmap`` interrupts the other cores, which cost
more than the counting of a typical 4-16 MiB band piece on the VMs we target.
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

cdef enum:
    # number of interleaved sub-histograms (uint16: 4 x 256 KiB stays in L2; uint8: 8 x 1 KiB)
    NSUB = 4
    NSUB_U8 = 8
    # elements per flush segment: no sub-histogram can receive 2**32 increments before a flush
    SEGMENT = 1 << 30
    # below these sizes, count straight into ``counts`` (scratch zeroing + flush would dominate)
    SMALL_U16 = 1 << 17
    SMALL_U8 = 1 << 10
    # zeroed uint16 scratch kept between calls (one per thread counting at the same time)
    MAX_FREE_U16 = 8


cdef uint32_t* _free_u16[MAX_FREE_U16]
cdef int _nfree_u16 = 0


cdef uint32_t* _take_sub_u16():
    """A zeroed NSUB x 65536 scratch, or NULL (GIL held: the free list is shared)."""
    global _nfree_u16
    if _nfree_u16 > 0:
        _nfree_u16 -= 1
        return _free_u16[_nfree_u16]
    return <uint32_t*> calloc(NSUB * 65536, sizeof(uint32_t))


cdef void _give_sub_u16(uint32_t* sub):
    """Keep a zeroed scratch for the next call, or free it (GIL held)."""
    global _nfree_u16
    if _nfree_u16 < MAX_FREE_U16:
        _free_u16[_nfree_u16] = sub
        _nfree_u16 += 1
    else:
        free(sub)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _count_direct_u16(const uint16_t* src, Py_ssize_t n, uint64_t* counts) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        counts[src[i]] += 1


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _count_sub_u16(const uint16_t* src, Py_ssize_t n, uint32_t* sub) noexcept nogil:
    # sub holds NSUB consecutive blocks of 65536 uint32 bins
    cdef uint32_t* h0 = sub
    cdef uint32_t* h1 = sub + 65536
    cdef uint32_t* h2 = sub + 2 * 65536
    cdef uint32_t* h3 = sub + 3 * 65536
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t n4 = n - (n % 4)
    while i < n4:
        h0[src[i]] += 1
        h1[src[i + 1]] += 1
        h2[src[i + 2]] += 1
        h3[src[i + 3]] += 1
        i += 4
    while i < n:
        h0[src[i]] += 1
        i += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _flush(uint32_t* sub, int nsub, Py_ssize_t nbins, uint64_t* counts) noexcept nogil:
    # add the nsub sub-histograms of nbins bins into counts, then zero them
    cdef Py_ssize_t j, k
    cdef uint64_t total
    for j in range(nbins):
        total = 0
        for k in range(nsub):
            total += sub[k * nbins + j]
        counts[j] += total
    memset(sub, 0, nsub * nbins * sizeof(uint32_t))


cdef void _hist_u16_impl(const uint16_t* src, Py_ssize_t n, uint64_t* counts, uint32_t* sub) noexcept nogil:
    """Count into `counts`, through `sub` (zeroed NSUB x 65536, left zeroed) unless `n` is small."""
    cdef Py_ssize_t start, stop
    if n < SMALL_U16:
        _count_direct_u16(src, n, counts)
        return
    start = 0
    while start < n:
        stop = start + SEGMENT if n - start > SEGMENT else n
        _count_sub_u16(src + start, stop - start, sub)
        _flush(sub, NSUB, 65536, counts)
        start = stop


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _count_sub_u8(const uint8_t* src, Py_ssize_t n, uint32_t* sub) noexcept nogil:
    # one 8-byte load feeds NSUB_U8 sub-histograms (byte order within the word is irrelevant:
    # each byte just lands in some sub-histogram); memcpy keeps the unaligned load legal
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t n8 = n - (n % 8)
    while i < n8:
        memcpy(&w, src + i, 8)
        sub[w & 0xFF] += 1
        sub[256 + ((w >> 8) & 0xFF)] += 1
        sub[2 * 256 + ((w >> 16) & 0xFF)] += 1
        sub[3 * 256 + ((w >> 24) & 0xFF)] += 1
        sub[4 * 256 + ((w >> 32) & 0xFF)] += 1
        sub[5 * 256 + ((w >> 40) & 0xFF)] += 1
        sub[6 * 256 + ((w >> 48) & 0xFF)] += 1
        sub[7 * 256 + (w >> 56)] += 1
        i += 8
    while i < n:
        sub[src[i]] += 1
        i += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _hist_u8_impl(const uint8_t* src, Py_ssize_t n, uint64_t* counts) noexcept nogil:
    # 8 KiB of scratch: small enough for the stack (and for L1)
    cdef uint32_t sub[NSUB_U8 * 256]
    cdef Py_ssize_t i, start, stop
    if n < SMALL_U8:
        for i in range(n):
            counts[src[i]] += 1
        return
    memset(sub, 0, sizeof(sub))
    start = 0
    while start < n:
        stop = start + SEGMENT if n - start > SEGMENT else n
        _count_sub_u8(src + start, stop - start, sub)
        _flush(sub, NSUB_U8, 256, counts)
        start = stop


def hist_u8(const uint8_t[::1] src, uint64_t[::1] counts) -> None:
    """Add the bincount of `src` into `counts` (in place).

    Parameters
    ----------
    src : numpy.ndarray
        C-contiguous 1-D uint8 array (callers pass ``a.reshape(-1)``); may be read-only.
    counts : numpy.ndarray
        uint64 array of 256 bins, accumulated in place.
    """
    if counts.shape[0] != 256:
        raise ValueError(f"counts must have 256 bins, got {counts.shape[0]}")
    cdef Py_ssize_t n = src.shape[0]
    if n == 0:
        return
    with nogil:
        _hist_u8_impl(&src[0], n, &counts[0])


def hist_u16(const uint16_t[::1] src, uint64_t[::1] counts) -> None:
    """Add the bincount of `src` into `counts` (in place).

    Parameters
    ----------
    src : numpy.ndarray
        C-contiguous 1-D uint16 array (callers pass ``a.reshape(-1)``); may be read-only.
    counts : numpy.ndarray
        uint64 array of 65536 bins, accumulated in place.
    """
    if counts.shape[0] != 65536:
        raise ValueError(f"counts must have 65536 bins, got {counts.shape[0]}")
    cdef Py_ssize_t n = src.shape[0]
    cdef uint32_t* sub = NULL
    if n == 0:
        return
    if n >= SMALL_U16:
        sub = _take_sub_u16()
        if sub == NULL:
            raise MemoryError("hist_u16: could not allocate the 1 MiB scratch histogram")
    with nogil:
        _hist_u16_impl(&src[0], n, &counts[0], sub)
    if sub != NULL:
        _give_sub_u16(sub)
