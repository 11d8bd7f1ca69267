"""Compiled chunk kernels (``fastims._ext._chunks``) vs their NumPy twins, bit for bit."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastims import _dispatch
from fastims._reference import chunks as ref

ext = pytest.importorskip("fastims._ext._chunks", reason="compiled _chunks not built")

GATHER_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64, np.float32]
SETTINGS = settings(max_examples=150, deadline=None)


def naive_gather(src: np.ndarray, origin: tuple[int, int, int], shape: tuple[int, ...]):
    """Element-by-element oracle: chunk voxel = source voxel if inside the source, else 0."""
    out = np.zeros(shape, src.dtype)
    for idx in np.ndindex(*shape):
        s = tuple(o + i for o, i in zip(origin, idx, strict=True))
        if all(0 <= c < n for c, n in zip(s, src.shape, strict=True)):
            out[idx] = src[s]
    return out


def naive_shuffle(data: bytes, itemsize: int) -> bytes:
    """HDF5 H5Z_filter_shuffle written out literally (trailing bytes copied at the end)."""
    n = len(data) // itemsize
    if itemsize <= 1 or n <= 1:
        return data
    shuffled = bytes(data[i * itemsize + b] for b in range(itemsize) for i in range(n))
    return shuffled + data[n * itemsize :]


def random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------
# gather_chunk
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    src_shape=st.tuples(*[st.integers(0, 7)] * 3),
    chunk=st.tuples(*[st.integers(1, 6)] * 3),
    origin=st.tuples(*[st.integers(-8, 10)] * 3),
    dtype=st.sampled_from(GATHER_DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_gather_matches_twin(src_shape, chunk, origin, dtype, seed):
    rng = np.random.default_rng(seed)
    src = random_array(rng, src_shape, dtype)
    # pre-fill with garbage: every output element must be written
    got = random_array(rng, chunk, dtype)
    want = random_array(rng, chunk, dtype)
    ext.gather_chunk(src, *origin, got)
    ref.gather_chunk(src, *origin, want)
    assert got.tobytes() == want.tobytes()
    assert want.tobytes() == naive_gather(src, origin, chunk).tobytes()


@pytest.mark.parametrize(
    ("origin", "chunk"),
    [
        ((0, 0, 0), (4, 8, 8)),  # interior
        ((8, 16, 24), (4, 8, 8)),  # last chunk: padded in every dim
        ((0, 0, 0), (12, 20, 30)),  # chunk == source
        ((0, 0, 0), (16, 32, 32)),  # chunk larger than source
        ((2, 3, 0), (3, 5, 30)),  # whole-row fast path
        ((12, 0, 0), (2, 4, 4)),  # fully outside in z
        ((0, 20, 0), (2, 4, 4)),  # fully outside in y
        ((0, 0, 30), (2, 4, 4)),  # fully outside in x
        ((-1, -2, -3), (4, 4, 4)),  # negative origin: leading padding
        ((11, 19, 29), (1, 1, 1)),  # single last voxel
    ],
)
def test_gather_cases(origin, chunk, rng):
    src = rng.integers(1, 60000, size=(12, 20, 30), dtype=np.uint16)
    got = np.full(chunk, 7, np.uint16)
    ext.gather_chunk(src, *origin, got)
    np.testing.assert_array_equal(got, naive_gather(src, origin, chunk))


def test_gather_float32_bits_preserved(rng):
    bits = rng.integers(0, 2**32, size=(3, 4, 5), dtype=np.uint32)
    bits[0, 0, :3] = [0x7FC00001, 0xFF800000, 0x80000000]  # NaN payload, -inf, -0.0
    src = bits.view(np.float32)
    out = np.empty((4, 4, 8), np.float32)
    ext.gather_chunk(src, 0, 0, 0, out)
    np.testing.assert_array_equal(out.view(np.uint32), naive_gather(bits, (0, 0, 0), (4, 4, 8)))


def test_gather_empty_source_and_readonly_source():
    out = np.ones((2, 2, 2), np.uint16)
    ext.gather_chunk(np.zeros((0, 3, 3), np.uint16), 0, 0, 0, out)
    assert not out.any()
    src = np.frombuffer(np.arange(8, dtype=np.uint16).tobytes(), np.uint16).reshape(2, 2, 2)
    ext.gather_chunk(src, 0, 0, 0, out)
    np.testing.assert_array_equal(out, src)


@pytest.mark.parametrize("fn", [ext.gather_chunk, ref.gather_chunk], ids=["ext", "ref"])
def test_gather_rejects_bad_input(fn):
    src = np.zeros((4, 4, 4), np.uint16)
    with pytest.raises((TypeError, ValueError)):
        fn(src, 0, 0, 0, np.zeros((2, 2, 2), np.uint8))  # dtype mismatch
    with pytest.raises((TypeError, ValueError)):
        fn(src, 0, 0, 0, np.zeros((2, 2, 4), np.uint16)[:, :, ::2])  # non-contiguous out
    with pytest.raises((TypeError, ValueError)):
        fn(src[:, :, ::2], 0, 0, 0, np.zeros((2, 2, 2), np.uint16))  # non-contiguous src
    with pytest.raises(TypeError):
        fn(np.zeros((4, 4), np.uint16), 0, 0, 0, np.zeros((2, 2, 2), np.uint16))  # 2-D
    with pytest.raises(TypeError):
        fn(np.zeros((4, 4, 4), np.int16), 0, 0, 0, np.zeros((2, 2, 2), np.int16))
    readonly = np.zeros((2, 2, 2), np.uint16)
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        fn(src, 0, 0, 0, readonly)


# ---------------------------------------------------------------------------------------
# shuffle / unshuffle
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.binary(min_size=0, max_size=300),
    itemsize=st.integers(1, 17),
    slack=st.integers(0, 3),
)
def test_shuffle_matches_twin_and_hdf5_rule(data, itemsize, slack):
    src = np.frombuffer(data, np.uint8)
    got = np.full(len(data) + slack, 0xAB, np.uint8)
    want = np.full(len(data) + slack, 0xAB, np.uint8)
    ext.shuffle(src, itemsize, got)
    ref.shuffle(src, itemsize, want)
    assert got.tobytes() == want.tobytes()
    assert got[: len(data)].tobytes() == naive_shuffle(data, itemsize)
    assert not (got[len(data) :] != 0xAB).any()  # bytes beyond len(src) untouched

    back = np.empty(len(data), np.uint8)
    back_ref = np.empty(len(data), np.uint8)
    ext.unshuffle(got[: len(data)], itemsize, back)
    ref.unshuffle(got[: len(data)], itemsize, back_ref)
    assert back.tobytes() == data
    assert back_ref.tobytes() == data


@pytest.mark.parametrize("itemsize", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("nbytes", [2**20, 2**20 + 5, 12345])
def test_shuffle_large_matches_twin(itemsize, nbytes, rng):
    # longer than the generic kernel's block, and with trailing bytes
    src = rng.integers(0, 256, nbytes, dtype=np.uint8)
    got, want = np.empty_like(src), np.empty_like(src)
    ext.shuffle(src, itemsize, got)
    ref.shuffle(src, itemsize, want)
    np.testing.assert_array_equal(got, want)
    ext.unshuffle(got, itemsize, want)
    np.testing.assert_array_equal(want, src)


def test_shuffle_trailing_bytes_literal():
    src = np.arange(10, dtype=np.uint8)
    out = np.empty(10, np.uint8)
    ext.shuffle(src, 4, out)  # two whole elements + 2 trailing bytes
    assert out.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 9]
    ext.shuffle(src[:7], 4, out)  # a single whole element: left untouched
    assert out[:7].tolist() == list(range(7))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32, np.uint64])
def test_shuffle_equals_hdf5_filter(dtype, rng, tmp_path):
    """Bytes HDF5's own shuffle filter stores == our shuffle of the chunk."""
    data = random_array(rng, (3, 5, 7), dtype)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=data.shape, shuffle=True)
        _, stored = ds.id.read_direct_chunk((0, 0, 0))
    out = np.empty(data.nbytes, np.uint8)
    ext.shuffle(data.reshape(-1).view(np.uint8), data.itemsize, out)
    assert out.tobytes() == bytes(stored)


@pytest.mark.parametrize("fn", [ext.shuffle, ext.unshuffle, ref.shuffle, ref.unshuffle])
def test_shuffle_rejects_bad_input(fn):
    src = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match="itemsize"):
        fn(src, 0, np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="fewer"):
        fn(src, 2, np.zeros(7, np.uint8))
    with pytest.raises((TypeError, ValueError)):
        fn(np.zeros(4, np.uint16), 2, np.zeros(8, np.uint8))
    with pytest.raises((TypeError, ValueError)):
        fn(np.zeros(16, np.uint8)[::2], 2, np.zeros(8, np.uint8))


# -- lz4_frame: the HDF5-LZ4 frame written in place ----------------------------------------


@pytest.mark.parametrize("kind", ["camera", "zeros", "random"])
def test_lz4_frame_decodes_and_matches_twin(kind):
    from fastims.compression import decode_lz4, encode_lz4, lz4_compress_address
    from fastims.synthetic import camera_stack

    address = lz4_compress_address()
    if address == 0:
        pytest.skip("no liblz4 LZ4_compress_default found")
    n = 8 * 64 * 64 * 2
    data = {
        "camera": camera_stack((8, 64, 64), "uint16", seed=2).view(np.uint8).reshape(-1),
        "zeros": np.zeros(n, np.uint8),
        "random": np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8),  # stored verbatim
    }[kind]
    frames = []
    for fn in (_dispatch.kernel("lz4_frame"), _dispatch.reference("lz4_frame")):
        out = np.full(16 + n + n // 255 + 16 + 5, 0xAB, np.uint8)
        size = fn(data, out, address)
        frames.append(out[:size].tobytes())
        assert decode_lz4(frames[-1]) == data.tobytes()
        assert int.from_bytes(frames[-1][:8], "big") == n and int.from_bytes(frames[-1][8:12], "big") == n
    assert frames[0] == frames[1]  # the same liblz4 function, the same bytes
    assert len(frames[0]) <= len(encode_lz4(data)) + 64  # as compact as the lz4 package's frame
    if kind == "random":
        assert frames[0][16:] == data.tobytes()


def test_lz4_frame_errors():
    for fn in (_dispatch.kernel("lz4_frame"), _dispatch.reference("lz4_frame")):
        with pytest.raises(ValueError, match="may need"):
            fn(np.zeros(100, np.uint8), np.zeros(100, np.uint8), 1)
        with pytest.raises(ValueError, match="1\\.\\."):
            fn(np.zeros(0, np.uint8), np.zeros(64, np.uint8), 1)
        with pytest.raises(ValueError, match="address"):
            fn(np.zeros(10, np.uint8), np.zeros(64, np.uint8), 0)
        for bad in (0, 65538):
            with pytest.raises(ValueError, match="acceleration"):
                fn(np.zeros(10, np.uint8), np.zeros(64, np.uint8), 1, bad)


@pytest.mark.parametrize("acceleration", [2, 9])
def test_lz4_frame_acceleration_reaches_liblz4(acceleration):
    """Kernel and twin pass the acceleration to LZ4_compress_fast: same bytes, other than at 1."""
    from fastims.compression import decode_lz4, lz4_compress_address
    from fastims.synthetic import camera_stack

    address = lz4_compress_address()
    if address == 0:
        pytest.skip("no liblz4 LZ4_compress_fast found")
    data = camera_stack((8, 64, 64), "uint16", seed=5).view(np.uint8).reshape(-1)  # unshuffled
    n = data.shape[0]
    stride = 16 + n + n // 255 + 16
    frames = {}
    for acc in (1, acceleration):
        for fn in (ext.lz4_frame, ref.lz4_frame):
            out = np.zeros(stride, np.uint8)
            frames.setdefault(acc, set()).add(out[: fn(data, out, address, acc)].tobytes())
        for fn in (ext.lz4_frames, ref.lz4_frames):
            out, sizes = np.zeros(stride, np.uint8), np.zeros(1, np.int64)
            fn(data, n, 1, np.empty(0, np.uint8), address, out, stride, sizes, acc)
            frames[acc].add(out[: sizes[0]].tobytes())
    assert len(frames[1]) == len(frames[acceleration]) == 1  # four paths, one result each
    fast, default = frames[acceleration].pop(), frames[1].pop()
    assert fast != default  # the acceleration reached liblz4 (another match search)
    assert decode_lz4(fast) == decode_lz4(default) == data.tobytes()


def _shuffled(data: np.ndarray, itemsize: int) -> np.ndarray:
    out = np.empty_like(data)
    ext.shuffle(data, itemsize, out)
    return out


def _literal_cases() -> dict[str, tuple[np.ndarray, int]]:
    from fastims.synthetic import camera_stack

    rng = np.random.default_rng(11)
    camera = _shuffled(camera_stack((8, 128, 128), "uint16", seed=4).view(np.uint8).reshape(-1), 2)
    padded = camera.copy()
    padded[camera.shape[0] // 2 - 4096 :] = 0  # the noise plane ends in zero padding
    head = camera.copy()
    head[camera.shape[0] // 2 : camera.shape[0] // 2 + 300] = rng.integers(0, 256, 300)  # a long first run
    f32 = rng.normal(1000, 30, 1 << 16).astype(np.float32).view(np.uint8)
    return {
        "camera": (camera, 2),
        "camera, trailing bytes": (np.concatenate([camera, rng.integers(0, 256, 3, dtype=np.uint8)]), 2),
        "padded noise plane": (padded, 2),
        "long first literal run of the rest": (head, 2),
        "float32, 4 planes": (_shuffled(f32, 4), 4),
        "noise everywhere": (rng.integers(0, 256, 1 << 17, dtype=np.uint8), 2),
        "planes under 32 KiB": (camera[: 1 << 15], 2),
        "zeros": (np.zeros(1 << 17, np.uint8), 2),
    }


def _first_run(frame: bytes) -> tuple[int, int]:
    """Literal run of an LZ4 frame's first sequence and where its literals start."""
    run, pos = frame[16] >> 4, 17
    while run >= 15 and (pos == 17 or frame[pos - 1] == 255):
        run += frame[pos]
        pos += 1
    return run, pos


def _framed_in_place(fn, data: np.ndarray, address: int, acceleration: int, planes: int, *, pad: int = 0,
                     slots: int = 2) -> tuple[list[bytes], list[int], int]:
    """`data` gathered into `slots` slots (garbage around it) and framed where it lies by `fn`
    (``lz4_frames_in_place``): the frames, their starts and the offset of the chunks."""
    n = data.shape[0]
    offset = 16 + (1 if n < 15 else 2 + (n - 15) // 255) + pad
    stride = offset + n + 5
    buf = np.full(slots * stride, 0xEE, np.uint8)
    for i in range(slots):
        buf[i * stride + offset : i * stride + offset + n] = data
    sizes, starts = np.zeros(slots, np.int64), np.zeros(slots, np.int64)
    fn(buf, offset, n, stride, np.empty(n + n // 255 + 16, np.uint8), address, sizes, starts, acceleration, planes)
    frames = [buf[i * stride + a : i * stride + a + b].tobytes() for i, (a, b) in enumerate(zip(starts, sizes))]
    return frames, [int(a) for a in starts], offset


@pytest.mark.parametrize("case", list(_literal_cases()))
def test_lz4_frame_literal_planes(case):
    """Leading noise planes become the first sequence's literals: kernel and twin write the
    same frame, it decodes with the lz4 package (a standard block) and is no larger than LZ4
    over the whole chunk (plus a token)."""
    import lz4.block

    from fastims.compression import lz4_compress_address

    address = lz4_compress_address()
    if address == 0:
        pytest.skip("no liblz4 LZ4_compress_fast found")
    data, planes = _literal_cases()[case]
    n = data.shape[0]
    bound = 16 + n + n // 255 + 16 + n // 255 + 2
    frames = []
    for fn in (ext.lz4_frame, ref.lz4_frame):
        out = np.full(bound + 7, 0xAB, np.uint8)
        frames.append(out[: fn(data, out, address, 2, planes)].tobytes())
        sizes = np.zeros(2, np.int64)
        out2 = np.full(2 * bound, 0xCD, np.uint8)
        lz4f = ext.lz4_frames if fn is ext.lz4_frame else ref.lz4_frames
        lz4f(np.concatenate([data, data]), n, 1, np.empty(0, np.uint8), address, out2, bound, sizes, 2, planes)
        assert out2[: sizes[0]].tobytes() == out2[bound : bound + sizes[1]].tobytes() == frames[-1]
        in_place = ext.lz4_frames_in_place if fn is ext.lz4_frame else ref.lz4_frames_in_place
        for pad in (0, 45):
            framed, starts, offset = _framed_in_place(in_place, data, address, 2, planes, pad=pad)
            assert framed == [frames[-1]] * 2 and starts[0] == starts[1]
            # the chunk's bytes stay where they were gathered: the block's (verbatim) or the
            # first literals' (noise planes)
            if len(frames[-1]) - 16 == n:
                assert starts[0] == offset - 16
            elif case in ("padded noise plane", "planes under 32 KiB", "zeros"):
                assert starts[0] == 0  # LZ4 over the whole chunk: copied to the slot's start
            else:
                assert starts[0] + _first_run(frames[-1])[1] == offset
    assert frames[0] == frames[1]
    frame = frames[0]
    assert int.from_bytes(frame[:8], "big") == n and int.from_bytes(frame[8:12], "big") == n
    size = int.from_bytes(frame[12:16], "big")
    assert size == len(frame) - 16
    if size < n:
        assert lz4.block.decompress(frame[16:], uncompressed_size=n) == data.tobytes()
    else:
        assert frame[16:] == data.tobytes()  # verbatim
    whole = np.empty(bound, np.uint8)
    whole = whole[: ext.lz4_frame(data, whole, address, 2, 1)].tobytes()
    pb = n // planes
    if case in ("camera", "camera, trailing bytes", "long first literal run of the rest"):
        # the block is the low-byte plane as literals merged into the first sequence of
        # LZ4 over the rest: one token whose literal run is the plane's plus the rest's
        rest = np.empty(bound, np.uint8)
        rest = rest[: ext.lz4_frame(data[pb:], rest, address, 2, 1)].tobytes()
        run, pos = _first_run(frame)
        rest_run, rest_pos = _first_run(rest)
        assert size < n and run == pb + rest_run and (frame[16] & 15) == (rest[16] & 15)
        assert frame[pos : pos + pb] == data[:pb].tobytes() and frame[pos + pb :] == rest[rest_pos:]
        assert rest_run >= 300 or case != "long first literal run of the rest"
        assert len(frame) <= len(whole) + 4
    elif case in ("padded noise plane", "planes under 32 KiB", "zeros"):
        assert frame == whole  # the trial saw the zeros / the planes are too small
    elif case == "noise everywhere":
        assert size == n  # every plane is noise: stored verbatim without a search
    else:
        assert len(frame) <= len(whole) + 4


def test_lz4_frame_planes_bound_and_range():
    for fn in (ext.lz4_frame, ref.lz4_frame):
        n = 1 << 16
        with pytest.raises(ValueError, match="may need"):  # planes > 1 need n // 255 + 2 more
            fn(np.zeros(n, np.uint8), np.zeros(16 + n + n // 255 + 16, np.uint8), 1, 1, 2)
        for bad in (0, 65):
            with pytest.raises(ValueError, match="planes"):
                fn(np.zeros(n, np.uint8), np.zeros(2 * n, np.uint8), 1, 1, bad)


@SETTINGS
@given(
    planes=st.sampled_from([2, 3, 4, 8]),
    noisy=st.lists(st.booleans(), min_size=8, max_size=8),
    plane_kib=st.integers(31, 40),
    extra=st.integers(0, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_lz4_frame_planes_match_twin(planes, noisy, plane_kib, extra, seed):
    """Any mix of noise and smooth planes: the kernel's frame is the twin's and decodes."""
    from fastims.compression import decode_lz4, lz4_compress_address

    address = lz4_compress_address()
    if address == 0:
        pytest.skip("no liblz4 LZ4_compress_fast found")
    rng = np.random.default_rng(seed)
    pb = plane_kib * 1024 + rng.integers(0, 1024)
    parts = [rng.integers(0, 256, pb, dtype=np.uint8) if noisy[i] else
             np.repeat(rng.integers(0, 4, pb // 64 + 1, dtype=np.uint8), 64)[:pb] for i in range(planes)]
    data = np.concatenate([*parts, rng.integers(0, 256, extra, dtype=np.uint8)])
    n = data.shape[0]
    frames = []
    for fn in (ext.lz4_frame, ref.lz4_frame):
        out = np.empty(16 + n + 2 * (n // 255) + 34, np.uint8)
        frames.append(out[: fn(data, out, address, 1, planes)].tobytes())
    placed = [_framed_in_place(fn, data, address, 1, planes, pad=extra, slots=1)[:2]
              for fn in (ext.lz4_frames_in_place, ref.lz4_frames_in_place)]
    assert frames[0] == frames[1] == placed[0][0][0]
    assert placed[0] == placed[1]  # the same frame at the same start
    assert decode_lz4(frames[0]) == data.tobytes()


# -- gather_row: a row of chunks from a slab held in parts ------------------------------------


@SETTINGS
@given(
    yx=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    chunk=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
    g=st.integers(1, 4),
    depth_cut=st.integers(0, 6),
    holes=st.lists(st.booleans(), min_size=6, max_size=6),
    short=st.integers(0, 3),
    iy=st.integers(0, 3),
    ix0=st.integers(0, 2),
    dtype=st.sampled_from(GATHER_DTYPES),
    shuffled=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_gather_row_matches_twin_and_slab(yx, chunk, g, depth_cut, holes, short, iy, ix0, dtype, shuffled, seed):
    """Chunks of a row equal the zero-padded slab they cover, whatever the parts look like;
    gathered with ``itemsize``, they equal HDF5's byte shuffle of those chunks."""
    rng = np.random.default_rng(seed)
    cz, cy, cx = chunk
    ny, nx = yx
    nparts = -(-cz // g)
    depth = max(cz - depth_cut, 0)
    itemsize = np.dtype(dtype).itemsize
    slab = np.zeros((nparts * g, ny, nx), dtype)  # the planes the parts hold, as one array
    parts = []
    for k in range(nparts):
        if holes[k % len(holes)]:
            parts.append(None)
            continue
        planes = max(g - (short if k == nparts - 1 else 0), 1)  # a part may hold fewer planes
        part = random_array(rng, (planes, ny, nx), dtype)
        slab[k * g : k * g + planes] = part
        parts.append(part.view(np.uint8))
    slab[depth:] = 0  # planes beyond the valid depth read as zeros
    y0 = iy * cy
    n = max(-(-nx // cx) - ix0, 1)  # the chunks from ix0 on (or one chunk wholly beyond X)
    expect = np.stack([naive_gather(slab[:cz], (0, y0, (ix0 + i) * cx), (cz, cy, cx)) for i in range(n)])
    if shuffled:  # the stored bytes of a shuffled chunk: byte b of element i at b * size + i
        expect = np.stack([c.reshape(-1, 1).view(np.uint8).T.reshape(-1) for c in expect]).view(dtype)
    chunk_bytes = cz * cy * cx * itemsize
    for fn in (ext.gather_row, ref.gather_row):
        out = np.full((n, cz, cy, cx * itemsize), 0xAB, np.uint8)  # garbage: all must be written
        fn(parts, g, depth, y0, ix0 * cx * itemsize, out, *([itemsize] if shuffled else []))
        np.testing.assert_array_equal(out.view(dtype).reshape(expect.shape), expect)
        # the chunks into slots apart (as lz4_frames_in_place takes them): the gaps stay as they were
        gap = 1 + seed % 7
        slots = np.full((n, chunk_bytes + gap), 0xCD, np.uint8)
        fn(parts, g, depth, y0, ix0 * cx * itemsize, slots[:, :chunk_bytes].reshape(n, cz, cy, cx * itemsize),
           *([itemsize] if shuffled else []))
        np.testing.assert_array_equal(slots[:, :chunk_bytes].reshape(out.shape), out)
        assert (slots[:, chunk_bytes:] == 0xCD).all()


def test_gather_row_errors():
    part = np.zeros((2, 4, 8), np.uint8)
    out = np.zeros((1, 2, 4, 8), np.uint8)
    for fn in (ext.gather_row, ref.gather_row):
        with pytest.raises(ValueError, match="g must be"):
            fn([part], 0, 2, 0, 0, out)
        with pytest.raises(ValueError, match="part 1"):
            fn([part, np.zeros((2, 4, 6), np.uint8)], 1, 2, 0, 0, out)
        with pytest.raises((TypeError, ValueError)):
            fn([part], 2, 2, 0, 0, np.zeros((2, 4, 8), np.uint8))  # out not 4-D
        with pytest.raises((TypeError, ValueError)):
            fn([np.zeros((2, 4, 4), np.uint16)], 2, 2, 0, 0, out)  # parts must be bytes
        with pytest.raises(ValueError, match="itemsize must be"):
            fn([part], 2, 2, 0, 0, out, 0)
        with pytest.raises(ValueError, match="whole 4-byte elements"):
            fn([part], 2, 2, 0, 2, out, 4)  # x0 inside an element
        with pytest.raises(ValueError, match="whole 3-byte elements"):
            fn([part], 2, 2, 0, 0, np.zeros((1, 2, 4, 6), np.uint8), 3)  # part rows of 8 bytes
        wide = np.zeros((2, 2, 4, 16), np.uint8)
        with pytest.raises(ValueError, match="C-contiguous"):
            fn([part], 2, 2, 0, 0, wide[:, :, :, ::2])  # chunk rows not contiguous
        with pytest.raises(ValueError, match="C-contiguous"):
            fn([part], 2, 2, 0, 0, wide[:, :, :, :8])  # a chunk's rows apart
        with pytest.raises(ValueError, match="overlap"):
            fn([part], 2, 2, 0, 0, np.lib.stride_tricks.as_strided(wide, (2, 2, 4, 8), (32, 32, 8, 1)))


# -- lz4_frames: a row of chunks, shuffled and framed in one call ------------------------------


@pytest.mark.parametrize("itemsize", [1, 2, 4])
def test_lz4_frames_match_one_frame_per_chunk(itemsize):
    from fastims.compression import decode_lz4, lz4_compress_address
    from fastims.synthetic import camera_stack

    address = lz4_compress_address()
    if address == 0:
        pytest.skip("no liblz4 LZ4_compress_default found")
    chunk_bytes = 4 * 32 * 32 * 2
    stack = camera_stack((20, 32, 32), "uint16", seed=3).view(np.uint8).reshape(-1)
    src = np.concatenate([stack, np.random.default_rng(2).integers(0, 256, chunk_bytes, dtype=np.uint8)])
    n = src.shape[0] // chunk_bytes  # 5 camera chunks and a random one (stored verbatim)
    stride = 16 + chunk_bytes + chunk_bytes // 255 + 16 + 3
    expect = []
    for i in range(n):
        data = src[i * chunk_bytes : (i + 1) * chunk_bytes]
        if itemsize > 1:
            data = np.frombuffer(naive_shuffle(data.tobytes(), itemsize), np.uint8)
        out = np.zeros(stride, np.uint8)
        data = np.ascontiguousarray(data)
        expect.append(out[: ext.lz4_frame(data, out, address)].tobytes())
    for fn in (ext.lz4_frames, ref.lz4_frames):
        out = np.full(n * stride, 0xAB, np.uint8)
        sizes = np.zeros(n, np.int64)
        fn(src, chunk_bytes, itemsize, np.empty(chunk_bytes, np.uint8), address, out, stride, sizes)
        frames = [out[i * stride : i * stride + sizes[i]].tobytes() for i in range(n)]
        assert frames == expect
        assert len(decode_lz4(frames[0])) == chunk_bytes
    assert expect[-1][16:] == data.tobytes()  # the random chunk, incompressible: verbatim


def test_lz4_frames_errors():
    src = np.zeros(64, np.uint8)
    sizes = np.zeros(2, np.int64)
    for fn in (ext.lz4_frames, ref.lz4_frames):
        with pytest.raises(ValueError, match="may need"):
            fn(src, 32, 1, src, 1, np.zeros(200, np.uint8), 40, sizes)
        with pytest.raises(ValueError, match="frames need"):
            fn(src, 32, 1, src, 1, np.zeros(100, np.uint8), 64, sizes)
        with pytest.raises(ValueError, match="chunks need"):
            fn(src[:40], 32, 1, src, 1, np.zeros(200, np.uint8), 64, sizes)
        with pytest.raises(ValueError, match="scratch"):
            fn(src, 32, 2, src[:8], 1, np.zeros(200, np.uint8), 64, sizes)
        with pytest.raises(ValueError, match="address"):
            fn(src, 32, 1, src, 0, np.zeros(200, np.uint8), 64, sizes)


def test_lz4_frames_in_place_errors():
    n = 4096
    offset = 16 + 2 + (n - 15) // 255
    buf = np.zeros(2 * (offset + n), np.uint8)
    scratch = np.zeros(n + n // 255 + 16, np.uint8)
    sizes, starts = np.zeros(2, np.int64), np.zeros(2, np.int64)
    stride = offset + n
    for fn in (ext.lz4_frames_in_place, ref.lz4_frames_in_place):
        with pytest.raises(ValueError, match="no room"):
            fn(buf, offset - 1, n, stride, scratch, 1, sizes, starts)
        with pytest.raises(ValueError, match="stride"):
            fn(buf, offset, n, stride - 1, scratch, 1, sizes, starts)
        with pytest.raises(ValueError, match="scratch"):
            fn(buf, offset, n, stride, scratch[:n], 1, sizes, starts)
        with pytest.raises(ValueError, match="slots need"):
            fn(buf[:-1], offset, n, stride, scratch, 1, sizes, starts)
        with pytest.raises(ValueError, match="starts"):
            fn(buf, offset, n, stride, scratch, 1, sizes, starts[:1])
        with pytest.raises(ValueError, match="address"):
            fn(buf, offset, n, stride, scratch, 0, sizes, starts)
        with pytest.raises(ValueError, match="planes"):
            fn(buf, offset, n, stride, scratch, 1, sizes, starts, 1, 0)
        with pytest.raises(ValueError, match="one block"):
            fn(buf, offset, 0, stride, scratch, 1, sizes, starts)


# ---------------------------------------------------------------------------------------
# stream_copy
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(n=st.integers(0, 300), src_off=st.integers(0, 31), dst_off=st.integers(0, 31), seed=st.integers(0, 2**32 - 1))
def test_stream_copy_matches_twin_at_any_alignment(n, src_off, dst_off, seed):
    """Streaming stores start at a 16-byte boundary: the unaligned head and the tail shorter
    than one 64-byte step are copied apart, and nothing outside `dst` is touched."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, n + src_off, dtype=np.uint8)[src_off:]
    outs = []
    for fn in (ext.stream_copy, ref.stream_copy):
        buf = np.full(n + 64, 0xA5, np.uint8)
        fn(buf[dst_off : dst_off + n], src)
        outs.append(buf)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0][dst_off : dst_off + n], src)
    assert (outs[0][:dst_off] == 0xA5).all() and (outs[0][dst_off + n :] == 0xA5).all()


def test_stream_copy_large_and_from_any_buffer(rng):
    src = rng.integers(0, 256, (8 << 20) + 13, dtype=np.uint8)
    dst = np.empty_like(src)
    ext.stream_copy(dst, src)
    np.testing.assert_array_equal(dst, src)
    view = memoryview(bytes(range(200))).cast("B")  # what h5py's file driver hands the staging file
    out = np.zeros(200, np.uint8)
    ext.stream_copy(out, view)
    assert out.tobytes() == bytes(range(200))


@pytest.mark.parametrize("fn", [ext.stream_copy, ref.stream_copy], ids=["compiled", "twin"])
def test_stream_copy_rejects_bad_input(fn):
    with pytest.raises(ValueError, match="dst has 3 bytes, src 4"):
        fn(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    if fn is ext.stream_copy:
        with pytest.raises(ValueError):  # read-only destination
            fn(np.frombuffer(b"abcd", np.uint8), np.zeros(4, np.uint8))
        with pytest.raises(ValueError):  # not contiguous
            fn(np.zeros(8, np.uint8)[::2], np.zeros(4, np.uint8))
