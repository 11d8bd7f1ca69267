"""Chunk codecs (:mod:`fastims.compression`) vs the bare compression libraries.

One camera-like 2048 x 2048 x 32 uint16 slab is cut into 8 x 256 x 256 chunks (1 MiB, the
ImarisWriter level-0 chunk of a 2048^2 stack). Each benchmark encodes every chunk once per
round. ``extra_info`` holds ``MB/s`` (input bytes / 1e6 / median seconds), ``ratio``
(input bytes / encoded bytes) and, for the codec benchmarks, the encoder that ran.

Run with ``python -m pytest benchmarks/bench_codecs.py --benchmark-only``. ``test_codec`` and
``test_raw_library`` of the same group encode the same bytes; ``extra_info["time vs raw"]``
of ``test_codec`` is the codec layer's cost (shuffle scratch, LZ4 framing, dispatch) measured
chunk by chunk alternately with the bare call, which is robust to machine load (target < 1.10).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lz4.block
import numpy as np
import pytest

from fastims.compression import Codec, lz4_bound

isal_zlib = pytest.importorskip("isal.isal_zlib")

SLAB = (32, 2048, 2048)
CHUNK = (8, 256, 256)
# stdlib zlib runs at ~60 MB/s here: time it on the first 1/8 of the chunks only
ZLIB_SUBSET = 64


def _report(benchmark: Any, nbytes: int, encoded: int, **extra: Any) -> None:
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / benchmark.stats.stats.median, 1)
    benchmark.extra_info["ratio"] = round(nbytes / encoded, 4)
    benchmark.extra_info.update(extra)


def _camera_slab(shape: tuple[int, int, int] = SLAB) -> np.ndarray:
    """Dark offset 100 + smooth blobs + shot noise (~sqrt(signal)) + read noise, as uint16."""
    rng = np.random.default_rng(2024)
    nz, ny, nx = shape
    yy = np.arange(ny, dtype=np.float32)[:, None]
    xx = np.arange(nx, dtype=np.float32)[None, :]
    signal = np.full((ny, nx), 20.0, np.float32)
    for _ in range(60):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        sigma, amp = rng.uniform(8, 60), rng.uniform(300, 3000)
        signal += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / np.float32(2 * sigma**2))
    out = np.empty(shape, np.uint16)
    for z in range(nz):
        lam = signal * np.float32(0.7 + 0.3 * np.cos(np.pi * z / nz))
        noise = rng.standard_normal((ny, nx), dtype=np.float32) * (np.sqrt(lam) + 1.5)
        out[z] = np.clip(lam + noise + 100, 0, 65535)
    return out


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    slab = _camera_slab()
    cz, cy, cx = CHUNK
    return [
        np.ascontiguousarray(slab[z : z + cz, y : y + cy, x : x + cx])
        for z in range(0, SLAB[0], cz)
        for y in range(0, SLAB[1], cy)
        for x in range(0, SLAB[2], cx)
    ]


def _encode_all(fn: Callable[[np.ndarray], Any], chunks: list[np.ndarray]) -> int:
    return sum(len(fn(c)) for c in chunks)


def _run(benchmark: Any, fn: Callable[[np.ndarray], Any], chunks: list[np.ndarray], **extra):
    encoded = _encode_all(fn, chunks[:2])  # warm-up (imports, allocator)
    encoded = benchmark.pedantic(_encode_all, args=(fn, chunks), rounds=3, iterations=1)
    _report(benchmark, sum(c.nbytes for c in chunks), encoded, **extra)


def _codec_fn(codec: Codec) -> Callable[[np.ndarray], Any]:
    scratch = np.empty(int(np.prod(CHUNK)) * codec.itemsize, np.uint8)
    return lambda c: codec.encode(c, scratch=scratch)


# name -> (codec options, bare-library equivalent or None, chunk subset)
CASES: dict[str, tuple[dict[str, Any], Callable[[Any], bytes] | None, int | None]] = {
    "lz4": ({"compression": "lz4"}, lambda c: lz4.block.compress(c, store_size=False), None),
    "gzip1-isal": ({"compression": "gzip", "level": 1}, lambda c: isal_zlib.compress(c, 1), None),
    "gzip2-isal": ({"compression": "gzip", "level": 2}, lambda c: isal_zlib.compress(c, 2), None),
    "gzip1-zlib": (
        {"compression": "gzip", "level": 1, "deflate_backend": "zlib"},
        lambda c: zlib.compress(c, 1),
        ZLIB_SUBSET,
    ),
    "shuffle+lz4": ({"compression": "lz4", "shuffle": True}, None, None),
    "shuffle+gzip1": ({"compression": "gzip", "level": 1, "shuffle": True}, None, None),
    "shuffle+gzip2": ({"compression": "gzip", "level": 2, "shuffle": True}, None, None),
    "shuffle+gzip2-zlib": (
        {"compression": "gzip", "level": 2, "shuffle": True, "deflate_backend": "zlib"},
        None,
        ZLIB_SUBSET,
    ),
}


def _interleaved_overhead(
    ours: Callable[[np.ndarray], Any], raw: Callable[[np.ndarray], Any], chunks: list[np.ndarray]
) -> float:
    """Time(ours) / time(raw), alternating per chunk so machine load affects both alike."""
    t_ours = t_raw = 0.0
    for chunk in chunks:
        t0 = time.perf_counter()
        ours(chunk)
        t1 = time.perf_counter()
        raw(chunk)
        t_ours += t1 - t0
        t_raw += time.perf_counter() - t1
    return t_ours / t_raw


@pytest.mark.parametrize("case", list(CASES))
def test_codec(benchmark, chunks, case):
    opts, raw, subset = CASES[case]
    codec = Codec.create(dtype=np.uint16, **opts)
    benchmark.group = case
    fn = _codec_fn(codec)
    _run(benchmark, fn, chunks[:subset], encoder=codec.encoder)
    if raw is not None:
        sample = chunks[: min(len(chunks[:subset]), 32)]
        benchmark.extra_info["time vs raw"] = round(_interleaved_overhead(fn, raw, sample), 3)


@pytest.mark.parametrize("case", [c for c, (_, raw, _) in CASES.items() if raw is not None])
def test_raw_library(benchmark, chunks, case):
    _, raw, subset = CASES[case]
    benchmark.group = case
    _run(benchmark, raw, chunks[:subset])


@pytest.mark.parametrize("case", ["lz4", "gzip1-isal", "gzip1-zlib", "shuffle+gzip2"])
def test_codec_two_threads(benchmark, chunks, case):
    """Two encoding threads: ~2x the one-thread MB/s only if the encoder releases the GIL."""
    opts, _, subset = CASES[case]
    codec = Codec.create(dtype=np.uint16, **opts)
    subset_chunks = chunks[:subset]
    halves = [subset_chunks[0::2], subset_chunks[1::2]]
    fns = [_codec_fn(codec), _codec_fn(codec)]  # one scratch buffer per thread

    with ThreadPoolExecutor(2) as pool:

        def encode_parallel() -> int:
            return sum(pool.map(_encode_all, fns, halves))

        encode_parallel()
        benchmark.group = case
        encoded = benchmark.pedantic(encode_parallel, rounds=3, iterations=1)
    _report(benchmark, sum(c.nbytes for c in subset_chunks), encoded, encoder=codec.encoder)


@pytest.fixture(scope="module")
def slab_parts() -> list[np.ndarray]:
    """The slab as the engine holds it: one part of a chunk's depth of planes, as bytes."""
    slab = _camera_slab()
    return [np.ascontiguousarray(slab[z : z + CHUNK[0]]).view(np.uint8) for z in range(0, SLAB[0], CHUNK[0])]


@pytest.mark.parametrize("path", ["gather into scratch, frame", "gather into slots, frame in place",
                                  "gather whole rows into slots, frame in place"])
def test_shuffle_lz4_rows(benchmark, slab_parts, path):
    """The engine's shuffle+LZ4 step per run of chunks of a row: gather (shuffling) and frame.

    Before the eleventh session the chunks were gathered, 4 at a time, into per-thread
    scratch and framed into the writer's buffer (their literal noise planes copied there);
    then they were gathered straight into that buffer's slots and framed where they lie;
    since the twelfth, a whole row at a time (``gather_row`` then reads the slab in order).
    ``time vs scratch`` of the other paths is the ratio of their median time to the first's,
    run alternately over the whole slab (robust to load; row by row, the second would find
    the first's rows in the cache).
    """
    from fastims import _dispatch

    codec = Codec.create(dtype=np.uint16, compression="lz4", shuffle=True)
    cz, cy, cx = CHUNK
    row = (cz, cy, cx * 2)
    chunk_bytes = cz * cy * cx * 2
    k = 4  # chunks per step through scratch (Engine.GROUP_BYTES)
    whole = SLAB[2] // cx  # a row's chunks
    bound = codec.frame_bound(chunk_bytes)
    room = codec.frame_room(chunk_bytes)
    if bound is None or room is None:
        pytest.skip("no liblz4 LZ4_compress_fast found")
    stride = room + chunk_bytes
    gather = _dispatch.kernel("gather_row")
    group = np.zeros((k, *row), np.uint8)
    out = np.zeros(whole * max(bound, stride), np.uint8)
    scratch = np.zeros(lz4_bound(chunk_bytes), np.uint8)
    sizes, starts = np.zeros(whole, np.int64), np.zeros(whole, np.int64)

    def in_place(m: int) -> Callable[..., int]:
        slots = np.lib.stride_tricks.as_strided(out[room:], (m, *row), (stride, cy * cx * 2, cx * 2, 1),
                                                writeable=True)

        def slots_step(part: np.ndarray, y0: int) -> int:
            encoded = 0
            for x0 in range(0, SLAB[2] * 2, m * cx * 2):
                gather([part], cz, cz, y0, x0, slots, 2)
                codec.encode_chunks_in_place(out, room, chunk_bytes, stride, sizes[:m], starts[:m], scratch=scratch)
                encoded += int(sizes[:m].sum())
            return encoded
        return slots_step

    def scratch_step(part: np.ndarray, y0: int) -> int:
        encoded = 0
        for x0 in range(0, SLAB[2] * 2, k * cx * 2):
            gather([part], cz, cz, y0, x0, group, 2)
            codec.encode_chunks_into(group.reshape(-1), chunk_bytes, out, bound, sizes[:k], shuffled=True)
            encoded += int(sizes[:k].sum())
        return encoded

    steps = [(p, y0) for p in slab_parts for y0 in range(0, SLAB[1], cy)]
    if path.startswith("gather into scratch"):
        step = scratch_step
    else:
        step = in_place(whole if path.startswith("gather whole rows") else k)

    def run(step: Callable[..., int] = step) -> int:
        return sum(step(*s) for s in steps)

    run()  # warm-up: buffers touched, kernels loaded
    benchmark.group = "shuffle+lz4 rows"
    encoded = benchmark.pedantic(run, rounds=5, iterations=1)
    _report(benchmark, sum(p.nbytes for p in slab_parts), encoded)
    if step is not scratch_step:
        times: dict[Callable[..., int], list[float]] = {step: [], scratch_step: []}
        for _ in range(7):
            for fn, spent in times.items():
                t0 = time.perf_counter()
                run(fn)
                spent.append(time.perf_counter() - t0)
        ratio = float(np.median(times[step]) / np.median(times[scratch_step]))
        benchmark.extra_info["time vs scratch"] = round(ratio, 3)
