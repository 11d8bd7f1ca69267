"""Pure-NumPy twins of :mod:`fastims._ext._chunks`: chunk gather/pad and HDF5 byte shuffle.

Same names, signatures and results as the compiled kernels; they are the test oracle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["gather_chunk", "gather_row", "lz4_frame", "lz4_frames", "lz4_frames_in_place", "shuffle", "unshuffle"]

# dtypes the compiled gather_chunk is specialised for (it only moves bytes; other dtypes of
# these widths are passed as a view of the unsigned type)
_GATHER_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.float32)
)


def _overlap(origin: int, length: int, size: int) -> tuple[int, int]:
    """In-bounds source range ``[a, b)`` of ``[origin, origin + length)`` within ``[0, size)``."""
    a = max(origin, 0)
    b = min(origin + length, size)
    return a, max(a, b)


def gather_chunk(src: np.ndarray, z0: int, y0: int, x0: int, out: np.ndarray) -> None:
    """Copy ``src[z0:z0+cz, y0:y0+cy, x0:x0+cx]`` into `out`, zero-padding beyond `src`.

    Parameters
    ----------
    src : ndarray, shape (Z, Y, X), C-contiguous
        Source slab; uint8, uint16, uint32, uint64 or float32.
    z0, y0, x0 : int
        Chunk origin in `src` coordinates; chunk voxels outside `src` (negative coordinates
        included) become zeros.
    out : ndarray, shape (cz, cy, cx), C-contiguous, same dtype as `src`
        Destination chunk; every element is written.
    """
    # exception types follow the compiled kernel's typed-memoryview checks
    for name, arr in (("src", src), ("out", out)):
        if arr.ndim != 3 or arr.dtype not in _GATHER_DTYPES:
            raise TypeError(f"{name} must be 3-D uint8/16/32/64 or float32, got {arr.dtype}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if src.dtype != out.dtype:
        raise ValueError(f"dtype mismatch: src {src.dtype}, out {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    ranges = [
        _overlap(o, c, s) for o, c, s in zip((z0, y0, x0), out.shape, src.shape, strict=True)
    ]
    out[...] = 0
    if any(b <= a for a, b in ranges):
        return
    src_sl = tuple(slice(a, b) for a, b in ranges)
    out_sl = tuple(
        slice(a - o, b - o) for (a, b), o in zip(ranges, (z0, y0, x0), strict=True)
    )
    out[out_sl] = src[src_sl]


def gather_row(parts: list, g: int, depth: int, y0: int, x0: int, out: np.ndarray, itemsize: int = 1) -> None:
    """Cut consecutive chunks of a row out of a slab held in parts of `g` planes, zero-padded.

    Parameters
    ----------
    parts : list of (ndarray of uint8, shape (g', Y, Xb), C-contiguous, or None)
        Part ``k`` holds slab planes ``k * g`` onwards; None, or planes beyond `depth` or
        beyond the part's own length, read as zeros.
    g : int
        Planes per part (>= 1).
    depth : int
        Valid planes of the slab.
    y0 : int
        First row of the chunks.
    x0 : int
        First byte of the first chunk within a slab row.
    out : ndarray of uint8, shape (n, cz, cy, cxb)
        Receives chunk ``i`` = slab bytes ``[0:cz, y0:y0+cy, x0+i*cxb:x0+(i+1)*cxb]``;
        each ``out[i]`` C-contiguous, the chunks apart by any stride of at least a chunk.
    itemsize : int, default 1
        Above 1, each chunk is stored byte-shuffled (HDF5 filter 2) with this element size;
        `x0`, ``cxb`` and the parts' row bytes must be multiples of it.
    """
    if g < 1:
        raise ValueError(f"g must be >= 1, got {g}")
    if out.ndim != 4 or out.dtype != np.uint8:
        raise ValueError("out must be a 4-D uint8 array")
    n, cz, cy, cxb = out.shape
    chunk = cz * cy * cxb
    # the strides of axes of length 1 do not matter (NumPy may set them to anything)
    if n and chunk and ((cz > 1 and out.strides[1] != cy * cxb) or (cy > 1 and out.strides[2] != cxb)
                        or (cxb > 1 and out.strides[3] != 1) or (n > 1 and out.strides[0] < chunk)):
        raise ValueError("out's chunks must each be C-contiguous and must not overlap")
    if itemsize < 1:
        raise ValueError(f"itemsize must be >= 1, got {itemsize}")
    if x0 % itemsize or cxb % itemsize:
        raise ValueError(f"x0 ({x0}) and the chunk row ({cxb} bytes) must be whole {itemsize}-byte elements")
    shape = None
    for k, part in enumerate(parts):
        valid = min(g, depth - k * g)
        if part is None or valid <= 0 or 0 in part.shape:
            continue
        if part.ndim != 3 or part.dtype != np.uint8 or not part.flags.c_contiguous:
            raise ValueError("parts must be C-contiguous 3-D uint8 arrays")
        if shape is None:
            shape = part.shape[1:]
            if shape[1] % itemsize:
                raise ValueError(f"part rows of {shape[1]} bytes are not whole {itemsize}-byte elements")
        elif part.shape[1:] != shape:
            raise ValueError(f"part {k} is {part.shape[1]} x {part.shape[2]}, part 0 {shape[0]} x {shape[1]}")
    out[...] = 0
    for k, part in enumerate(parts):
        valid = min(g, depth - k * g, cz - k * g)
        if part is None or valid <= 0 or 0 in part.shape:
            continue
        planes = part[: min(valid, part.shape[0])]
        for ix in range(n):
            gather_chunk(planes, 0, y0, x0 + ix * cxb, out[ix, k * g : k * g + planes.shape[0]])
    if itemsize > 1:
        for ix in range(n):
            flat = out[ix].reshape(-1)  # a view: out[ix] is C-contiguous
            shuffle(flat.copy(), itemsize, flat)


def stream_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy 1-D uint8 `src` into `dst` of the same length (the compiled kernel uses streaming
    stores; the bytes are the same)."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError(f"stream_copy: dst has {dst.shape[0]} bytes, src {src.shape[0]}")
    dst[:] = src


def _check_shuffle_args(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    for name, arr in (("src", src), ("out", out)):
        if arr.ndim != 1 or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 1-D uint8 array")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if itemsize < 1:
        raise ValueError(f"itemsize must be >= 1, got {itemsize}")
    if out.shape[0] < src.shape[0]:
        raise ValueError(
            f"out has {out.shape[0]} bytes, fewer than the {src.shape[0]} bytes of src"
        )


def shuffle(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    """Byte-shuffle `src` into ``out[:len(src)]`` as HDF5's shuffle filter (id 2) encodes.

    Byte ``b`` of element ``i`` goes to ``out[b * n + i]`` with ``n = len(src) // itemsize``;
    the ``len(src) % itemsize`` trailing bytes are copied unchanged to the end. With
    ``itemsize == 1`` or fewer than two whole elements the bytes are copied unchanged
    (``H5Z_filter_shuffle`` leaves such buffers alone).
    """
    _transpose_bytes(src, itemsize, out, reverse=False)


def unshuffle(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    """Invert :func:`shuffle` (HDF5 shuffle filter, read direction) into ``out[:len(src)]``."""
    _transpose_bytes(src, itemsize, out, reverse=True)


def _transpose_bytes(src: np.ndarray, itemsize: int, out: np.ndarray, *, reverse: bool) -> None:
    """Shuffle (element-major -> byte-plane-major) or, `reverse`, unshuffle the whole elements."""
    _check_shuffle_args(src, itemsize, out)
    nbytes = src.shape[0]
    n = nbytes // itemsize
    if itemsize <= 1 or n <= 1:
        out[:nbytes] = src
        return
    body = n * itemsize
    rows, cols = (itemsize, n) if reverse else (n, itemsize)
    out[:body] = src[:body].reshape(rows, cols).T.reshape(-1)
    out[body:nbytes] = src[body:]


def lz4_bound(nbytes: int) -> int:
    """liblz4's ``LZ4_compressBound``: the most one LZ4 block of `nbytes` may take."""
    return nbytes + nbytes // 255 + 16


def _literal_header(length: int) -> int:
    """Bytes of an LZ4 token with a literal run of `length` (its length bytes included)."""
    return 1 if length < 15 else 2 + (length - 15) // 255


def _frame_bound(n: int, planes: int) -> int:
    # with literal planes the rest is compressed after the longest merged token (n // 255 + 2)
    return 16 + lz4_bound(n) + (n // 255 + 2 if planes > 1 else 0)


def _check_frame_args(n: int, cap: int, compress: int, acceleration: int, planes: int = 1) -> None:
    if n < 1 or n > 0x7E000000:
        raise ValueError(f"LZ4 frames hold 1..{0x7E000000} bytes in one block, got {n}")
    if planes < 1 or planes > 64:
        raise ValueError(f"planes must be in 1..64, got {planes}")
    if cap >= 0 and cap < _frame_bound(n, planes):  # cap < 0: frames written in place
        raise ValueError(f"out holds {cap} bytes, the frame may need {_frame_bound(n, planes)}")
    if compress == 0:
        raise ValueError("no LZ4 compressor address")
    if acceleration < 1 or acceleration > 65537:
        raise ValueError(f"LZ4 acceleration must be in 1..65537, got {acceleration}")


# planes tried for literals from this size on, on three windows of this many bytes
_LITERAL_MIN_PLANE = 32768
_TRIAL = 2048


def _first_run(block: bytes) -> tuple[int, int]:
    """The literal run of the LZ4 sequence starting `block`, and the bytes of its token."""
    literals, pos = block[0] >> 4, 1
    while literals >= 15 and (pos == 1 or block[pos - 1] == 255):  # the run's length bytes
        literals += block[pos]
        pos += 1
    return literals, pos


def _token_bytes(token_nibble: int, literals: int) -> bytes:
    """An LZ4 token with a literal run of `literals` and match nibble `token_nibble`."""
    if literals < 15:
        return bytes([(literals << 4) | token_nibble])
    more, last = divmod(literals - 15, 255)
    return bytes([0xF0 | token_nibble]) + b"\xff" * more + bytes([last])


def _lz4(compress: int, acceleration: int) -> Callable[[np.ndarray], bytes]:
    """``LZ4_compress_fast`` at address `compress` through ctypes, as bytes in, bytes out."""
    import ctypes

    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int)(compress)

    def lz4(part: np.ndarray) -> bytes:
        part = np.ascontiguousarray(part)
        tmp = np.empty(lz4_bound(part.shape[0]), np.uint8)
        size = fn(part.ctypes.data, tmp.ctypes.data, part.shape[0], tmp.shape[0], acceleration)
        return tmp[:size].tobytes()

    return lz4


def _noise_planes(data: np.ndarray, pb: int, planes: int, lz4: Callable[[np.ndarray], bytes]) -> int:
    """How many leading planes of `pb` bytes LZ4 shrinks by less than 2 % on three windows."""
    k = 0
    if pb >= _LITERAL_MIN_PLANE:
        while k < planes:
            plane = data[k * pb : (k + 1) * pb]
            mid = (pb - _TRIAL) // 2
            windows = np.concatenate([plane[:_TRIAL], plane[mid : mid + _TRIAL], plane[pb - _TRIAL :]])
            if len(lz4(windows)) * 51 < windows.shape[0] * 50:
                break
            k += 1
    return k


def lz4_frame(src: np.ndarray, out: np.ndarray, compress: int, acceleration: int = 1, planes: int = 1) -> int:
    """Write the one-block HDF5-LZ4 frame of `src` into `out`; return its length.

    The twin calls the same ``LZ4_compress_fast`` (address `compress`) through ctypes,
    into temporary buffers, and builds the frame with NumPy and bytes: it checks the
    framing, the verbatim fallback and the literal planes. ``out`` needs
    ``16 + n + n // 255 + 16`` bytes, ``n // 255 + 2`` more when ``planes > 1``.

    With ``planes > 1`` the leading byte planes (``n // planes`` bytes each, at least 32 KiB)
    whose three 2 KiB windows (start, middle, end), compressed together, shrink by less
    than 2 % become the literals of the block's first sequence; LZ4 compresses the rest.
    """
    n = src.shape[0]
    _check_frame_args(n, out.shape[0], compress, acceleration, planes)
    lz4 = _lz4(compress, acceleration)
    data = np.ascontiguousarray(src, dtype=np.uint8)
    pb = n // planes if planes > 1 else 0
    k = _noise_planes(data, pb, planes, lz4)
    block = b""
    if k == 0:
        block = lz4(data)
    elif k < planes:
        rest = lz4(data[k * pb :])
        literals, pos = _first_run(rest)
        block = _token_bytes(rest[0] & 15, k * pb + literals) + data[: k * pb].tobytes() + rest[pos:]
    if not 0 < len(block) < n:
        block = data.tobytes()  # nothing shrinks: stored verbatim, as H5Zlz4.c does
    header = n.to_bytes(8, "big") + n.to_bytes(4, "big") + len(block).to_bytes(4, "big")
    out[:16] = np.frombuffer(header, np.uint8)
    out[16 : 16 + len(block)] = np.frombuffer(block, np.uint8)
    return 16 + len(block)


def lz4_frames(src: np.ndarray, chunk_bytes: int, itemsize: int, scratch: np.ndarray, compress: int,
               out: np.ndarray, stride: int, sizes: np.ndarray, acceleration: int = 1, planes: int = 1) -> None:
    """HDF5-LZ4 frames of ``len(sizes)`` consecutive chunks of `src` at ``out[i * stride]``.

    Each chunk is byte-shuffled with `itemsize` first when ``itemsize > 1`` (through
    `scratch`); ``sizes[i]`` receives the length of frame ``i``; `acceleration` and
    `planes` as in :func:`lz4_frame`.
    """
    n = sizes.shape[0]
    if n == 0:
        return
    _check_frame_args(chunk_bytes, stride, compress, acceleration, planes)
    if src.shape[0] < n * chunk_bytes:
        raise ValueError(f"src holds {src.shape[0]} bytes, {n} chunks need {n * chunk_bytes}")
    if out.shape[0] < n * stride:
        raise ValueError(f"out holds {out.shape[0]} bytes, {n} frames need {n * stride}")
    if itemsize > 1 and scratch.shape[0] < chunk_bytes:
        raise ValueError(f"scratch holds {scratch.shape[0]} bytes, a chunk needs {chunk_bytes}")
    for i in range(n):
        data = src[i * chunk_bytes : (i + 1) * chunk_bytes]
        if itemsize > 1:
            shuffle(data, itemsize, scratch[:chunk_bytes])
            data = scratch[:chunk_bytes]
        sizes[i] = lz4_frame(data, out[i * stride : (i + 1) * stride], compress, acceleration, planes)



def lz4_frames_in_place(buf: np.ndarray, offset: int, chunk_bytes: int, stride: int, scratch: np.ndarray,
                        compress: int, sizes: np.ndarray, starts: np.ndarray, acceleration: int = 1,
                        planes: int = 1) -> None:
    """HDF5-LZ4 frames of ``len(sizes)`` chunks, each framed in the slot it was gathered in.

    Chunk ``i`` lies at ``buf[i * stride + offset:][:chunk_bytes]``; its frame, equal to
    :func:`lz4_frame`'s, is written to ``buf[i * stride + starts[i]:][:sizes[i]]``. The
    twin builds the frame with :func:`lz4_frame` and places it where the kernel leaves it:
    a verbatim block and a block that starts with literal planes end up with those bytes
    where the chunk lay (header and token just before), any other block at the slot's start.
    """
    n = sizes.shape[0]
    _check_frame_args(chunk_bytes, -1, compress, acceleration, planes)
    if starts.shape[0] != n:
        raise ValueError(f"starts has {starts.shape[0]} entries, sizes {n}")
    room = 16 + _literal_header(chunk_bytes)
    if offset < room:
        raise ValueError(f"offset {offset} leaves no room for the frame header and first token (needs {room})")
    if stride < offset + chunk_bytes:
        raise ValueError(f"stride {stride} is shorter than offset + chunk_bytes ({offset + chunk_bytes})")
    need = lz4_bound(chunk_bytes)
    if scratch.shape[0] < need:
        raise ValueError(f"scratch holds {scratch.shape[0]} bytes, LZ4 may need {need}")
    if n == 0:
        return
    if buf.shape[0] < n * stride:
        raise ValueError(f"buf holds {buf.shape[0]} bytes, {n} slots need {n * stride}")
    frame = np.empty(_frame_bound(chunk_bytes, planes), np.uint8)
    lz4 = _lz4(compress, acceleration)
    pb = chunk_bytes // planes if planes > 1 else 0
    for i in range(n):
        slot = buf[i * stride : (i + 1) * stride]
        data = slot[offset : offset + chunk_bytes].copy()
        size = lz4_frame(data, frame, compress, acceleration, planes)
        if size - 16 == chunk_bytes:  # verbatim: the chunk's bytes are the block
            start = offset - 16
        elif _noise_planes(data, pb, planes, lz4):  # the block starts with the literal planes
            start = offset - _first_run(frame[16 : 16 + room].tobytes())[1] - 16
        else:
            start = 0
        slot[start : start + size] = frame[:size]
        sizes[i], starts[i] = size, start
