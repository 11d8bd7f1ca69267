"""Chunk codecs for HDF5 direct chunk writes: byte-shuffle, deflate (gzip) and LZ4.

The streaming writers encode chunks in a thread pool with :meth:`Codec.encode` and a single
writer thread stores them with ``dataset.id.write_direct_chunk(offsets, data, filter_mask=0)``,
which bypasses HDF5's filter pipeline. The bytes must therefore be exactly what the pipeline
declared by :meth:`Codec.create_dataset` would have produced, so that any HDF5 reader decodes
them (``import hdf5plugin`` is needed for LZ4):

========================  ============  =====================  ===========================
step (in pipeline order)  HDF5 filter   ``cd_values``          flags
========================  ============  =====================  ===========================
byte shuffle              2             ``[itemsize]``         optional
deflate (``"gzip"``)      1             ``[level]``            optional
LZ4 (``"lz4"``)           32004         ``[1 << 30]``          mandatory (as ImarisWriter)
========================  ============  =====================  ===========================

Every encoder releases the GIL while it compresses, so the pool scales with cores (measured on
an idle 2-core VM, 1 MiB uint16 chunks: stdlib ``zlib.compress`` x1.95 and
``isal.isal_zlib.compress`` x1.95 on two threads, ``lz4.block.compress`` x1.55, being close to
memory bandwidth), and the shuffle kernel releases it too.

Deflate levels
--------------
All deflate output is a zlib-format stream (what HDF5's deflate filter inflates). The
``level`` (1..9, the value recorded in the filter's ``cd_values``) selects the encoder:

* levels 1, 2, 3 -> ISA-L (``isal.isal_zlib``) at the same level. On camera-like uint16 data
  (1 MiB chunks) ISA-L runs 5-9x faster than zlib; with byte shuffle its ratio equals zlib's
  at the same level (within 0.5 %), without shuffle it is 4-5 % lower (levels 1-2).
* levels 4..9 -> stdlib ``zlib`` at that level (ISA-L has no levels above 3).

Byte-shuffled chunks at ISA-L levels are coded plane by plane (:func:`deflate_planes`): the
low-byte plane of camera data is photon noise, which LZ77 cannot shrink but which cost ISA-L
three quarters of its time; a literals-only Huffman block (``huffman_block`` kernel, a code
built from the plane's own byte counts) codes it 2.7x faster and slightly smaller, while the
smooth high-byte plane keeps ISA-L. Which planes go which way is tried per chunk on three
4 KiB windows (start, middle, end), so zero padding or a repetitive plane keeps LZ77. On the
benchmarks' 8 x 256 x 256 uint16 chunks: 1.7x faster than ISA-L over the whole chunk, ratio
2.485 against 2.477 (zlib level 2: 2.413). The result is one zlib stream, as HDF5 expects.

``deflate_backend="zlib"`` forces stdlib zlib for every level (byte-compatible with
ImarisWriter's ``compress2`` at the same zlib version); ``"isal"`` forces ISA-L for every level
(levels above 3 use ISA-L level 3). The default, ``None``, takes the module attribute
:data:`DEFAULT_DEFLATE_BACKEND`, initialised from the environment variable
``FASTIMS_DEFLATE_BACKEND`` (``"auto"`` when unset). Without the ``isal`` package ``"auto"``
falls back to zlib.

LZ4 framing
-----------
The HDF5 LZ4 filter (id 32004, ``H5Zlz4.c``) frames a chunk as an 8-byte big-endian original
size, a 4-byte big-endian block size, then per block a 4-byte big-endian compressed size and
the raw LZ4 block. A block that does not shrink is stored verbatim with compressed size equal
to its length, and the decoder treats "compressed size == block size" as verbatim. See
:func:`encode_lz4` and :func:`decode_lz4`.

LZ4 acceleration
----------------
LZ4 blocks are standard (any LZ4 decoder, hence hdf5plugin, reads them) whatever the
encoder's *acceleration* (``LZ4_compress_fast``; 1 is ``LZ4_compress_default``, what
ImarisWriter and the HDF5 filter use). Byte-shuffled chunks are encoded with
:data:`LZ4_SHUFFLED_ACCELERATION` (2): their low-byte half is noise LZ4 cannot shrink and their
high-byte half is long runs, so the faster match search loses next to nothing (camera-like
2048 x 2048 uint16, 8 x 256 x 256 chunks: ratio 1.984 at 1 and 2 while LZ4 runs ~15 % faster;
the ImarisWriter fixture 1.789 both; benchmarks/RESULTS.md, sixth session). Unshuffled chunks
keep acceleration 1: there it costs ratio (camera-like uint16 1.448 -> 1.244). ``Codec.create(...,
lz4_acceleration=N)`` overrides the choice; ``compression_level`` does not apply to LZ4.

Byte-shuffled LZ4 chunks take the deflate idea above into one LZ4 block (``lz4_frame`` kernel,
``planes``): leading byte planes that LZ4 shrinks by less than 2 % on three 2 KiB windows
(start, middle, end) are copied as the literals of the block's first sequence instead of
being searched, and LZ4 compresses the remaining planes. The block stays one standard LZ4
block (any decoder reads it). Benchmark camera, 8 x 256 x 256 uint16 chunks: 0.182 -> 0.136
s/GB, ratio 1.9799 -> 1.9804 (benchmarks/RESULTS.md, tenth session). The engine gathers
such chunks straight into the slots of the buffer the writer thread stores them from and
frames each where it lies (``lz4_frames_in_place``, :meth:`Codec.encode_chunks_in_place`):
the literal planes are written once, by the gather, instead of gathered into scratch and
copied into the frame (7 % less time for that step: `bench_codecs.py`, eleventh session).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import lz4.block
import numpy as np
import numpy.typing as npt

from fastims import _dispatch
# the LZ4 rules the kernels and their twins share
from fastims._reference.chunks import _literal_header, lz4_bound
from fastims.errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    import h5py

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a declared dependency
    isal_zlib = None

__all__ = [
    "COMPRESSIONS",
    "chunk_addresses",
    "DEFAULT_DEFLATE_BACKEND",
    "DEFAULT_GZIP_LEVEL",
    "DEFLATE_BACKENDS",
    "FILTER_DEFLATE",
    "FILTER_LZ4",
    "FILTER_SHUFFLE",
    "LZ4_BLOCK_SIZE",
    "LZ4_MAX_ACCELERATION",
    "LZ4_SHUFFLED_ACCELERATION",
    "SHUFFLE_RULES",
    "Codec",
    "decode_lz4",
    "encode_lz4",
    "lz4_compress_address",
]

logger = logging.getLogger("fastims")

FILTER_DEFLATE = 1
FILTER_SHUFFLE = 2
FILTER_LZ4 = 32004
#: HDF5 filter flags (``H5Z_FLAG_MANDATORY`` / ``H5Z_FLAG_OPTIONAL``)
_FLAG_MANDATORY = 0x0000
_FLAG_OPTIONAL = 0x0001

#: LZ4 block size recorded in ``cd_values`` (ImarisWriter's and the filter's default, 1 GiB)
LZ4_BLOCK_SIZE = 1 << 30

#: the scratch argument of kernels that need none
_NO_SCRATCH = np.empty(0, np.uint8)

#: LZ4 acceleration for byte-shuffled chunks (module docstring); unshuffled chunks use 1
LZ4_SHUFFLED_ACCELERATION = 2

#: liblz4's LZ4_ACCELERATION_MAX (larger values are clamped by liblz4; refused here)
LZ4_MAX_ACCELERATION = 65537
#: ImarisWriter's default gzip level
DEFAULT_GZIP_LEVEL = 2
#: highest level ISA-L implements
_ISAL_MAX_LEVEL = 3

COMPRESSIONS: tuple[None | str, ...] = (None, "gzip", "lz4")
SHUFFLE_RULES = ("imaris", "always")
DEFLATE_BACKENDS = ("auto", "zlib", "isal")

#: backend used when ``Codec.create(deflate_backend=None)``; one of :data:`DEFLATE_BACKENDS`
DEFAULT_DEFLATE_BACKEND: str = os.environ.get("FASTIMS_DEFLATE_BACKEND", "auto")

CompressionName = Literal["gzip", "lz4"] | None

_LZ4_HEADER = struct.Struct(">QI")
_LZ4_BLOCK_HEADER = struct.Struct(">I")
# H5Zlz4 refuses chunks above INT32_MAX bytes; LZ4 blocks are limited to LZ4_MAX_INPUT_SIZE
_LZ4_MAX_CHUNK = 2**31 - 1
_LZ4_MAX_BLOCK = 0x7E000000


# ---------------------------------------------------------------------------------------
# LZ4 framing of the HDF5 LZ4 filter (id 32004)
# ---------------------------------------------------------------------------------------


def encode_lz4(data: Any, *, block_size: int = LZ4_BLOCK_SIZE, acceleration: int = 1) -> bytes:
    """Compress `data` into the frame of the HDF5 LZ4 filter (id 32004).

    Parameters
    ----------
    data : bytes-like
        C-contiguous buffer (bytes, memoryview, ndarray) of at most ``2**31 - 1`` bytes.
    block_size : int, optional
        LZ4 block size; the frame records ``min(block_size, len(data))``.
    acceleration : int, default 1
        ``LZ4_compress_fast`` acceleration, 1..65537 (1 = ``LZ4_compress_default``).

    Returns
    -------
    bytes
        ``>Q`` original size, ``>I`` block size, then per block ``>I`` compressed size and
        the LZ4 block (``LZ4_compress_fast``). A block whose compressed form is not smaller
        than the block is stored verbatim with compressed size = block length, as
        ``H5Zlz4.c`` does.

    Examples
    --------
    >>> frame = encode_lz4(bytes(1000))
    >>> frame[:12].hex()
    '00000000000003e8000003e8'
    >>> decode_lz4(frame) == bytes(1000)
    True
    """
    mv = memoryview(data).cast("B")
    nbytes = mv.nbytes
    if nbytes > _LZ4_MAX_CHUNK:
        raise ValueError(f"the HDF5 LZ4 filter handles chunks up to 2**31-1 bytes, got {nbytes}")
    if not 0 < block_size <= _LZ4_MAX_BLOCK:
        raise ValueError(f"block_size must be in 1..{_LZ4_MAX_BLOCK}, got {block_size}")
    _check_acceleration(acceleration)
    bs = min(block_size, nbytes)
    if bs == nbytes:
        # one block (the normal case: chunks are far below 1 GiB): a single join copy
        comp = lz4.block.compress(mv, mode="fast", acceleration=acceleration, store_size=False)
        if len(comp) >= nbytes:
            return b"".join((struct.pack(">QII", nbytes, nbytes, nbytes), mv))
        return b"".join((struct.pack(">QII", nbytes, nbytes, len(comp)), comp))
    parts: list[Any] = [_LZ4_HEADER.pack(nbytes, bs)]
    for start in range(0, nbytes, bs):
        block = mv[start : start + bs]
        comp = lz4.block.compress(block, mode="fast", acceleration=acceleration, store_size=False)
        if len(comp) >= len(block):
            parts += (_LZ4_BLOCK_HEADER.pack(len(block)), block)
        else:
            parts += (_LZ4_BLOCK_HEADER.pack(len(comp)), comp)
    return b"".join(parts)


def _check_acceleration(acceleration: Any) -> None:
    if not _is_int(acceleration) or not 1 <= acceleration <= LZ4_MAX_ACCELERATION:
        raise ValueError(f"LZ4 acceleration must be an integer in 1..{LZ4_MAX_ACCELERATION}, got {acceleration!r}")


_LZ4_ADDRESS: int | None = None
_LZ4_LIBS: list[Any] = []


def lz4_compress_address() -> int:
    """Address of liblz4's ``LZ4_compress_fast`` for the ``lz4_frame`` kernels, or 0.

    Looked up once: first in the ``lz4`` package's own extension (the liblz4 that
    :func:`encode_lz4` runs), then the system's liblz4. A candidate is used only after it
    compressed a probe that ``lz4`` decompresses back.
    """
    global _LZ4_ADDRESS
    if _LZ4_ADDRESS is None:
        _LZ4_ADDRESS = _find_lz4_compress()
    return _LZ4_ADDRESS


def _find_lz4_compress() -> int:
    import ctypes
    import ctypes.util

    candidates: list[str] = []
    try:
        from lz4.block import _block

        candidates.append(_block.__file__)
    except (ImportError, AttributeError):  # pragma: no cover - lz4 without its extension
        pass
    system = ctypes.util.find_library("lz4")
    if system:
        candidates.append(system)
    probe = bytes(range(256)) * 64 + bytes(4096)
    for lib in candidates:
        try:
            fn = ctypes.CDLL(lib).LZ4_compress_fast
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        out = ctypes.create_string_buffer(lz4_bound(len(probe)))
        size = fn(probe, out, len(probe), len(out), 1)
        try:
            ok = 0 < size and lz4.block.decompress(out.raw[:size], uncompressed_size=len(probe)) == probe
        except lz4.block.LZ4BlockError:
            ok = False
        if ok:
            _LZ4_LIBS.append(fn)  # keep the library object referenced for the process's life
            return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)
    logger.debug("liblz4 not found: LZ4 chunks are encoded through the lz4 package")
    return 0


def decode_lz4(data: Any) -> bytes:
    """Decode one chunk framed by the HDF5 LZ4 filter (inverse of :func:`encode_lz4`).

    Follows ``H5Zlz4.c``: the block size is capped at the original size, the last block may be
    shorter, and a block whose compressed size equals its length is copied verbatim.

    Parameters
    ----------
    data : bytes-like
        The chunk as stored in the file (e.g. from ``read_direct_chunk``).

    Returns
    -------
    bytes
        The original bytes.

    Raises
    ------
    FormatError
        If the frame is truncated or a block does not decode to its stated length.
    """
    mv = memoryview(data).cast("B")
    if mv.nbytes < _LZ4_HEADER.size:
        raise FormatError(f"LZ4 chunk of {mv.nbytes} bytes is shorter than its 12-byte header")
    orig, bs = _LZ4_HEADER.unpack_from(mv)
    bs = min(bs, orig)
    if orig and not bs:
        raise FormatError("LZ4 chunk header has block size 0")
    pos = _LZ4_HEADER.size
    parts: list[Any] = []
    done = 0
    while done < orig:
        cur = min(bs, orig - done)
        if pos + 4 > mv.nbytes:
            raise FormatError(f"LZ4 chunk truncated at byte {pos} (block header)")
        (csize,) = _LZ4_BLOCK_HEADER.unpack_from(mv, pos)
        pos += 4
        if pos + csize > mv.nbytes:
            raise FormatError(f"LZ4 chunk truncated at byte {pos} ({csize}-byte block)")
        block = mv[pos : pos + csize]
        if csize == cur:
            parts.append(block)
        else:
            try:
                raw = lz4.block.decompress(block, uncompressed_size=cur)
            except lz4.block.LZ4BlockError as exc:
                raise FormatError(f"corrupt LZ4 block at byte {pos}: {exc}") from None
            if len(raw) != cur:
                raise FormatError(f"LZ4 block at byte {pos} decoded to {len(raw)}, not {cur}")
            parts.append(raw)
        pos += csize
        done += cur
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# deflate
# ---------------------------------------------------------------------------------------


def _resolve_deflate(level: int, backend: str) -> tuple[str, int]:
    """Concrete (encoder, encoder level) for gzip `level` under `backend`."""
    if backend not in DEFLATE_BACKENDS:
        raise ValueError(f"deflate_backend must be one of {DEFLATE_BACKENDS}, got {backend!r}")
    if backend == "isal" and isal_zlib is None:
        raise ModuleNotFoundError("deflate_backend='isal' needs the 'isal' package")
    if backend == "isal" or (backend == "auto" and isal_zlib is not None and level <= 3):
        return "isal", min(level, _ISAL_MAX_LEVEL)
    return "zlib", level


def _deflate(data: Any, encoder: str, level: int) -> bytes:
    if encoder == "isal":
        return isal_zlib.compress(data, level)
    return zlib.compress(data, level)


#: the planes of a shuffled chunk are coded apart only from this many bytes per plane on
#: (below it the 139-byte Huffman header and the trial windows cost more than they save)
_PLANE_MIN_BYTES = 64 << 10
#: bytes of each trial window of _huffman_pays
_TRIAL_BYTES = 4 << 10
#: a plane is Huffman-coded when its codes take at most this much more than LZ77's output
#: on every trial window
_HUFFMAN_SLACK = 1.02
#: bytes of huffman_block's header (the same for every block), left out of the trial: on a
#: window it weighs 3 %, on a plane of 512 KiB 0.04 %
_HUFFMAN_HEADER_BYTES = 139
# zlib stream header (deflate, 32 KiB window, "fast" level flag) and the final empty block
# (fixed Huffman, end-of-block only) that ends a stream of sync-flushed segments
_ZLIB_HEADER = b"\x78\x5e"
_FINAL_EMPTY_BLOCK = b"\x03\x00"


def _huffman_pays(plane: np.ndarray, level: int, scratch: np.ndarray) -> bool:
    """Whether Huffman coding alone codes `plane` about as small as ISA-L's LZ77 at `level`.

    Tried on windows at the start, middle and end of the plane (where padding would sit),
    so a plane that LZ77 shrinks anywhere keeps LZ77.
    """
    huffman = _dispatch.kernel("huffman_block")
    n = plane.shape[0]
    for start in (0, (n - _TRIAL_BYTES) // 2, n - _TRIAL_BYTES):
        window = plane[start : start + _TRIAL_BYTES]
        lz77 = len(isal_zlib.compress(window, level, -15))
        if huffman(window, scratch, True) - _HUFFMAN_HEADER_BYTES > lz77 * _HUFFMAN_SLACK:
            return False
    return True


def deflate_planes(data: np.ndarray, itemsize: int, level: int) -> bytes:
    """zlib stream of a byte-shuffled chunk, each byte plane coded the cheaper way.

    A plane that LZ77 cannot shrink better than Huffman coding alone (the noisy low bytes of
    camera data, see :func:`_huffman_pays`) becomes one literals-only Huffman block
    (``huffman_block`` kernel); the others are coded by ISA-L at `level`, sync-flushed so the
    segments join as bytes. The result is one ordinary zlib stream (any inflate, hence HDF5's
    deflate filter, decodes it), 1.7x faster to make than ISA-L over the whole camera chunk
    at the same size (module docstring).

    Parameters
    ----------
    data : ndarray of uint8
        1-D C-contiguous bytes of a chunk byte-shuffled with `itemsize` (HDF5 filter 2).
    itemsize : int
        Element size: the chunk holds `itemsize` planes of ``len(data) // itemsize`` bytes
        (trailing bytes, left in place by the shuffle, go with the last plane).
    level : int
        ISA-L level (0..3) for the planes LZ77 is kept for.
    """
    nbytes = data.shape[0]
    n = nbytes // itemsize
    if itemsize < 2 or n < _PLANE_MIN_BYTES or isal_zlib is None:
        return _deflate(data, "isal" if isal_zlib is not None else "zlib", level)
    huffman = _dispatch.kernel("huffman_block")
    # Huffman blocks go one after the other into this buffer (each plane's bound, with the
    # kernel's 8 spare bytes), so the final join is their only copy; trials use the rest
    blocks = np.empty(nbytes + itemsize * (n // 2048 + 168), np.uint8)
    pos = 0
    out: list[Any] = [_ZLIB_HEADER]
    for p in range(itemsize):
        plane = data[p * n : nbytes if p == itemsize - 1 else (p + 1) * n]
        if _huffman_pays(plane, level, blocks[pos:]):
            size = huffman(plane, blocks[pos:], False)
            out.append(blocks[pos : pos + size])
            pos += size
        else:
            encoder = isal_zlib.compressobj(level, zlib.DEFLATED, -15)
            out.append(encoder.compress(plane))
            out.append(encoder.flush(isal_zlib.Z_SYNC_FLUSH))
    out.append(_FINAL_EMPTY_BLOCK)
    out.append(struct.pack(">I", isal_zlib.adler32(data)))
    return b"".join(out)


_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,) + (
    (isal_zlib.error,) if isal_zlib is not None else ()
)


def _inflate(data: Any, nbytes: int) -> bytes:
    # either library inflates any zlib stream; ISA-L is faster
    if isal_zlib is not None:
        return isal_zlib.decompress(data, bufsize=max(nbytes, 1))
    return zlib.decompress(data, bufsize=max(nbytes, 1))


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class Codec:
    """How chunks are encoded for ``write_direct_chunk``, and the matching HDF5 pipeline.

    Build one with :meth:`create`, which applies the dtype-dependent shuffle rule. The
    instance is immutable and thread-safe: worker threads may call :meth:`encode`
    concurrently, each with its own `scratch` buffer.

    Attributes
    ----------
    compression : {None, "gzip", "lz4"}
        Codec after the optional shuffle.
    level : int
        gzip level 1..9 (recorded in the deflate filter's ``cd_values``); 0 otherwise.
    shuffle : bool
        Byte-shuffle (HDF5 filter 2) before the codec.
    itemsize : int
        Bytes per element of the data.
    deflate_backend : {"isal", "zlib"} or None
        Encoder actually used for gzip (see the module docstring for the level mapping);
        ``None`` for other codecs. Passing ``"auto"`` (or ``None``) resolves it.
    lz4_acceleration : int
        ``LZ4_compress_fast`` acceleration of LZ4 chunks (module docstring); 0 for other
        codecs. Passing 0 for LZ4 resolves it: :data:`LZ4_SHUFFLED_ACCELERATION` when
        shuffling, else 1.

    Examples
    --------
    >>> import numpy as np
    >>> codec = Codec.create("gzip", level=2, shuffle=True, dtype=np.uint16)
    >>> codec.filters
    ((2, 1, (2,)), (1, 1, (2,)))
    >>> chunk = np.arange(4096, dtype=np.uint16).reshape(4, 32, 32)
    >>> data = codec.encode(chunk)
    >>> bool((codec.decode(data, chunk.shape, chunk.dtype) == chunk).all())
    True
    """

    compression: CompressionName
    level: int = 0
    shuffle: bool = False
    itemsize: int = 1
    deflate_backend: str | None = None
    lz4_acceleration: int = 0
    # level passed to the deflate encoder (ISA-L tops out at 3); set in __post_init__
    _encoder_level: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {COMPRESSIONS}, got {self.compression!r}"
            )
        if not _is_int(self.itemsize) or self.itemsize < 1:
            raise ValueError(f"itemsize must be a positive integer, got {self.itemsize!r}")
        if not isinstance(self.shuffle, bool | np.bool_):
            raise TypeError(f"shuffle must be a bool, got {self.shuffle!r}")
        object.__setattr__(self, "shuffle", bool(self.shuffle))
        object.__setattr__(self, "itemsize", int(self.itemsize))
        if self.compression == "gzip":
            if not _is_int(self.level) or not 1 <= self.level <= 9:
                raise ValueError(f"gzip level must be an integer in 1..9, got {self.level!r}")
            backend = self.deflate_backend
            encoder, enc_level = _resolve_deflate(
                int(self.level), DEFAULT_DEFLATE_BACKEND if backend is None else backend
            )
            object.__setattr__(self, "level", int(self.level))
            object.__setattr__(self, "deflate_backend", encoder)
            object.__setattr__(self, "_encoder_level", enc_level)
        else:
            object.__setattr__(self, "level", 0)
            object.__setattr__(self, "deflate_backend", None)
        if self.compression == "lz4":
            acceleration = self.lz4_acceleration
            if _is_int(acceleration) and acceleration == 0:
                acceleration = LZ4_SHUFFLED_ACCELERATION if self.shuffles else 1
            _check_acceleration(acceleration)
            object.__setattr__(self, "lz4_acceleration", int(acceleration))
        else:
            object.__setattr__(self, "lz4_acceleration", 0)

    @classmethod
    def create(
        cls,
        compression: CompressionName,
        *,
        level: int | None = None,
        shuffle: bool = False,
        dtype: npt.DTypeLike,
        shuffle_rule: Literal["imaris", "always"] = "imaris",
        deflate_backend: Literal["auto", "zlib", "isal"] | None = None,
        lz4_acceleration: int | None = None,
    ) -> Codec:
        """Validate the options and build the codec for `dtype`.

        Parameters
        ----------
        compression : {None, "gzip", "lz4"}
            Codec.
        level : int, optional
            gzip level 1..9, default 2 (ImarisWriter's default). Ignored for other codecs.
        shuffle : bool, default False
            Request byte-shuffle before the codec.
        dtype : dtype-like
            Element type of the chunks (integer or floating point).
        shuffle_rule : {"imaris", "always"}, default "imaris"
            ``"imaris"`` follows ImarisWriter (``GetNBytesShuffle``): shuffle only 2- and
            4-byte *integer* data (never uint8 or float32), and only together with a codec.
            ``"always"`` honours `shuffle` as given (e.g. BDV's shuffled float32, or shuffle
            without a codec).
        deflate_backend : {"auto", "zlib", "isal"}, optional
            gzip encoder choice (module docstring); ``None`` uses
            :data:`DEFAULT_DEFLATE_BACKEND`.
        lz4_acceleration : int, optional
            LZ4 acceleration 1..65537; ``None`` chooses by the shuffle (module docstring).
            Ignored for other codecs.

        Returns
        -------
        Codec

        Raises
        ------
        ValueError
            For an unknown codec, level, shuffle rule, backend or LZ4 acceleration.
        TypeError
            For a non-numeric dtype.
        """
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if shuffle_rule not in SHUFFLE_RULES:
            raise ValueError(f"shuffle_rule must be one of {SHUFFLE_RULES}, got {shuffle_rule!r}")
        dt = np.dtype(dtype)
        if dt.kind not in "uif" or dt.fields is not None:
            raise TypeError(f"dtype must be an integer or floating-point type, got {dt}")
        if compression == "gzip":
            level = DEFAULT_GZIP_LEVEL if level is None else level
        else:
            level = 0
        if compression == "lz4" and lz4_acceleration is not None:
            _check_acceleration(lz4_acceleration)  # 0 means "choose" only to the dataclass
        if shuffle_rule == "imaris":
            use_shuffle = (
                bool(shuffle)
                and compression is not None
                and dt.kind in "iu"
                and dt.itemsize in (2, 4)
            )
            if shuffle and not use_shuffle:
                logger.debug("shuffle not applied to %s with compression %r", dt, compression)
        else:
            use_shuffle = bool(shuffle)
        return cls(
            compression,
            level=level,
            shuffle=use_shuffle,
            itemsize=dt.itemsize,
            deflate_backend=deflate_backend,
            lz4_acceleration=0 if compression != "lz4" or lz4_acceleration is None else lz4_acceleration,
        )

    # -- description -------------------------------------------------------------------

    @property
    def filters(self) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
        """HDF5 filter pipeline as ``(filter id, flags, cd_values)`` tuples, in order."""
        pipeline: list[tuple[int, int, tuple[int, ...]]] = []
        if self.shuffle:
            pipeline.append((FILTER_SHUFFLE, _FLAG_OPTIONAL, (self.itemsize,)))
        if self.compression == "gzip":
            pipeline.append((FILTER_DEFLATE, _FLAG_OPTIONAL, (self.level,)))
        elif self.compression == "lz4":
            pipeline.append((FILTER_LZ4, _FLAG_MANDATORY, (LZ4_BLOCK_SIZE,)))
        return tuple(pipeline)

    @property
    def encoder(self) -> str:
        """Short description of the encoder, e.g. ``"shuffle+isal-2"``, ``"lz4"``, ``"none"``.

        LZ4 at an acceleration above 1 reads ``"lz4-fast<N>"`` (``"shuffle+lz4-fast2"``).
        """
        if self.compression == "gzip":
            enc = f"{self.deflate_backend}-{self._encoder_level}"
        elif self.compression == "lz4" and self.lz4_acceleration > 1:
            enc = f"lz4-fast{self.lz4_acceleration}"
        else:
            enc = self.compression or "none"
        return f"shuffle+{enc}" if self.shuffle else enc

    # -- encode / decode ---------------------------------------------------------------

    def _chunk_bytes(self, chunk: np.ndarray) -> np.ndarray:
        if not isinstance(chunk, np.ndarray):
            raise TypeError(f"chunk must be a numpy array, got {type(chunk).__name__}")
        if not chunk.flags.c_contiguous:
            raise ValueError("chunk must be C-contiguous")
        if chunk.dtype.itemsize != self.itemsize:
            raise ValueError(
                f"chunk dtype {chunk.dtype} has itemsize {chunk.dtype.itemsize}, "
                f"the codec expects {self.itemsize}"
            )
        if chunk.size == 0:
            raise ValueError("chunk is empty")
        return chunk.reshape(-1).view(np.uint8)

    @staticmethod
    def _scratch(scratch: np.ndarray | None, nbytes: int) -> np.ndarray:
        if scratch is None:
            return np.empty(nbytes, np.uint8)
        if (
            not isinstance(scratch, np.ndarray)
            or scratch.dtype != np.uint8
            or scratch.ndim != 1
            or not scratch.flags.c_contiguous
            or not scratch.flags.writeable
        ):
            raise ValueError("scratch must be a writeable C-contiguous 1-D uint8 array")
        if scratch.shape[0] < nbytes:
            raise ValueError(f"scratch has {scratch.shape[0]} bytes, the chunk needs {nbytes}")
        return scratch[:nbytes]

    def encode(
        self, chunk: np.ndarray, *, scratch: np.ndarray | None = None
    ) -> bytes | memoryview:
        """Encode one full (padded) chunk into the bytes its dataset's pipeline expects.

        Parameters
        ----------
        chunk : ndarray
            C-contiguous chunk with elements of :attr:`itemsize` bytes, already padded to the
            dataset's chunk shape.
        scratch : ndarray of uint8, optional
            Reusable buffer of at least ``chunk.nbytes`` bytes for the shuffled bytes (keep
            one per worker thread); allocated per call when omitted.

        Returns
        -------
        bytes or memoryview
            Ready for ``write_direct_chunk(..., filter_mask=0)``. Without compression this
            is a memoryview of the chunk itself (no copy), or of `scratch` when shuffled:
            write it before reusing either buffer.
        """
        data = self._chunk_bytes(chunk)
        if self.shuffles:
            buf = self._scratch(scratch, data.shape[0])
            _dispatch.kernel("shuffle")(data, self.itemsize, buf)
            data = buf
        return self.compress(data)

    @property
    def shuffles(self) -> bool:
        """True when chunks are byte-shuffled before compression (shuffle of 2+ byte items)."""
        return self.shuffle and self.itemsize > 1

    def compress(self, data: np.ndarray) -> bytes | memoryview:
        """The last step of :meth:`encode`: compress chunk bytes already shuffled if needed.

        Parameters
        ----------
        data : ndarray of uint8
            1-D C-contiguous bytes of one padded chunk.
        """
        if self.compression is None:
            return memoryview(data)
        if self.compression == "gzip":
            if self.shuffles and self.deflate_backend == "isal":
                return deflate_planes(data, self.itemsize, self._encoder_level)
            return _deflate(data, self.deflate_backend, self._encoder_level)
        bound = self.frame_bound(data.shape[0])
        if bound is not None:  # the kernel's frame (literal noise planes), as encode_into
            out = np.empty(bound, np.uint8)
            return memoryview(out)[: self.encode_into(data, out)]
        return encode_lz4(data, acceleration=self.lz4_acceleration)

    @property
    def _planes(self) -> int:
        # byte planes of a chunk as the LZ4 kernels see it (shuffled: one per item byte)
        return self.itemsize if self.shuffles else 1

    def frame_bound(self, nbytes: int) -> int | None:
        """Bytes :meth:`encode_into` may write for a chunk of `nbytes`, or None if it cannot.

        Only LZ4 chunks of one block encode into a caller's buffer (with liblz4 found); the
        buffer can then be reused from a pool instead of a new bytes object per chunk.
        """
        if self.compression != "lz4" or not 0 < nbytes <= min(LZ4_BLOCK_SIZE, _LZ4_MAX_BLOCK):
            return None
        if lz4_compress_address() == 0:
            return None
        # shuffled chunks may start with literal planes: room for their longer first token
        extra = nbytes // 255 + 2 if self._planes > 1 else 0
        return 16 + lz4_bound(nbytes) + extra

    def encode_into(self, data: np.ndarray, out: np.ndarray) -> int:
        """Compress chunk bytes (shuffled if needed) into `out`; return the encoded length.

        `out` needs :meth:`frame_bound` bytes; the result equals :meth:`compress`'s.
        """
        if self.frame_bound(data.shape[0]) is None:
            raise ValueError(f"{self.encoder} cannot encode {data.shape[0]} bytes into a buffer")
        return int(_dispatch.kernel("lz4_frame")(data, out, lz4_compress_address(), self.lz4_acceleration,
                                                 self._planes))

    def encode_chunks_into(self, data: np.ndarray, chunk_bytes: int, out: np.ndarray, stride: int,
                           sizes: np.ndarray, *, scratch: np.ndarray | None = None, shuffled: bool = False) -> None:
        """Shuffle (if needed) and compress ``len(sizes)`` consecutive chunks in one kernel call.

        Parameters
        ----------
        data : ndarray of uint8
            1-D bytes of the padded chunks, back to back.
        chunk_bytes : int
            Bytes per chunk.
        out : ndarray of uint8
            Chunk ``i`` is encoded at ``out[i * stride]``; needs ``len(sizes) * stride`` bytes.
        stride : int
            At least :meth:`frame_bound` of `chunk_bytes`.
        sizes : ndarray of int64
            Receives each encoded length; chunk ``i`` equals :meth:`compress` of its bytes.
        scratch : ndarray of uint8, optional
            ``chunk_bytes`` of room for a shuffled chunk (keep one per worker thread);
            allocated per call when needed and omitted.
        shuffled : bool, default False
            The chunks are already byte-shuffled (``gather_row`` with the item size), so
            they are compressed as they are.
        """
        if self.frame_bound(chunk_bytes) is None:
            raise ValueError(f"{self.encoder} cannot encode {chunk_bytes}-byte chunks into a buffer")
        itemsize = self.itemsize if self.shuffles and not shuffled else 1
        scratch = self._scratch(scratch, chunk_bytes) if itemsize > 1 else _NO_SCRATCH
        _dispatch.kernel("lz4_frames")(data, chunk_bytes, itemsize, scratch, lz4_compress_address(), out,
                                       stride, sizes, self.lz4_acceleration, self._planes)

    def frame_room(self, nbytes: int) -> int | None:
        """Bytes :meth:`encode_chunks_in_place` needs before each chunk of `nbytes`, or None.

        Room for the frame header and the longest first token, rounded up to 64 bytes so
        that chunks gathered after it start on a cache line. None when :meth:`frame_bound`
        is None (the chunks cannot be framed in a caller's buffer).
        """
        if self.frame_bound(nbytes) is None:
            return None
        return -(-(16 + _literal_header(nbytes)) // 64) * 64

    def encode_chunks_in_place(self, buf: np.ndarray, offset: int, chunk_bytes: int, stride: int,
                               sizes: np.ndarray, starts: np.ndarray, *,
                               scratch: np.ndarray | None = None) -> None:
        """Compress ``len(sizes)`` chunks (shuffled already if needed) where they lie in `buf`.

        A shuffled chunk's literal noise planes (module docstring) are not copied: the frame
        is built around them, so a shuffled stack's chunks can be gathered straight into
        the buffer the writer thread stores them from.

        Parameters
        ----------
        buf : ndarray of uint8
            Slot ``i`` is ``buf[i * stride:][:stride]``; its chunk lies ``offset`` bytes in.
        offset : int
            At least :meth:`frame_room` of `chunk_bytes`.
        chunk_bytes : int
            Bytes per chunk.
        stride : int
            Bytes per slot, at least ``offset + chunk_bytes``.
        sizes, starts : ndarray of int64
            Receive each frame's length and its start within its slot: frame ``i`` is
            ``buf[i * stride + starts[i]:][:sizes[i]]`` and equals :meth:`compress` of chunk ``i``.
        scratch : ndarray of uint8, optional
            Room for LZ4's output, :func:`lz4_bound` of `chunk_bytes` (keep one
            per worker thread); allocated per call when omitted.
        """
        if self.frame_bound(chunk_bytes) is None:
            raise ValueError(f"{self.encoder} cannot encode {chunk_bytes}-byte chunks into a buffer")
        scratch = self._scratch(scratch, lz4_bound(chunk_bytes))
        _dispatch.kernel("lz4_frames_in_place")(buf, offset, chunk_bytes, stride, scratch, lz4_compress_address(),
                                                sizes, starts, self.lz4_acceleration, self._planes)

    def decode(self, data: Any, shape: Sequence[int], dtype: npt.DTypeLike) -> np.ndarray:
        """Decode one stored chunk (inverse of :meth:`encode`).

        Parameters
        ----------
        data : bytes-like
            The chunk as stored (e.g. ``read_direct_chunk(...)[1]``), all filters applied.
        shape : sequence of int
            Chunk shape.
        dtype : dtype-like
            Element type (its itemsize must equal :attr:`itemsize`).

        Returns
        -------
        ndarray
            New writeable array of `shape` and `dtype`.

        Raises
        ------
        FormatError
            If the data does not decode to ``prod(shape) * itemsize`` bytes.
        """
        dt = np.dtype(dtype)
        if dt.itemsize != self.itemsize:
            raise ValueError(
                f"dtype {dt} has itemsize {dt.itemsize}, the codec expects {self.itemsize}"
            )
        shape = tuple(int(s) for s in shape)
        nbytes = math.prod(shape) * dt.itemsize
        if self.compression is None:
            raw: Any = data
        elif self.compression == "gzip":
            try:
                raw = _inflate(data, nbytes)
            except _INFLATE_ERRORS as exc:
                raise FormatError(f"corrupt deflate chunk: {exc}") from None
        else:
            raw = decode_lz4(data)
        src = np.frombuffer(raw, np.uint8)
        if src.shape[0] != nbytes:
            raise FormatError(
                f"chunk decodes to {src.shape[0]} bytes, expected {nbytes} for {shape} {dt}"
            )
        out = np.empty(nbytes, np.uint8)
        if self.shuffle and self.itemsize > 1:
            _dispatch.kernel("unshuffle")(src, self.itemsize, out)
        else:
            out[:] = src
        return out.view(dt).reshape(shape)

    # -- dataset -----------------------------------------------------------------------

    def create_dataset(
        self,
        group: h5py.Group,
        name: str,
        *,
        shape: Sequence[int],
        dtype: npt.DTypeLike,
        chunks: Sequence[int],
        fillvalue: int | float = 0,
        maxshape: Sequence[int | None] | None = None,
        allocate: bool = False,
    ) -> h5py.Dataset:
        """Create a chunked dataset whose filter pipeline decodes :meth:`encode`'s output.

        The pipeline is set through h5py's low-level API so order, flags and ``cd_values``
        are exactly :attr:`filters`. Intermediate groups in `name` are created. Creation
        times are not tracked (h5py's default), so files are reproducible.

        Parameters
        ----------
        group : h5py.Group
            Parent group (or file).
        name : str
            Dataset name or path relative to `group`.
        shape, chunks : sequence of int
            Dataset and chunk shapes (same rank; chunk extents >= 1).
        dtype : dtype-like
            Element type; its itemsize must equal :attr:`itemsize`.
        fillvalue : int or float, default 0
            Value of unwritten chunks.
        maxshape : sequence of (int or None), optional
            Maximum shape, ``None`` entries meaning unlimited; default `shape`.
        allocate : bool, default False
            Allocate every chunk in the file now (no fill written), so an uncompressed
            dataset's chunks have fixed addresses (see :func:`chunk_addresses`). Only for
            datasets without filters.

        Returns
        -------
        h5py.Dataset
        """
        import h5py
        from h5py import h5d, h5p, h5s, h5t

        dt = np.dtype(dtype)
        if dt.itemsize != self.itemsize:
            raise ValueError(
                f"dtype {dt} has itemsize {dt.itemsize}, the codec expects {self.itemsize}"
            )
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != len(shape) or not shape:
            raise ValueError(f"chunks {chunks} must have the rank of shape {shape} (>= 1)")
        if any(s < 0 for s in shape) or any(c < 1 for c in chunks):
            raise ValueError(f"invalid shape {shape} or chunks {chunks}")
        if maxshape is None:
            maxdims = shape
        else:
            if len(maxshape) != len(shape):
                raise ValueError(f"maxshape {tuple(maxshape)} must have the rank of shape {shape}")
            maxdims = tuple(h5s.UNLIMITED if m is None else int(m) for m in maxshape)
            if any(m != h5s.UNLIMITED and m < s for m, s in zip(maxdims, shape, strict=True)):
                raise ValueError(f"maxshape {tuple(maxshape)} is smaller than shape {shape}")

        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_chunk(chunks)
        dcpl.set_obj_track_times(False)
        dcpl.set_fill_value(np.array(fillvalue, dtype=dt))
        if allocate:
            if self.filters:
                raise ValueError("only unfiltered datasets can be allocated up front")
            # space reserved, never filled: unwritten chunks read back as the file's zeros
            dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
        for filter_id, flags, cd_values in self.filters:
            if filter_id == FILTER_LZ4:
                _register_lz4()
            # H5Pset_filter with explicit values, so the stored message is exact (shuffle's
            # set-local callback would write the same itemsize)
            dcpl.set_filter(filter_id, flags, cd_values)
        lcpl = h5p.create(h5p.LINK_CREATE)
        lcpl.set_create_intermediate_group(True)
        space = h5s.create_simple(shape, maxdims)
        tid = h5t.py_create(dt, logical=True)
        dsid = h5d.create(group.id, name.encode("utf-8"), tid, space, dcpl=dcpl, lcpl=lcpl)
        return h5py.Dataset(dsid)


def chunk_addresses(dataset: h5py.Dataset) -> dict[tuple[int, ...], int]:
    """File offset of every allocated chunk of `dataset`, keyed by the chunk's origin.

    For a dataset created with ``allocate=True`` and no filters, writing a chunk's raw bytes
    at this offset is what ``write_direct_chunk`` would do, without HDF5 in the data path.
    """
    addresses: dict[tuple[int, ...], int] = {}

    def visit(info) -> None:
        addresses[tuple(int(v) for v in info.chunk_offset)] = int(info.byte_offset)

    dsid = dataset.id
    if hasattr(dsid, "chunk_iter"):
        dsid.chunk_iter(visit)
    else:  # pragma: no cover - HDF5 < 1.12.3 / 1.10.10
        for i in range(dsid.get_num_chunks()):
            visit(dsid.get_chunk_info(i))
    return addresses


def _register_lz4() -> None:
    """Make HDF5 filter 32004 available (hdf5plugin registers it on import)."""
    import hdf5plugin  # noqa: F401
    from h5py import h5z

    if not h5z.filter_avail(FILTER_LZ4):  # pragma: no cover - hdf5plugin always provides it
        raise RuntimeError("HDF5 LZ4 filter 32004 is not available after importing hdf5plugin")
