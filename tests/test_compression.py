"""Codec layer: encoded chunks written with ``write_direct_chunk`` read back through HDF5."""

from __future__ import annotations

import struct
import zlib

import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest

from fastims import _dispatch
from fastims.compression import (
    FILTER_LZ4,
    LZ4_BLOCK_SIZE,
    Codec,
    decode_lz4,
    encode_lz4,
)
from fastims.errors import FormatError

DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]
CODECS = [
    pytest.param(None, None, id="none"),
    pytest.param("gzip", 1, id="gzip1"),
    pytest.param("gzip", 2, id="gzip2"),
    pytest.param("gzip", 3, id="gzip3"),
    pytest.param("gzip", 6, id="gzip6"),
    pytest.param("lz4", None, id="lz4"),
]
SHAPE = (7, 45, 70)  # not a multiple of the chunk in any dim: edge chunks are padded
CHUNKS = (4, 16, 32)


def camera_like(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Smooth blobs + shot noise + dark offset, so that every codec actually compresses."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    blob = 200 * np.exp(-((y - shape[1] / 3) ** 2 + (x - shape[2] / 2) ** 2) / 300.0)
    signal = 100 + blob * (1 + 0.1 * z) + rng.normal(0, 3, shape)
    if np.dtype(dtype).kind == "f":
        return (signal / 100).astype(dtype)
    scale = {1: 0.5, 2: 1, 4: 1000}[np.dtype(dtype).itemsize]
    return np.clip(signal * scale, 0, np.iinfo(dtype).max).astype(dtype)


def write_chunks(ds: h5py.Dataset, codec: Codec, data: np.ndarray) -> None:
    """What the streaming writers do: gather+pad, encode with scratch, write_direct_chunk."""
    gather = _dispatch.kernel("gather_chunk")
    chunk = np.empty(ds.chunks, data.dtype)
    scratch = np.empty(chunk.nbytes + 16, np.uint8)
    src = data.view(f"u{data.itemsize}")
    for origin in np.ndindex(*(-(-s // c) for s, c in zip(data.shape, ds.chunks, strict=True))):
        offsets = tuple(i * c for i, c in zip(origin, ds.chunks, strict=True))
        gather(src, *offsets, chunk.view(src.dtype))
        ds.id.write_direct_chunk(offsets, codec.encode(chunk, scratch=scratch), filter_mask=0)


def stored_pipeline(ds: h5py.Dataset) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    plist = ds.id.get_create_plist()
    return tuple(plist.get_filter(i)[:3] for i in range(plist.get_nfilters()))


# ---------------------------------------------------------------------------------------
# round trips through HDF5
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shuffle", [False, True], ids=["noshuffle", "shuffle"])
@pytest.mark.parametrize(("compression", "level"), CODECS)
def test_direct_chunk_roundtrip(compression, level, shuffle, dtype, rng, tmp_path):
    data = camera_like(rng, SHAPE, dtype)
    codec = Codec.create(
        compression, level=level, shuffle=shuffle, dtype=dtype, shuffle_rule="always"
    )
    path = tmp_path / "rt.h5"
    with h5py.File(path, "w") as f:
        ds = codec.create_dataset(f, "g/Data", shape=SHAPE, dtype=dtype, chunks=CHUNKS)
        write_chunks(ds, codec, data)
    with h5py.File(path, "r") as f:
        ds = f["g/Data"]
        assert stored_pipeline(ds) == codec.filters
        np.testing.assert_array_equal(ds[...], data)
        # our decoder agrees with HDF5 on every stored chunk, padding included
        for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())):
            mask, raw = ds.id.read_direct_chunk(info.chunk_offset)
            assert mask == 0
            sel = tuple(slice(o, o + c) for o, c in zip(info.chunk_offset, CHUNKS, strict=True))
            expect = np.zeros(CHUNKS, dtype)
            part = data[sel]
            expect[tuple(slice(0, n) for n in part.shape)] = part
            np.testing.assert_array_equal(codec.decode(raw, CHUNKS, dtype), expect)


@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        (None, ()),
        ("gzip", ((2, 1, (2,)), (1, 1, (4,)))),
        ("lz4", ((2, 1, (2,)), (FILTER_LZ4, 0, (LZ4_BLOCK_SIZE,)))),
    ],
)
def test_declared_pipeline_matches_imaris(compression, expected, tmp_path):
    codec = Codec.create(compression, level=4, shuffle=True, dtype=np.uint16)
    assert codec.filters == expected
    with h5py.File(tmp_path / "p.h5", "w") as f:
        ds = codec.create_dataset(
            f, "a", shape=(5, 6), dtype=np.uint16, chunks=(2, 3), fillvalue=9, maxshape=(None, 6)
        )
        assert stored_pipeline(ds) == expected
        assert ds.fillvalue == 9
        assert ds.maxshape == (None, 6)
        assert ds.chunks == (2, 3)
        np.testing.assert_array_equal(ds[...], np.full((5, 6), 9, np.uint16))


def test_lz4_incompressible_and_multiblock_read_by_hdf5(rng, tmp_path):
    codec = Codec.create("lz4", dtype=np.uint16)
    noise = rng.integers(0, 2**16, size=(4, 32, 32), dtype=np.uint16)
    smooth = np.zeros((4, 32, 32), np.uint16)
    smooth[:, 10:20] = 300
    with h5py.File(tmp_path / "l.h5", "w") as f:
        ds = codec.create_dataset(f, "d", shape=(8, 32, 32), dtype=np.uint16, chunks=(4, 32, 32))
        frame = codec.encode(noise)
        assert struct.unpack(">QII", frame[:16]) == (noise.nbytes,) * 3  # stored verbatim
        ds.id.write_direct_chunk((0, 0, 0), frame)
        # 5 blocks of 1000 bytes + a short last one, with both raw and LZ4 blocks
        mixed = np.concatenate([smooth.reshape(-1)[:1024], noise.reshape(-1)[1024:]])
        frame = encode_lz4(mixed, block_size=1000)
        assert struct.unpack(">QI", frame[:12]) == (mixed.nbytes, 1000)
        ds.id.write_direct_chunk((4, 0, 0), frame)
    with h5py.File(tmp_path / "l.h5", "r") as f:
        np.testing.assert_array_equal(f["d"][:4], noise)
        np.testing.assert_array_equal(f["d"][4:].reshape(-1), mixed)


@pytest.mark.parametrize("nbytes", [None, 1000, 4096 * 2 - 1])
@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_lz4_decodes_hdf5plugin_frames(nbytes, kind, rng, tmp_path):
    """Chunks written by HDF5 through hdf5plugin's LZ4 filter decode with our decoder."""
    if kind == "noise":
        data = rng.integers(0, 2**16, size=(4, 64, 64), dtype=np.uint16)
    else:
        data = camera_like(rng, (4, 64, 64), np.uint16)
    opts = hdf5plugin.LZ4() if nbytes is None else hdf5plugin.LZ4(nbytes=nbytes)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=data.shape, **opts)
        _, raw = ds.id.read_direct_chunk((0, 0, 0))
    assert decode_lz4(raw) == data.tobytes()
    codec = Codec.create("lz4", dtype=np.uint16)
    np.testing.assert_array_equal(codec.decode(raw, data.shape, data.dtype), data)
    # same framing as the C filter; incompressible blocks are stored verbatim by both (LZ4
    # streams themselves differ between liblz4 versions, so only those bytes can be equal)
    ours = encode_lz4(data, block_size=nbytes or LZ4_BLOCK_SIZE)
    assert ours[:12] == bytes(raw[:12])
    if kind == "noise":
        assert ours == bytes(raw)


def test_gzip_chunks_match_imariswriter(fixtures_dir):
    """ImarisWriter's shuffle+gzip-2 chunks decode; the zlib backend re-encodes them exactly."""
    path = fixtures_dir / "ims" / "imariswriter" / "u16_z33_y130_x260_shufflegzip2.ims"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    codec = Codec.create("gzip", level=2, shuffle=True, dtype=np.uint16, deflate_backend="zlib")
    with h5py.File(path, "r") as f:
        ds = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        assert stored_pipeline(ds) == codec.filters
        full = ds[...]
        for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())):
            _, raw = ds.id.read_direct_chunk(info.chunk_offset)
            sel = tuple(slice(o, o + c) for o, c in zip(info.chunk_offset, ds.chunks, strict=True))
            chunk = np.ascontiguousarray(full[sel])
            np.testing.assert_array_equal(codec.decode(raw, ds.chunks, ds.dtype), chunk)
            if "ng" not in zlib.ZLIB_RUNTIME_VERSION:  # zlib-ng emits different (valid) streams
                assert bytes(codec.encode(chunk)) == bytes(raw)


# ---------------------------------------------------------------------------------------
# encode / decode details
# ---------------------------------------------------------------------------------------


def test_lz4_acceleration_choice_and_bytes(rng):
    """Shuffled LZ4 runs at LZ4_SHUFFLED_ACCELERATION, plain LZ4 at 1; every path agrees."""
    import lz4.block

    from fastims.compression import LZ4_SHUFFLED_ACCELERATION, lz4_compress_address

    assert LZ4_SHUFFLED_ACCELERATION == 2
    plain = Codec.create("lz4", dtype=np.uint16)
    shuffled = Codec.create("lz4", shuffle=True, dtype=np.uint16)
    forced = Codec.create("lz4", dtype=np.uint16, lz4_acceleration=5)
    assert (plain.lz4_acceleration, plain.encoder) == (1, "lz4")
    assert (shuffled.lz4_acceleration, shuffled.encoder) == (2, "shuffle+lz4-fast2")
    assert (forced.lz4_acceleration, forced.encoder) == (5, "lz4-fast5")
    # uint8 is never shuffled under the Imaris rule: acceleration 1
    assert Codec.create("lz4", shuffle=True, dtype=np.uint8).lz4_acceleration == 1
    assert Codec.create("gzip", dtype=np.uint16, lz4_acceleration=3).lz4_acceleration == 0
    assert plain.filters == forced.filters  # nothing about it is stored in the file
    for bad in (0, -1, 65538, 1.5, True):
        with pytest.raises(ValueError, match="acceleration"):
            Codec.create("lz4", dtype=np.uint16, lz4_acceleration=bad)
    with pytest.raises(ValueError, match="acceleration"):
        encode_lz4(b"abc", acceleration=0)
    chunk = camera_like(rng, (4, 64, 64), np.uint16)
    data = chunk.reshape(-1).view(np.uint8)
    address = lz4_compress_address()
    for codec in (plain, shuffled, forced):
        frame = bytes(codec.encode(chunk))
        payload = np.empty(data.shape[0], np.uint8)
        if codec.shuffles:
            _dispatch.kernel("shuffle")(data, 2, payload)
        else:
            payload[:] = data
        np.testing.assert_array_equal(codec.decode(frame, chunk.shape, chunk.dtype), chunk)
        if not address:  # the lz4 package's own frame
            block = lz4.block.compress(payload, mode="fast", acceleration=codec.lz4_acceleration, store_size=False)
            assert frame[16:] == block
        else:
            # every path calls liblz4 through its address (the lz4 package may run another
            # build): its frames equal the twin's at the codec's acceleration
            bound = codec.frame_bound(data.shape[0])
            expect = np.empty(bound, np.uint8)
            twin = _dispatch.reference("lz4_frame")
            expect = expect[: twin(payload, expect, address, codec.lz4_acceleration, 2 if codec.shuffles else 1)]
            assert frame == expect.tobytes()
            out = np.empty(bound, np.uint8)
            assert out[: codec.encode_into(payload, out)].tobytes() == expect.tobytes()
            sizes = np.zeros(1, np.int64)
            codec.encode_chunks_into(data, data.shape[0], out, bound, sizes, scratch=np.empty(data.shape[0], np.uint8))
            assert out[: sizes[0]].tobytes() == expect.tobytes()
            # chunks shuffled as they were gathered are compressed as they are
            out[:] = 0
            codec.encode_chunks_into(payload, data.shape[0], out, bound, sizes, shuffled=True)
            assert out[: sizes[0]].tobytes() == expect.tobytes()
            np.testing.assert_array_equal(codec.decode(expect, chunk.shape, chunk.dtype), chunk)


def test_uncompressed_encode_is_zero_copy(rng):
    chunk = rng.integers(0, 100, (2, 3, 4), dtype=np.uint16)
    out = Codec.create(None, dtype=np.uint16).encode(chunk)
    assert isinstance(out, memoryview) and out.nbytes == chunk.nbytes
    assert np.shares_memory(np.frombuffer(out, np.uint8), chunk)


def test_shuffle_uses_scratch_and_kernel_equivalence(rng):
    chunk = camera_like(rng, (4, 16, 16), np.uint16)
    codec = Codec.create("lz4", shuffle=True, dtype=np.uint16)
    scratch = np.zeros(chunk.nbytes + 3, np.uint8)
    frame = codec.encode(chunk, scratch=scratch)
    expected = chunk.reshape(-1).view(np.uint8).reshape(-1, 2).T.reshape(-1)
    np.testing.assert_array_equal(scratch[: chunk.nbytes], expected)
    assert decode_lz4(frame) == expected.tobytes()
    was_reference = _dispatch.backend() == "reference"
    _dispatch.use_reference(not was_reference)  # the other backend gives the same bytes
    try:
        assert codec.encode(chunk) == frame
    finally:
        _dispatch.use_reference(was_reference)


@pytest.mark.parametrize(
    ("backend", "level", "encoder"),
    [
        ("auto", 1, "isal-1"),
        ("auto", 2, "isal-2"),
        ("auto", 3, "isal-3"),
        ("auto", 4, "zlib-4"),
        ("auto", 9, "zlib-9"),
        ("zlib", 1, "zlib-1"),
        ("isal", 7, "isal-3"),
    ],
)
def test_deflate_level_mapping(backend, level, encoder, rng):
    codec = Codec.create("gzip", level=level, dtype=np.uint16, deflate_backend=backend)
    assert codec.encoder == encoder
    assert codec.level == level and codec.filters == ((1, 1, (level,)),)
    chunk = camera_like(rng, (2, 16, 16), np.uint16)
    data = codec.encode(chunk)
    assert zlib.decompress(data) == chunk.tobytes()  # a zlib stream, as HDF5 expects
    if encoder.startswith("zlib"):
        assert data == zlib.compress(chunk.tobytes(), level)


def test_module_default_backend(monkeypatch):
    import fastims.compression as comp

    monkeypatch.setattr(comp, "DEFAULT_DEFLATE_BACKEND", "zlib")
    assert Codec.create("gzip", level=1, dtype=np.uint8).deflate_backend == "zlib"
    monkeypatch.setattr(comp, "DEFAULT_DEFLATE_BACKEND", "auto")
    assert Codec.create("gzip", level=1, dtype=np.uint8).deflate_backend == "isal"


@pytest.mark.parametrize(
    ("dtype", "compression", "rule", "shuffled"),
    [
        (np.uint16, "gzip", "imaris", True),
        (np.uint32, "lz4", "imaris", True),
        (np.int16, "gzip", "imaris", True),
        (np.uint8, "gzip", "imaris", False),
        (np.float32, "lz4", "imaris", False),
        (np.uint16, None, "imaris", False),
        (np.uint64, "gzip", "imaris", False),
        (np.float32, "gzip", "always", True),
        (np.uint16, None, "always", True),
    ],
)
def test_shuffle_rule(dtype, compression, rule, shuffled):
    codec = Codec.create(compression, shuffle=True, dtype=dtype, shuffle_rule=rule)
    assert codec.shuffle is shuffled
    plain = Codec.create(compression, shuffle=False, dtype=dtype, shuffle_rule=rule)
    assert plain.shuffle is False


def test_lz4_frame_layout():
    data = bytes(range(256)) * 40
    frame = encode_lz4(data)
    orig, block, csize = struct.unpack(">QII", frame[:16])
    assert (orig, block) == (len(data), len(data)) and csize == len(frame) - 16
    assert lz4.block.decompress(frame[16:], uncompressed_size=len(data)) == data
    assert decode_lz4(encode_lz4(data, block_size=1000)) == data
    assert decode_lz4(encode_lz4(b"")) == b""


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"compression": "zstd"}, ValueError, "compression must be one of"),
        ({"compression": "gzip", "level": 0}, ValueError, "1..9"),
        ({"compression": "gzip", "level": 10}, ValueError, "1..9"),
        ({"compression": "gzip", "level": True}, ValueError, "1..9"),
        ({"compression": "gzip", "level": 2.0}, ValueError, "1..9"),
        ({"compression": "lz4", "shuffle_rule": "never"}, ValueError, "shuffle_rule"),
        ({"compression": "gzip", "deflate_backend": "zopfli"}, ValueError, "deflate_backend"),
        ({"compression": "gzip", "dtype": np.complex64}, TypeError, "dtype"),
        ({"compression": "gzip", "dtype": bool}, TypeError, "dtype"),
    ],
)
def test_create_validation(kwargs, exc, match):
    kwargs = {"dtype": np.uint16, **kwargs}
    compression = kwargs.pop("compression")
    with pytest.raises(exc, match=match):
        Codec.create(compression, **kwargs)


def test_direct_construction_validation():
    with pytest.raises(ValueError, match="itemsize"):
        Codec("lz4", itemsize=0)
    with pytest.raises(ValueError, match="1..9"):
        Codec("gzip", level=12, itemsize=2)
    assert Codec("lz4", level=5, itemsize=2).level == 0  # level ignored outside gzip


def test_encode_decode_validation(rng, tmp_path):
    codec = Codec.create("gzip", shuffle=True, dtype=np.uint16)
    chunk = rng.integers(0, 100, (4, 8, 8), dtype=np.uint16)
    with pytest.raises(ValueError, match="C-contiguous"):
        codec.encode(chunk[:, :, ::2])
    with pytest.raises(ValueError, match="itemsize"):
        codec.encode(chunk.astype(np.uint32))
    with pytest.raises(TypeError):
        codec.encode(chunk.tobytes())
    with pytest.raises(ValueError, match="scratch"):
        codec.encode(chunk, scratch=np.empty(chunk.nbytes - 1, np.uint8))
    with pytest.raises(ValueError, match="scratch"):
        codec.encode(chunk, scratch=np.empty(chunk.nbytes, np.uint16))
    data = codec.encode(chunk)
    with pytest.raises(FormatError, match="expected"):
        codec.decode(data, (4, 8, 9), np.uint16)
    with pytest.raises(FormatError, match="deflate"):
        codec.decode(b"\x78\x01garbage", chunk.shape, np.uint16)
    with pytest.raises(ValueError, match="itemsize"):
        codec.decode(data, chunk.shape, np.uint8)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        with pytest.raises(ValueError, match="itemsize"):
            codec.create_dataset(f, "a", shape=(4, 4), dtype=np.uint8, chunks=(2, 2))
        with pytest.raises(ValueError, match="rank"):
            codec.create_dataset(f, "b", shape=(4, 4), dtype=np.uint16, chunks=(2,))
        with pytest.raises(ValueError, match="maxshape"):
            codec.create_dataset(
                f, "c", shape=(4, 4), dtype=np.uint16, chunks=(2, 2), maxshape=(2, 4)
            )


def test_lz4_decode_rejects_corrupt_frames():
    frame = encode_lz4(bytes(5000))
    with pytest.raises(FormatError, match="header"):
        decode_lz4(frame[:8])
    with pytest.raises(FormatError, match="truncated"):
        decode_lz4(frame[:-1])
    with pytest.raises(FormatError, match="block size 0"):
        decode_lz4(struct.pack(">QI", 10, 0))
    bad = bytearray(frame)
    bad[16:] = b"\xff" * (len(bad) - 16)
    with pytest.raises(FormatError, match="LZ4 block"):
        decode_lz4(bytes(bad))
    with pytest.raises(ValueError, match="block_size"):
        encode_lz4(b"abc", block_size=0)


def test_codec_pickles(rng):
    import pickle

    codec = Codec.create("gzip", level=7, shuffle=True, dtype=np.uint32)
    clone = pickle.loads(pickle.dumps(codec))
    assert clone == codec and clone.encoder == codec.encoder == "shuffle+zlib-7"
    chunk = rng.integers(0, 1000, (3, 4, 5), dtype=np.uint32)
    assert clone.encode(chunk) == codec.encode(chunk)


def test_encode_into_a_buffer_decodes_like_compress():
    from fastims.compression import Codec, lz4_compress_address

    chunk = np.random.default_rng(4).integers(90, 400, (8, 32, 48), dtype=np.uint16)
    data = chunk.reshape(-1).view(np.uint8)
    lz4 = Codec.create("lz4", dtype=np.uint16)
    gzip = Codec.create("gzip", dtype=np.uint16)
    assert gzip.frame_bound(data.shape[0]) is None
    with pytest.raises(ValueError, match="cannot encode"):
        gzip.encode_into(data, np.empty(1 << 16, np.uint8))
    if lz4_compress_address() == 0:
        pytest.skip("no liblz4 LZ4_compress_default found")
    bound = lz4.frame_bound(data.shape[0])
    assert bound == 16 + data.shape[0] + data.shape[0] // 255 + 16
    out = np.empty(bound, np.uint8)
    size = lz4.encode_into(data, out)
    decoded = lz4.decode(out[:size], chunk.shape, chunk.dtype)
    np.testing.assert_array_equal(decoded, chunk)
    np.testing.assert_array_equal(lz4.decode(lz4.compress(data), chunk.shape, chunk.dtype), chunk)


# ---------------------------------------------------------------------------------------
# shuffled deflate, plane by plane
# ---------------------------------------------------------------------------------------


def shuffled_camera_chunk(shape=(8, 256, 256), dtype=np.uint16, pad_x=0) -> np.ndarray:
    """A byte-shuffled chunk of the benchmarks' camera, optionally zero-padded in x."""
    from fastims.synthetic import SyntheticCamera

    cam = SyntheticCamera(shape[1:], depth=shape[0], dtype=dtype, seed=5)
    chunk = np.stack([cam.frame(z) for z in range(shape[0])])
    if pad_x:
        chunk[..., -pad_x:] = 0
    out = np.empty(chunk.nbytes, np.uint8)
    _dispatch.kernel("shuffle")(chunk.view(np.uint8).reshape(-1), chunk.itemsize, out)
    return out


@pytest.mark.parametrize(
    ("dtype", "pad_x", "huffman_low"), [(np.uint16, 0, True), (np.uint16, 100, False), (np.float32, 0, True)]
)
def test_deflate_planes_is_one_zlib_stream_as_small_as_isal(dtype, pad_x, huffman_low, monkeypatch):
    """Noise planes are Huffman-coded, the rest by ISA-L (also a noise plane with 40 % of
    zero padding, which LZ77 codes to nothing); any inflate reads the one stream, and it is
    no larger than ISA-L over the whole chunk (within 1 %)."""
    from isal import isal_zlib

    from fastims import compression

    data = shuffled_camera_chunk(dtype=dtype, pad_x=pad_x)
    itemsize = np.dtype(dtype).itemsize
    choices = []
    pays = compression._huffman_pays
    monkeypatch.setattr(compression, "_huffman_pays", lambda *a: choices.append(pays(*a)) or choices[-1])
    stream = compression.deflate_planes(data, itemsize, 2)
    assert zlib.decompress(stream) == data.tobytes()
    assert len(choices) == itemsize and choices[0] == huffman_low and not choices[-1]
    assert len(stream) <= 1.01 * len(isal_zlib.compress(data, 2))


def test_deflate_planes_edges():
    from fastims.compression import deflate_planes

    data = shuffled_camera_chunk()
    odd = np.concatenate([data, np.arange(3, dtype=np.uint8)])  # trailing bytes join the last plane
    assert zlib.decompress(deflate_planes(odd, 2, 1)) == odd.tobytes()
    small = data[: 64 << 10]  # planes below _PLANE_MIN_BYTES: one ISA-L stream
    assert zlib.decompress(deflate_planes(small, 2, 2)) == small.tobytes()
    assert zlib.decompress(deflate_planes(data, 1, 2)) == data.tobytes()


def test_shuffled_gzip_codec_codes_planes_with_isal_only(tmp_path):
    """ISA-L levels take the plane-wise path; the zlib backend keeps zlib's own bytes."""
    chunk = np.frombuffer(shuffled_camera_chunk(), np.uint8)  # any bytes do: unshuffled below
    plain = np.empty_like(chunk)
    _dispatch.kernel("unshuffle")(chunk, 2, plain)
    plain = plain.view(np.uint16).reshape(8, 256, 256)
    fast = Codec.create("gzip", level=2, shuffle=True, dtype=np.uint16)
    exact = Codec.create("gzip", level=2, shuffle=True, dtype=np.uint16, deflate_backend="zlib")
    assert bytes(fast.encode(plain)) != bytes(exact.encode(plain))
    assert bytes(exact.encode(plain)) == zlib.compress(chunk.tobytes(), 2)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        ds = fast.create_dataset(f, "a", shape=plain.shape, dtype=np.uint16, chunks=plain.shape)
        ds.id.write_direct_chunk((0, 0, 0), fast.encode(plain), filter_mask=0)
    with h5py.File(tmp_path / "p.h5", "r") as f:  # HDF5's deflate filter reads it
        np.testing.assert_array_equal(f["a"][...], plain)
