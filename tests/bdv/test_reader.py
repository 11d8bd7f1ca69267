"""BdvReader: real fixtures, layout variants, partitions, unsupported loaders, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastims
from fastims import FormatError, UnsupportedFormatError
from fastims.bdv.reader import BdvReader, read_bdv

# ---------------------------------------------------------------------------
# synthetic dataset builder
# ---------------------------------------------------------------------------


def set_data_type(group: h5py.Group, value: str, encoding: str) -> None:
    if encoding == "fixed":  # what BDV/jhdf5 writes: fixed-length NULLPAD ASCII scalar
        group.attrs["dataType"] = np.bytes_(value.encode())
    elif encoding == "vlen":  # navigate: h5py default str
        group.attrs["dataType"] = value
    elif encoding == "s1":
        group.attrs["dataType"] = np.frombuffer(value.encode(), dtype="S1")
    elif encoding == "fixed_nul":
        group.attrs.create("dataType", np.bytes_(value.encode() + b"\0\0"), dtype="S10")
    else:  # pragma: no cover
        raise ValueError(encoding)


def write_bdv_h5(
    path: Path,
    views: dict[tuple[int, int], list[np.ndarray]],
    *,
    mode: str = "legacy",
    data_type_encoding: str = "fixed",
    factors: list[tuple[int, int, int]] | None = None,
    chunks: tuple[int, int, int] | None = (4, 8, 8),
    subdivisions: list[tuple[int, int, int]] | None = None,
    compression: dict | None = None,
    data_types_group: bool = False,
    f: h5py.File | None = None,
) -> None:
    """``views``: (timepoint id, setup id) -> level arrays (Z, Y, X) of logical values.

    ``mode="legacy"`` stores uint16 values as int16 bits without ``dataType``;
    ``mode="typed"`` stores the real type and sets ``s{NN}@dataType``.
    """
    own = f is None
    if own:
        f = h5py.File(path, "w")
    try:
        if data_types_group:
            g = f.create_group("__DATA_TYPES__")
            g["Enum_Boolean"] = np.dtype(bool)
        setups = sorted({s for _, s in views})
        for sid in setups:
            levels = next(v for (_, s), v in views.items() if s == sid)
            g = f.require_group(f"s{sid:02d}")
            fac = factors or [(2**i, 2**i, 2**i) for i in range(len(levels))]
            g["resolutions"] = np.array(fac, dtype=np.float64)
            sub = subdivisions or [tuple(reversed(chunks or lv.shape)) for lv in levels]
            g["subdivisions"] = np.array(sub, dtype=np.int32)
            if mode == "typed":
                set_data_type(g, levels[0].dtype.name, data_type_encoding)
        for (tp, sid), levels in views.items():
            for lvl, arr in enumerate(levels):
                store = arr.view(np.int16) if (mode == "legacy" and arr.dtype == np.uint16) else arr
                f.create_dataset(
                    f"t{tp:05d}/s{sid:02d}/{lvl}/cells",
                    data=store,
                    chunks=chunks,
                    maxshape=None if chunks is None else (None, None, None),
                    **(compression or {}),
                )
    finally:
        if own:
            f.close()


def write_xml(
    path: Path,
    h5name: str,
    setups: dict[int, dict],
    *,
    timepoints: str = '<Timepoints type="range"><first>0</first><last>0</last></Timepoints>',
    missing: list[tuple[int, int]] = (),  # type: ignore[assignment]
    registrations: dict[tuple[int, int], list[str]] | None = None,
    loader: str | None = None,
    partitions: str = "",
    base_path: str = '<BasePath type="relative">.</BasePath>',
) -> None:
    vs = []
    kinds: dict[str, set[int]] = {}
    for sid, spec in setups.items():
        attrs = "".join(f"<{k}>{v}</{k}>" for k, v in spec.get("attributes", {}).items())
        for k, v in spec.get("attributes", {}).items():
            kinds.setdefault(k, set()).add(v)
        vox = spec.get("voxel", (1.0, 1.0, 1.0))
        vs.append(
            f"<ViewSetup><id>{sid}</id><name>{spec.get('name', f'setup {sid}')}</name>"
            f"<voxelSize><unit>{spec.get('unit', 'um')}</unit><size>{vox[0]} {vox[1]} {vox[2]}</size></voxelSize>"
            f"<attributes>{attrs}</attributes></ViewSetup>"
        )
    blocks = "".join(
        f'<Attributes name="{k}">'
        + "".join(f"<{k.capitalize()}><id>{i}</id><name>{i}</name></{k.capitalize()}>" for i in sorted(ids))
        + "</Attributes>"
        for k, ids in kinds.items()
    )
    mv = "".join(f'<MissingView timepoint="{t}" setup="{s}"/>' for t, s in missing)
    regs = "".join(
        f'<ViewRegistration timepoint="{t}" setup="{s}">'
        + "".join(f'<ViewTransform type="affine"><Name>n{i}</Name><affine>{a}</affine></ViewTransform>' for i, a in enumerate(affs))
        + "</ViewRegistration>"
        for (t, s), affs in (registrations or {}).items()
    )
    loader = loader or f'<ImageLoader format="bdv.hdf5"><hdf5 type="relative">{h5name}</hdf5>{partitions}</ImageLoader>'
    path.write_text(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- test dataset -->
<SpimData version="0.2">
  {base_path}
  <SequenceDescription>
    {loader}
    <ViewSetups>{''.join(vs)}{blocks}</ViewSetups>
    {timepoints}
    <MissingViews>{mv}</MissingViews>
  </SequenceDescription>
  <ViewRegistrations>{regs}</ViewRegistrations>
</SpimData>
""",
        encoding="utf-8",
    )


def floor_pyramid(vol: np.ndarray, n: int) -> list[np.ndarray]:
    out = [vol]
    for _ in range(n - 1):
        v = out[-1]
        z, y, x = (s // 2 for s in v.shape)
        out.append(np.ascontiguousarray(v[: 2 * z : 2, : 2 * y : 2, : 2 * x : 2]))
    return out


def ceil_pyramid(vol: np.ndarray, n: int) -> list[np.ndarray]:
    out = [vol]
    for _ in range(n - 1):
        out.append(np.ascontiguousarray(out[-1][::2, ::2, ::2]))
    return out


@pytest.fixture
def bright(rng: np.random.Generator) -> np.ndarray:
    """uint16 values above 32767: wrong if int16 storage were converted, not reinterpreted."""
    return rng.integers(30000, 65536, size=(9, 13, 17), dtype=np.uint16)


# ---------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("opener", ["xml", "h5"])
def test_pybdv_example(fixtures_dir: Path, opener: str) -> None:
    base = fixtures_dir / "bdv" / "pybdv"
    with h5py.File(base / "example.h5", "r") as f:
        raw0 = f["t00000/s00/0/cells"][()]
        raw1 = f["t00000/s00/1/cells"][()]
    with fastims.open(base / f"example.{opener}") as r:
        assert isinstance(r, BdvReader)
        assert r.dtype == np.uint16
        assert r.shape == (1, 1, 6, 512, 512)
        assert r.level_shapes == [(1, 1, 6, 512, 512), (1, 1, 3, 256, 256)]
        assert r.chunks == [(8, 16, 32), (4, 32, 32)]  # the real chunks, not subdivisions
        np.testing.assert_array_equal(r.asarray(), raw0)
        np.testing.assert_array_equal(r.asarray(level=1), raw1)
        np.testing.assert_array_equal(r.level(1)[0, 0, 1, 100:120, 7], raw1[1, 100:120, 7])
        assert r.channel_colors is None
        assert r.timepoint_ids == [0]
        assert r.setup_ids == [0]
        if opener == "xml":
            assert r.setups[0].attributes == {"channel": 1}
            assert r.channel_names == ["channel 1"]
            assert r.unit is None
            np.testing.assert_array_equal(r.asarray(channel=1), raw0)
            assert r.metadata["image_loader"]["format"] == "bdv.hdf5"


@pytest.mark.parametrize("opener", ["xml", "h5"])
def test_mri_stack_legacy_int16(fixtures_dir: Path, opener: str) -> None:
    base = fixtures_dir / "bdv" / "mri-stack"
    with h5py.File(base / "mri-stack.h5", "r") as f:
        raw = f["t00000/s00/0/cells"][()]
    assert raw.dtype == np.int16
    with fastims.open(base / f"mri-stack.{opener}") as r:
        assert r.dtype == np.uint16
        assert r.shape == (1, 1, 27, 226, 186)
        assert r.levels == 1
        assert r.chunks == [(4, 32, 32)]
        np.testing.assert_array_equal(r.asarray(), raw.view(np.uint16))
        if opener == "xml":
            assert r.voxel_size == (10.0, 1.0, 1.0)  # XML x y z = 1 1 10
            assert r.unit == "cm"
            np.testing.assert_array_equal(r.affine(0, 0), [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 10, 0]])
            assert r.setups[0].name == "mri-stack"
        else:
            assert r.voxel_size == (1.0, 1.0, 1.0)
            np.testing.assert_array_equal(r.affine(0, 0), np.eye(3, 4))


# ---------------------------------------------------------------------------
# synthetic variants
# ---------------------------------------------------------------------------


def test_legacy_int16_values_above_32767(tmp_path: Path, bright: np.ndarray) -> None:
    h5 = tmp_path / "d.h5"
    levels = floor_pyramid(bright, 2)
    write_bdv_h5(h5, {(0, 0): levels}, mode="legacy")
    with h5py.File(h5, "r") as f:
        assert f["t00000/s00/0/cells"].dtype == np.int16
        assert "dataType" not in f["s00"].attrs
    write_xml(tmp_path / "d.xml", "d.h5", {0: {}})
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.dtype == np.uint16
        np.testing.assert_array_equal(r.asarray(), bright)
        out = np.empty_like(bright)
        assert r.asarray(out=out) is out  # out= path reinterprets too
        np.testing.assert_array_equal(out, bright)
        np.testing.assert_array_equal(r[0, 0, 2:5, ::3, -4:], bright[2:5, ::3, -4:])
        np.testing.assert_array_equal(r.level(1)[0, 0], levels[1])


@pytest.mark.parametrize("encoding", ["fixed", "vlen", "s1", "fixed_nul"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32", "float64"])
def test_typed_data_type(tmp_path: Path, rng: np.random.Generator, encoding: str, dtype: str) -> None:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        vol = rng.standard_normal((5, 6, 7)).astype(dt)
    else:
        info = np.iinfo(dt)
        vol = rng.integers(info.min, info.max, size=(5, 6, 7), dtype=dt)
    h5 = tmp_path / "d.h5"
    write_bdv_h5(h5, {(0, 0): [vol]}, mode="typed", data_type_encoding=encoding)
    with BdvReader(h5) as r:
        assert r.dtype == dt
        np.testing.assert_array_equal(r.asarray(), vol)


def test_unknown_data_type(tmp_path: Path, bright: np.ndarray) -> None:
    h5 = tmp_path / "d.h5"
    write_bdv_h5(h5, {(0, 0): [bright]}, mode="typed")
    with h5py.File(h5, "a") as f:
        f["s00"].attrs["dataType"] = "complex64"
    with pytest.raises(FormatError, match="dataType='complex64'"):
        BdvReader(h5)


def test_big_endian_typed(tmp_path: Path, bright: np.ndarray) -> None:
    h5 = tmp_path / "d.h5"
    write_bdv_h5(h5, {(0, 0): [bright.astype(">u2")]}, mode="typed")
    with h5py.File(h5, "a") as f:
        f["s00"].attrs["dataType"] = "uint16"
    with BdvReader(h5) as r:
        assert r.dtype == np.dtype("<u2")
        np.testing.assert_array_equal(r.asarray(), bright)


def test_scale_offset_deflate_and_data_types_group(tmp_path: Path, bright: np.ndarray) -> None:
    h5 = tmp_path / "d.h5"
    write_bdv_h5(
        h5,
        {(0, 0): floor_pyramid(bright, 2)},
        compression={"scaleoffset": 0, "compression": "gzip", "compression_opts": 6},
        data_types_group=True,
    )
    with h5py.File(h5, "r") as f:
        assert f["t00000/s00/0/cells"].scaleoffset == 0
    with fastims.open(h5) as r:
        assert isinstance(r, BdvReader)
        np.testing.assert_array_equal(r.asarray(), bright)


@pytest.mark.parametrize("pyr", [floor_pyramid, ceil_pyramid], ids=["floor", "ceil"])
def test_floor_and_ceil_levels(tmp_path: Path, bright: np.ndarray, pyr) -> None:
    levels = pyr(bright, 3)
    h5 = tmp_path / "d.h5"
    write_bdv_h5(h5, {(0, 0): levels}, chunks=None)
    write_xml(tmp_path / "d.xml", "d.h5", {0: {"voxel": (0.5, 0.5, 2.0)}})
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.level_shapes == [(1, 1, *lv.shape) for lv in levels]
        for i, lv in enumerate(levels):
            np.testing.assert_array_equal(r.asarray(level=i), lv)
        assert r.level(2).voxel_size == (8.0, 2.0, 2.0)
        assert r.chunks == [None, None, None]


def test_chunks_differing_from_subdivisions_and_exceeding_level(tmp_path: Path, bright: np.ndarray) -> None:
    levels = floor_pyramid(bright, 2)
    h5 = tmp_path / "d.h5"
    # chunk (16, 32, 32) is larger than every level; subdivisions say something else
    write_bdv_h5(h5, {(0, 0): levels}, chunks=(16, 32, 32), subdivisions=[(4, 4, 4), (2, 2, 2)])
    with BdvReader(h5) as r:
        assert r.chunks == [(16, 32, 32), (16, 32, 32)]
        np.testing.assert_array_equal(r.asarray(level=1), levels[1])
        np.testing.assert_array_equal(r[0, 0, 8, 12, 16], bright[8, 12, 16])


def _multi(rng: np.random.Generator, tps: list[int], sids: list[int]) -> dict[tuple[int, int], list[np.ndarray]]:
    return {
        (t, s): floor_pyramid(rng.integers(0, 65535, size=(6, 10, 12), dtype=np.uint16), 2)
        for t in tps
        for s in sids
    }


SETUPS4 = {
    0: {"attributes": {"channel": 0, "tile": 0}, "name": "c0t0"},
    1: {"attributes": {"channel": 1, "tile": 0}, "name": "c1t0"},
    2: {"attributes": {"channel": 0, "tile": 1}, "name": "c0t1"},
    3: {"attributes": {"channel": 1, "tile": 1}, "name": "c1t1"},
}


def test_multi_setup_multi_timepoint(tmp_path: Path, rng: np.random.Generator) -> None:
    views = _multi(rng, [0, 1, 2], [0, 1, 2, 3])
    write_bdv_h5(tmp_path / "d.h5", views)
    write_xml(
        tmp_path / "d.xml", "d.h5", SETUPS4,
        timepoints='<Timepoints type="range"><first>0</first><last>2</last></Timepoints>',
        registrations={(1, 2): ["1 0 0 100 0 1 0 0 0 0 1 0", "2 0 0 0 0 2 0 0 0 0 2 0"]},
    )
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.shape == (3, 4, 6, 10, 12)
        assert r.channel_names == ["c0t0", "c1t0", "c0t1", "c1t1"]
        full = r[:]
        for (t, s), lv in views.items():
            np.testing.assert_array_equal(full[t, s], lv[0])
            np.testing.assert_array_equal(r.asarray(level=1, t=t, setup=s), lv[1])
        np.testing.assert_array_equal(r.asarray(t=2, channel=1, tile=1), views[(2, 3)][0])
        np.testing.assert_array_equal(r.asarray(t=1, c=2), views[(1, 2)][0])
        np.testing.assert_array_equal(r[1:, [3, 0], 2], np.stack([[views[(t, s)][0][2] for s in (3, 0)] for t in (1, 2)]))
        np.testing.assert_allclose(r.affine(1, 2), [[2, 0, 0, 100], [0, 2, 0, 0], [0, 0, 2, 0]])
        with pytest.raises(KeyError, match="timepoint 0, setup 2"):
            r.affine(0, 2)
        with pytest.raises(KeyError, match="setup ids are"):
            r.affine(0, 9)
        with pytest.raises(KeyError, match="setups \\[0, 2\\] all match"):
            r.asarray(channel=0)
        with pytest.raises(KeyError, match="no setup has"):
            r.asarray(channel=5)
        with pytest.raises(KeyError, match="unknown attribute"):
            r.asarray(angle=0)
        with pytest.raises(TypeError):
            r.asarray(c=1, channel=1)
    got = read_bdv(tmp_path / "d.xml", t=1, channel=0, tile=1)
    np.testing.assert_array_equal(got, views[(1, 2)][0])
    got = read_bdv(tmp_path / "d.xml", level=1, c=1)
    assert got.shape == (3, 3, 5, 6)
    np.testing.assert_array_equal(got[2], views[(2, 1)][1])
    assert read_bdv(tmp_path / "d.xml", t=0).shape == (4, 6, 10, 12)


@pytest.mark.parametrize(
    "timepoints",
    [
        '<Timepoints type="list"><Timepoint><id>5</id><name>a</name></Timepoint><Timepoint><id>12</id><name>b</name></Timepoint></Timepoints>',
        '<Timepoints type="pattern"><integerpattern>5, 12</integerpattern></Timepoints>',
        '<Timepoints type="pattern"><integerpattern>5-12:7</integerpattern></Timepoints>',
    ],
    ids=["list", "pattern-list", "pattern-step"],
)
def test_timepoint_ids_are_indices_in_t(tmp_path: Path, rng: np.random.Generator, timepoints: str) -> None:
    views = _multi(rng, [5, 12], [0])
    write_bdv_h5(tmp_path / "d.h5", views)
    write_xml(tmp_path / "d.xml", "d.h5", {0: {}}, timepoints=timepoints)
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.timepoint_ids == [5, 12]
        assert r.shape[0] == 2
        np.testing.assert_array_equal(r.asarray(t=1), views[(12, 0)][0])
        with pytest.raises(IndexError, match="0..1"):
            r.asarray(t=2)
    with BdvReader(tmp_path / "d.h5") as r:  # no XML: ids from the t{TTTTT} groups
        assert r.timepoint_ids == [5, 12]
        np.testing.assert_array_equal(r.asarray(t=0), views[(5, 0)][0])


def test_missing_views(tmp_path: Path, rng: np.random.Generator) -> None:
    views = _multi(rng, [0, 1], [0, 1])
    del views[(1, 0)]
    write_bdv_h5(tmp_path / "d.h5", views)
    write_xml(
        tmp_path / "d.xml", "d.h5", {0: {}, 1: {}},
        timepoints='<Timepoints type="range"><first>0</first><last>1</last></Timepoints>',
        missing=[(1, 0)],
    )
    for name in ("d.xml", "d.h5"):
        with BdvReader(tmp_path / name) as r:
            assert r.missing_views == [(1, 0)]
            np.testing.assert_array_equal(r.asarray(t=1, c=1), views[(1, 1)][0])
            with pytest.raises(KeyError, match="timepoint 1, setup 0"):
                r.asarray(t=1, c=0)
            with pytest.raises(KeyError, match="timepoint 1, setup 0"):
                r[:]
            np.testing.assert_array_equal(r[0], np.stack([views[(0, 0)][0], views[(0, 1)][0]]))


def test_setup_without_any_view(tmp_path: Path, rng: np.random.Generator) -> None:
    """npy2bdv declares setups it never wrote as missing views: the others stay readable."""
    views = _multi(rng, [0], [0])
    write_bdv_h5(tmp_path / "d.h5", views)
    write_xml(tmp_path / "d.xml", "d.h5", {0: {}, 1: {}}, missing=[(0, 1)])
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.shape == (1, 2, 6, 10, 12)
        np.testing.assert_array_equal(r[:, 0], [views[(0, 0)][0]])
        with pytest.raises(KeyError, match="setup 1"):
            r.asarray(c=1)


def test_view_absent_but_not_declared_missing(tmp_path: Path, rng: np.random.Generator) -> None:
    views = _multi(rng, [0, 1], [0])
    write_bdv_h5(tmp_path / "d.h5", views)
    with h5py.File(tmp_path / "d.h5", "a") as f:
        del f["t00001/s00/1"]
    write_xml(tmp_path / "d.xml", "d.h5", {0: {}},
              timepoints='<Timepoints type="range"><first>0</first><last>1</last></Timepoints>')
    with BdvReader(tmp_path / "d.xml") as r:
        with pytest.raises(KeyError, match="t00001/s00/1/cells"):
            r.asarray(level=1, t=1)


def test_several_xmls_over_one_h5(tmp_path: Path, rng: np.random.Generator) -> None:
    views = _multi(rng, [0], [0, 1])
    write_bdv_h5(tmp_path / "d.h5", views)
    write_xml(tmp_path / "a.xml", "d.h5", {0: {}, 1: {}},
              registrations={(0, 1): ["1 0 0 5 0 1 0 0 0 0 1 0"]})
    write_xml(tmp_path / "b.xml", "d.h5", {0: {}, 1: {}},
              registrations={(0, 1): ["1 0 0 7 0 1 0 0 0 0 1 0"]})
    with BdvReader(tmp_path / "a.xml") as a, BdvReader(tmp_path / "b.xml") as b:
        assert a.affine(0, 1)[0, 3] == 5 and b.affine(0, 1)[0, 3] == 7
        np.testing.assert_array_equal(a.asarray(c=1), b.asarray(c=1))


def _partitioned(tmp_path: Path, rng: np.random.Generator, *, links: bool) -> dict:
    """Two partition files (one per setup, setup ids remapped to 0) + master."""
    views = _multi(rng, [0, 1], [0, 1])
    for sid in (0, 1):
        part = {(t, 0): views[(t, sid)] for t in (0, 1)}
        write_bdv_h5(tmp_path / f"d-00-{sid:02d}.h5", part)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for sid in (0, 1):
            g = f.create_group(f"s{sid:02d}")
            g["resolutions"] = np.array([[1, 1, 1], [2, 2, 2]], dtype=np.float64)
            g["subdivisions"] = np.array([[8, 8, 4], [8, 8, 4]], dtype=np.int32)
            if links:
                for t in (0, 1):
                    for lvl in (0, 1):
                        f[f"t{t:05d}/s{sid:02d}/{lvl}/cells"] = h5py.ExternalLink(
                            f"d-00-{sid:02d}.h5", f"t{t:05d}/s00/{lvl}/cells"
                        )
    partitions = "".join(
        f'<partition><path type="relative">d-00-{sid:02d}.h5</path><timepoints>0 1</timepoints>'
        f"<setups>{sid}</setups><setupsMapped>0</setupsMapped></partition>"
        for sid in (0, 1)
    )
    write_xml(tmp_path / "d.xml", "d.h5", {0: {}, 1: {}}, partitions=partitions,
              timepoints='<Timepoints type="range"><first>0</first><last>1</last></Timepoints>')
    return views


@pytest.mark.parametrize("links", [True, False], ids=["master-links", "xml-partitions-only"])
def test_partitions(tmp_path: Path, rng: np.random.Generator, links: bool) -> None:
    views = _partitioned(tmp_path, rng, links=links)
    with BdvReader(tmp_path / "d.xml") as r:
        assert r.level_shapes[1] == (2, 2, 3, 5, 6)
        full = r[:]
        for (t, s), lv in views.items():
            np.testing.assert_array_equal(full[t, s], lv[0])
            np.testing.assert_array_equal(r.asarray(level=1, t=t, c=s), lv[1])
    if links:  # the master alone is a complete dataset
        with BdvReader(tmp_path / "d.h5") as r:
            np.testing.assert_array_equal(r.asarray(t=1, c=1), views[(1, 1)][0])


@pytest.mark.parametrize("links", [True, False], ids=["master-links", "xml-partitions-only"])
def test_missing_partition_file(tmp_path: Path, rng: np.random.Generator, links: bool) -> None:
    views = _partitioned(tmp_path, rng, links=links)
    os.remove(tmp_path / "d-00-01.h5")
    with BdvReader(tmp_path / "d.xml") as r:
        np.testing.assert_array_equal(r.asarray(t=1, c=0), views[(1, 0)][0])
        with pytest.raises(FileNotFoundError, match="d-00-01.h5"):
            r.asarray(t=0, c=1)


def test_base_path_and_hdf5_path_policy(tmp_path: Path, bright: np.ndarray) -> None:
    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    write_bdv_h5(tmp_path / "ds" / "data" / "d.h5", {(0, 0): [bright]})
    write_bdv_h5(tmp_path / "other" / "o.h5", {(0, 0): [bright + 1]})
    xml = tmp_path / "ds" / "d.xml"
    # relative BasePath inside the folder
    write_xml(xml, "d.h5", {0: {}}, base_path='<BasePath type="relative">data</BasePath>')
    with BdvReader(xml) as r:
        np.testing.assert_array_equal(r.asarray(), bright)
    # absolute BasePath inside the folder
    write_xml(xml, "d.h5", {0: {}}, base_path=f'<BasePath type="absolute">{tmp_path / "ds" / "data"}</BasePath>')
    with BdvReader(xml) as r:
        np.testing.assert_array_equal(r.asarray(), bright)
    # BasePath leaving the folder
    write_xml(xml, "o.h5", {0: {}}, base_path='<BasePath type="relative">../other</BasePath>')
    with pytest.raises(FormatError, match="BasePath"):
        BdvReader(xml)
    with BdvReader(xml, allow_external_paths=True) as r:
        np.testing.assert_array_equal(r.asarray(), bright + 1)
    # hdf5 path leaving the folder
    write_xml(xml, "../other/o.h5", {0: {}})
    with pytest.raises(FormatError, match="outside the dataset folder"):
        fastims.open(xml)
    write_xml(xml, str(tmp_path / "other" / "o.h5"), {0: {}})
    xml.write_text(xml.read_text().replace('<hdf5 type="relative">', '<hdf5 type="absolute">'))
    with pytest.raises(FormatError, match="outside the dataset folder"):
        BdvReader(xml)
    with BdvReader(xml, allow_external_paths=True) as r:
        np.testing.assert_array_equal(r.asarray(), bright + 1)


def test_external_link_leaving_folder(tmp_path: Path, bright: np.ndarray) -> None:
    (tmp_path / "ds").mkdir()
    write_bdv_h5(tmp_path / "part.h5", {(0, 0): [bright]})
    with h5py.File(tmp_path / "ds" / "d.h5", "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00/subdivisions"] = np.ones((1, 3), dtype=np.int32)
        f["t00000/s00/0/cells"] = h5py.ExternalLink("../part.h5", "t00000/s00/0/cells")
    with pytest.raises(FormatError, match="outside the dataset folder"):
        BdvReader(tmp_path / "ds" / "d.h5")
    with BdvReader(tmp_path / "ds" / "d.h5", allow_external_paths=True) as r:
        np.testing.assert_array_equal(r.asarray(), bright)


def test_setups_of_different_types(tmp_path: Path, rng: np.random.Generator, bright: np.ndarray) -> None:
    small = rng.integers(0, 255, size=bright.shape, dtype=np.uint8)
    h5 = tmp_path / "d.h5"
    with h5py.File(h5, "w") as f:
        write_bdv_h5(h5, {(0, 0): [small]}, mode="typed", f=f)
        write_bdv_h5(h5, {(0, 1): [bright]}, mode="legacy", f=f)
    with BdvReader(h5) as r:
        assert r.dtype == np.uint8  # the first setup's
        assert r.asarray(c=1).dtype == np.uint16
        both = r[0]
        assert both.dtype == np.uint16  # a common type, never a truncating one
        np.testing.assert_array_equal(both[0], small)
        np.testing.assert_array_equal(both[1], bright)


def test_no_resolutions_table(tmp_path: Path, bright: np.ndarray) -> None:
    """Level count from the view's level groups, factors from the level sizes."""
    levels = floor_pyramid(bright, 2)
    write_bdv_h5(tmp_path / "d.h5", {(0, 0): levels})
    with h5py.File(tmp_path / "d.h5", "a") as f:
        del f["s00/resolutions"]
    with BdvReader(tmp_path / "d.h5") as r:
        assert r.levels == 2
        assert r.level(1).voxel_size == (2.0, 2.0, 2.0)
        np.testing.assert_array_equal(r.asarray(level=1), levels[1])


@pytest.mark.parametrize(
    ("fmt", "child"),
    [
        ("bdv.n5", '<n5 type="relative">d.n5</n5>'),
        ("bdv.multimg.zarr", '<zarr type="relative">d.zarr</zarr>'),
        ("bdv.ome.zarr", '<ome.zarr type="relative">d.ome.zarr</ome.zarr>'),
        ("bdv.hdf5.remote", "<baseUrl>http://example.org/d</baseUrl>"),
    ],
)
def test_unsupported_loaders_keep_metadata(tmp_path: Path, fmt: str, child: str) -> None:
    xml = tmp_path / "d.xml"
    setups = {0: {"attributes": {"channel": 0}, "voxel": (0.5, 0.5, 3.0)}, 1: {"attributes": {"channel": 1}}}
    write_xml(xml, "", setups, loader=f'<ImageLoader format="{fmt}" version="1.0">{child}</ImageLoader>',
              registrations={(0, 1): ["1 0 0 3 0 1 0 0 0 0 1 0"]})
    text = xml.read_text().replace("<voxelSize>", "<size>10 20 30</size><voxelSize>")
    xml.write_text(text)
    with fastims.open(xml) as r:
        assert isinstance(r, BdvReader)
        assert r.image_loader_format == fmt
        assert [s.attributes for s in r.setups] == [{"channel": 0}, {"channel": 1}]
        assert r.voxel_size == (3.0, 0.5, 0.5)
        assert r.affine(0, 1)[0, 3] == 3
        assert r.shape == (1, 2, 30, 20, 10)  # from <size>
        assert fmt in repr(r)
        for access in (lambda: r.asarray(), lambda: r[0], lambda: r.dtype, lambda: r.levels):
            with pytest.raises(UnsupportedFormatError, match=fmt):
                access()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_not_spimdata_xml(tmp_path: Path) -> None:
    xml = tmp_path / "x.xml"
    xml.write_text("<?xml version='1.0'?><OME><Image/></OME>")
    with pytest.raises(FormatError, match="not a SpimData XML"):
        fastims.open(xml)
    xml.write_text("<SpimData><SequenceDesc")
    with pytest.raises(FormatError, match="not well-formed"):
        BdvReader(xml)


def test_xml_pointing_to_missing_h5(tmp_path: Path) -> None:
    write_xml(tmp_path / "d.xml", "nothere.h5", {0: {}})
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        BdvReader(tmp_path / "d.xml")


def test_h5_that_is_not_bdv(tmp_path: Path) -> None:
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.zeros(4)
    with pytest.raises(FormatError, match="neither an Imaris file"):
        fastims.open(h5)
    with pytest.raises(FormatError, match="not a BigDataViewer HDF5 file"):
        BdvReader(h5)


def test_truncated_and_garbage_h5(tmp_path: Path, bright: np.ndarray) -> None:
    h5 = tmp_path / "d.h5"
    write_bdv_h5(h5, {(0, 0): [bright]}, compression={"compression": "gzip"})
    blob = h5.read_bytes()
    (tmp_path / "cut.h5").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(FormatError):
        with BdvReader(tmp_path / "cut.h5") as r:
            r.asarray()
    (tmp_path / "junk.h5").write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="not an HDF5 file"):
        BdvReader(tmp_path / "junk.h5")
    write_xml(tmp_path / "cut.xml", "cut.h5", {0: {}})
    with pytest.raises(FormatError):
        with BdvReader(tmp_path / "cut.xml") as r:
            r.asarray()


def test_out_of_range(tmp_path: Path, rng: np.random.Generator) -> None:
    write_bdv_h5(tmp_path / "d.h5", _multi(rng, [0], [0, 1]))
    with BdvReader(tmp_path / "d.h5") as r:
        with pytest.raises(IndexError, match=r"2 levels \(0..1\)"):
            r.asarray(level=2)
        with pytest.raises(IndexError, match="valid c are 0..1"):
            r.asarray(c=2)
        with pytest.raises(KeyError, match=r"setup ids are \[0, 1\]"):
            r.asarray(setup=4)
        with pytest.raises(IndexError, match="valid t are 0..0"):
            r.affine(1, 0)


def test_resolutions_with_bad_shape(tmp_path: Path, bright: np.ndarray) -> None:
    write_bdv_h5(tmp_path / "d.h5", {(0, 0): [bright]})
    with h5py.File(tmp_path / "d.h5", "a") as f:
        del f["s00/resolutions"]
        f["s00/resolutions"] = np.ones((1, 2))
    with pytest.raises(FormatError, match="resolutions"):
        BdvReader(tmp_path / "d.h5")


def test_view_larger_than_its_setup(tmp_path: Path) -> None:
    # a time point stored larger than the setup's size was silently cropped to it
    data = {(t,): np.full((3, 10, 12), t + 1, np.uint16) for t in range(2)}
    fastims.write_bdv(tmp_path / "v.xml", data)
    with h5py.File(tmp_path / "v.h5", "a") as f:
        del f["t00001/s00/0/cells"]
        f["t00001/s00/0/cells"] = np.full((3, 10, 20), 2, np.int16)
    with fastims.open(tmp_path / "v.xml") as r:
        np.testing.assert_array_equal(r.asarray(t=0), data[(0,)])
        with pytest.raises(FormatError, match=r"t00001/s00/0/cells has shape \(3, 10, 20\), unlike"):
            r.asarray(t=1)


# ---------------------------------------------------------------------------
# channel names
# ---------------------------------------------------------------------------


def test_channel_names_come_from_the_channel_attribute(tmp_path: Path) -> None:
    vol = np.zeros((2, 8, 8), np.uint16)
    # labels set with the writer API; the setups keep the writer's automatic names
    with fastims.BdvWriter(tmp_path / "c.xml", nchannels=2) as w:
        w.set_attribute_labels("channel", ["GFP", "mCherry"])
        for c in range(2):
            w.write_view(vol + c, channel=c)
    with BdvReader(tmp_path / "c.xml") as r:
        assert [s.name for s in r.setups] == ["setup 0", "setup 1"]
        assert {i: v.name for i, v in r.attribute_values["channel"].items()} == {0: "GFP", 1: "mCherry"}
        assert r.channel_names == ["GFP", "mCherry"]
    # channels named by their ids carry no name: the setups' names remain
    with fastims.BdvWriter(tmp_path / "u.xml", nchannels=2) as w:
        for c in range(2):
            w.write_view(vol + c, channel=c, name=f"cam{c}")
    with BdvReader(tmp_path / "u.xml") as r:
        assert {i: v.name for i, v in r.attribute_values["channel"].items()} == {0: "0", 1: "1"}
        assert r.channel_names == ["cam0", "cam1"]
    with fastims.BdvWriter(tmp_path / "n.xml", nchannels=2) as w:
        for c in range(2):
            w.write_view(vol + c, channel=c)
    with BdvReader(tmp_path / "n.xml") as r:
        assert r.channel_names == ["setup 0", "setup 1"]
    # the bare .h5 has no attributes
    with BdvReader(tmp_path / "c.h5") as r:
        assert r.channel_names == ["setup 0", "setup 1"]


def test_channel_names_shared_by_tiles_stay_distinct(tmp_path: Path) -> None:
    vol = np.zeros((2, 8, 8), np.uint16)
    with fastims.BdvWriter(tmp_path / "t.xml", nchannels=2, ntiles=2) as w:
        w.set_attribute_labels("channel", ["GFP", "mCherry"])
        for c in range(2):
            for tile in range(2):
                w.write_view(vol, channel=c, tile=tile)
    with BdvReader(tmp_path / "t.xml") as r:
        by_setup = {s.id: (s.attributes["channel"], s.attributes["tile"]) for s in r.setups}
        expected = [f"{['GFP', 'mCherry'][by_setup[sid][0]]} (setup {sid})" for sid in r.setup_ids]
        assert r.channel_names == expected
        assert len(set(r.channel_names)) == 4
