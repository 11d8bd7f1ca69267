"""write_ims/ImsWriter -> fastims.open/read_ims: data at every level and metadata survive."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pytest

import fastims
from fastims.ims.layout import imaris_levels
from fastims.pyramid import downsample
from fastims.synthetic import camera_stack


def test_channel_names_round_trip_as_written(tmp_path):
    """Names keep their spaces and may be empty: Imaris shows them as written."""
    import h5py

    names = ["", " GFP ", "mCherry 2"]
    path = tmp_path / "names.ims"
    fastims.write_ims(path, np.zeros((3, 2, 8, 8), np.uint16), channel_names=names)
    with fastims.ImsReader(path) as r:
        assert r.channel_names == names
    with h5py.File(path, "r") as f:  # plain h5py sees the same characters, as C strings
        stored = [f[f"DataSetInfo/Channel {c}"].attrs["Name"].tobytes().split(b"\0")[0].decode() for c in range(3)]
    assert stored == names


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
@pytest.mark.parametrize("compression", [None, "gzip", "lz4"])
def test_round_trip_all_levels(tmp_path, dtype, compression):
    data = camera_stack((2, 19, 71, 103), dtype, seed=21)[None]  # (T, C, Z, Y, X)
    path = tmp_path / f"{dtype}.ims"
    kwargs = dict(compression=compression, shuffle=True, voxel_size=(3.0, 0.5, 0.25), unit="nm",
                  channel_names=["dapi", "gfp"], channel_colors=[(0, 0, 1), (0, 1, 0)])
    if dtype == "uint32":
        with pytest.warns(UserWarning):
            fastims.write_ims(path, data, **kwargs)
    else:
        fastims.write_ims(path, data, **kwargs)
    layout = imaris_levels(data.shape[2:], data.dtype)
    with fastims.open(path) as r:
        assert r.dims == "TCZYX"
        assert r.shape == data.shape and r.dtype == data.dtype
        assert r.levels == len(layout)
        assert [s[2:] for s in r.level_shapes] == [lv.shape for lv in layout]
        assert r.voxel_size == pytest.approx((3.0, 0.5, 0.25))
        assert r.unit == "nm"
        assert r.channel_names == ["dapi", "gfp"]
        assert [tuple(c) for c in r.channel_colors] == [(0, 0, 1), (0, 1, 0)]
        np.testing.assert_array_equal(r[:], data)
        np.testing.assert_array_equal(r[0, 1, 5:9, ::3, 7], data[0, 1, 5:9, ::3, 7])
        expected = data[0, 1]
        for lv_index in range(1, r.levels):
            expected = downsample(expected, layout[lv_index].factors, rule="imaris")
            np.testing.assert_array_equal(r.asarray(level=lv_index, c=1), expected)
        clone = pickle.loads(pickle.dumps(r))
        try:
            np.testing.assert_array_equal(clone.asarray(c=0), data[0, 0])
        finally:
            clone.close()
    np.testing.assert_array_equal(fastims.read_ims(path, c=0, t=0), data[0, 0])


def test_timepoints_round_trip(tmp_path):
    data = camera_stack((1, 5, 20, 30), "uint16", seed=2)
    data = np.stack([data, data + 1, data + 2])
    times = [dt.datetime(2025, 5, 6, 7, 8, 9) + dt.timedelta(seconds=1.5 * i) for i in range(3)]
    path = tmp_path / "t.ims"
    fastims.write_ims(path, data, timepoints=times)
    with fastims.open(path) as r:
        assert r.shape[0] == 3
        assert r.timepoints == times
        np.testing.assert_array_equal(r.asarray(t=2), data[2, 0])


def test_dask_view_matches(tmp_path):
    pytest.importorskip("dask.array")
    data = camera_stack((2, 40, 64, 64), "uint16", seed=8)
    path = tmp_path / "d.ims"
    fastims.write_ims(path, data, compression="lz4")
    with fastims.open(path) as r:
        arr = r.to_dask()
        assert arr.shape == (1, 2, 40, 64, 64)
        np.testing.assert_array_equal(arr.compute(), data[None])
