"""Engine mechanisms: buffer pool bound, automatic budget, abort, helpers."""

from __future__ import annotations

import numpy as np
import pytest

from fastims.compression import Codec
from fastims.engine import BufferPool, DatasetRef, Engine, LevelSpec, default_memory_limit, ranges_text
from fastims.errors import WriterStateError


def test_ranges_text():
    assert ranges_text([]) == ""
    assert ranges_text([4]) == "4"
    assert ranges_text([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"


def test_buffer_pool_reuses_and_bounds_idle_plus_outstanding():
    pool = BufferPool(retain_bytes=3 * 800)
    a = pool.take((100,), np.float64)  # 800 bytes each
    b = pool.take((100,), np.float64)
    c = pool.take((100,), np.float64)
    d = pool.take((100,), np.float64)
    for buf in (a, b, c):
        pool.give(buf)
    # a dropped (b, c, d still out: 3 * 800 already), then b and c kept
    assert pool.idle_bytes == 2 * 800
    assert pool.take((100,), np.float64) is c  # a warm buffer handed back
    pool.give(d)
    pool.clear()
    assert pool.idle_bytes == 0


def _deep_levels():
    return [LevelSpec((64, 512, 512), (32, 128, 128)), LevelSpec((32, 256, 256), (32, 128, 128), 0, (2, 2, 2))]


def test_automatic_budget_grows_for_streams_open_together():
    engine = Engine(max_workers=1)
    try:
        codec = Codec.create(None, dtype=np.uint16)
        base = engine.memory_limit
        assert base == default_memory_limit()
        slabs = (32 * 512 * 512 + 32 * 256 * 256) * 2
        streams = []
        for c in range(40):
            streams.append(engine.open_stream(c, dtype=np.uint16, levels=_deep_levels(),
                                              datasets=[DatasetRef(), DatasetRef()], codec=codec, rule="imaris"))
        assert engine.memory_limit == max(base, 40 * slabs + (64 << 20))
    finally:
        engine.close()


def test_explicit_budget_is_kept():
    engine = Engine(max_workers=1, memory_limit=1 << 20)
    try:
        codec = Codec.create(None, dtype=np.uint16)
        for c in range(3):
            engine.open_stream(c, dtype=np.uint16, levels=_deep_levels(), datasets=[DatasetRef(), DatasetRef()],
                               codec=codec, rule="imaris")
        assert engine.memory_limit == 1 << 20
    finally:
        engine.close()


def test_abort_makes_check_raise_the_reason():
    engine = Engine(max_workers=1)
    try:
        engine.abort(WriterStateError("stop"))
        assert engine.aborted
        with pytest.raises(WriterStateError, match="stop"):
            engine.check()
    finally:
        engine.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_engine_validates_options(bad):
    with pytest.raises(ValueError):
        Engine(max_workers=bad)
    with pytest.raises(ValueError):
        Engine(memory_limit=bad)


def test_open_stream_validates_levels():
    engine = Engine(max_workers=1)
    try:
        codec = Codec.create(None, dtype=np.uint16)
        bad_shape = [LevelSpec((8, 64, 64), (8, 64, 64)), LevelSpec((4, 31, 32), (4, 32, 32), 0, (2, 2, 2))]
        with pytest.raises(ValueError, match="downsampling"):
            engine.open_stream(0, dtype=np.uint16, levels=bad_shape, datasets=[DatasetRef()] * 2, codec=codec,
                               rule="imaris")
        bad_depth = [LevelSpec((9, 64, 64), (3, 64, 64)), LevelSpec((4, 32, 32), (4, 32, 32), 0, (2, 2, 2))]
        with pytest.raises(ValueError, match="multiple of the z factor"):
            engine.open_stream(0, dtype=np.uint16, levels=bad_depth, datasets=[DatasetRef()] * 2, codec=codec,
                               rule="imaris")
    finally:
        engine.close()
