"""fastims.link: Imaris multi-dataset files and BDV masters made of external links to tiles."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastims
from fastims import write_bdv, write_ims
from fastims.cli import main
from fastims.link import LinkSource, TilePattern, grid_sources, link_bdv, link_ims

VOXEL = (2.0, 0.5, 0.5)
TILE = (6, 40, 30)
CHANNELS = (488, 561)
LEVELS = ((1, 1, 1), (1, 2, 2))


def tile_name(x, y, ch, z=0, ext="ims"):
    return f"tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.{ext}"


@pytest.fixture
def ims_grid(tmp_path, rng):
    """A 2 x 3 (x, y) grid of single-channel .ims tiles in two channels, placed by ExtMin."""
    data = {}
    for ch in CHANNELS:
        for y in range(3):
            for x in range(2):
                a = rng.integers(0, 4000, TILE, dtype=np.uint16)
                data[(ch, y, x)] = a
                write_ims(tmp_path / tile_name(x, y, ch), a, voxel_size=VOXEL, compression="lz4",
                          origin=(0.0, y * 18.0, x * 13.5), channel_names=["Channel 0"])
    return data


def nullterm_attrs(obj):
    """(name, is NULLTERM 1-char 1-D array) for every string attribute of `obj`."""
    out = []
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode())
        tid = aid.get_type()
        if tid.get_class() != h5py.h5t.STRING:
            continue
        ok = (tid.get_size() == 1 and tid.get_strpad() == h5py.h5t.STR_NULLTERM
              and aid.shape is not None and len(aid.shape) == 1 and not tid.is_variable_str())
        out.append((name, ok))
    return out


def test_link_ims_grid_is_imaris_linker_layout(tmp_path, ims_grid, monkeypatch):
    out = link_ims(tmp_path / "all.ims", x_tiles=2, y_tiles=3, z_tiles=1, channels=list(CHANNELS),
                   color_ranges=[0, 1000, 0, 500], channel_colors=[0, 1, 0, 0, 0, 1])
    assert out == tmp_path / "all.ims"
    # plain h5py, from another folder: the links are relative to the linked file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    order = [(ch, y, x) for ch in CHANNELS for y in range(3) for x in range(2)]  # imaris-linker order
    with h5py.File(out, "r") as f:
        n = f.attrs["NumberOfDataSets"]
        assert n.dtype == np.dtype("<u4") and n.shape == (1,) and int(n[0]) == len(order)
        for name, ok in nullterm_attrs(f):
            assert ok, name
        for i, key in enumerate(order):
            suffix = str(i) if i else ""
            link = f[f"DataSet{suffix}/ResolutionLevel 0/TimePoint 0"].get("Channel 0", getlink=True)
            assert isinstance(link, h5py.ExternalLink)
            assert not os.path.isabs(link.filename) and ".." not in Path(link.filename).parts
            assert link.filename == tile_name(key[2], key[1], key[0])
            ds = f[f"DataSet{suffix}/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
            np.testing.assert_array_equal(ds[: TILE[0], : TILE[1], : TILE[2]], ims_grid[key])
            image = f[f"DataSetInfo{suffix}/Image"]
            assert "RecordingDate" not in image.attrs
            assert "TimeInfo" not in f[f"DataSetInfo{suffix}"]
            for group in (image, f[f"DataSetInfo{suffix}/Channel 0"]):
                for name, ok in nullterm_attrs(group):
                    assert ok, (group.name, name)
        assert f"DataSet{len(order)}" not in f
    with fastims.open(out) as r:
        assert len(r.scenes) == len(order)
        for i, (ch, y, x) in enumerate(order):
            r.set_scene(i)
            np.testing.assert_array_equal(r[0, 0], ims_grid[(ch, y, x)])
            with fastims.open(tmp_path / tile_name(x, y, ch)) as tile:
                assert r.levels == tile.levels
                for level in range(r.levels):
                    np.testing.assert_array_equal(r.level(level)[:], tile.level(level)[:])
            np.testing.assert_allclose(r.voxel_size, VOXEL)
            # positions are the tiles' own extents
            np.testing.assert_allclose(r._axis_origin(0), (1.0, y * 18.0 + 0.25, x * 13.5 + 0.25))
            assert r.channel_names == [str(ch)]
            assert r.channel_colors == [(0.0, 1.0, 0.0) if ch == 488 else (0.0, 0.0, 1.0)]
            expected = "0.000 1000.000" if ch == 488 else "0.000 500.000"
            assert r.metadata["DataSetInfo"]["Channel 0"]["ColorRange"] == expected
            assert all(t is None for t in r.timepoints)


def test_link_ims_links_every_level(tmp_path, rng):
    big = [rng.integers(0, 255, (4, 600, 600), dtype=np.uint8) for _ in range(2)]
    for i, a in enumerate(big):
        write_ims(tmp_path / f"b{i}.ims", a, compression=None)
    out = link_ims(tmp_path / "big.ims", [tmp_path / "b0.ims", tmp_path / "b1.ims"])
    with fastims.open(out) as r, fastims.open(tmp_path / "b1.ims") as tile:
        r.set_scene(1)
        assert r.levels == tile.levels == 2
        np.testing.assert_array_equal(r.level(1)[:], tile.level(1)[:])
    with h5py.File(out, "r") as f:
        link = f["DataSet1/ResolutionLevel 1/TimePoint 0"].get("Channel 0", getlink=True)
        assert (link.filename, link.path) == ("b1.ims", "/DataSet/ResolutionLevel 1/TimePoint 0/Channel 0")
    # a linked file as a tile, or as a conversion's input: only its first dataset is taken, with a warning
    with pytest.warns(UserWarning, match="big.ims holds 2 datasets; linking the first"):
        link_ims(tmp_path / "meta.ims", [out, tmp_path / "b0.ims"])
    with pytest.warns(UserWarning, match="big.ims holds 2 datasets; converting the first"):
        fastims.convert(out, tmp_path / "big.xml")


def test_link_ims_detects_grid_and_groups_channels(tmp_path, ims_grid):
    out = link_ims(tmp_path / "grouped.ims", split_channels=False)  # grid found in the folder
    with fastims.open(out) as r:
        assert len(r.scenes) == 6
        r.set_scene(5)  # x fastest, then y
        assert r.shape == (1, 2, *TILE)
        np.testing.assert_array_equal(r[0], np.stack([ims_grid[(ch, 2, 1)] for ch in CHANNELS]))
        assert r.channel_names == ["488", "561"]


def test_link_ims_assembles_time_points_and_channels(tmp_path, rng):
    # one file per (tile, time point), each with two channels: tiles' time points in one dataset
    data = rng.integers(0, 255, (2, 2, 2, 4, 16, 12), dtype=np.uint8)  # tile, t, c, z, y, x
    sources = []
    import datetime as dt

    for tile in range(2):
        for t in range(2):
            p = tmp_path / "tiles" / f"tile{tile}_t{t}.ims"
            p.parent.mkdir(exist_ok=True)
            write_ims(p, data[tile, t], channel_names=["dapi", "gfp"], compression=None,
                      timepoints=[dt.datetime(2024, 1, 1, 0, t)])
            sources.append(LinkSource(p, tile=tile, time=t))
    out = link_ims(tmp_path / "ts.ims", sources, split_channels=False)
    with fastims.open(out) as r:
        assert len(r.scenes) == 2
        for tile in range(2):
            r.set_scene(tile)
            assert r.shape == (2, 2, 4, 16, 12)
            np.testing.assert_array_equal(r[:], data[tile])
            assert r.channel_names == ["dapi", "gfp"]
            assert r.timepoints == [dt.datetime(2024, 1, 1, 0, 0), dt.datetime(2024, 1, 1, 0, 1)]
    with h5py.File(out, "r") as f:  # links into a subfolder stay relative
        link = f["DataSet1/ResolutionLevel 0/TimePoint 1"].get("Channel 1", getlink=True)
        assert link.filename == "tiles/tile1_t1.ims" and link.path.endswith("TimePoint 0/Channel 1")


def test_link_ims_color_table(tmp_path, ims_grid):
    table = np.linspace(0, 1, 30).reshape(10, 3)
    out = link_ims(tmp_path / "t.ims", x_tiles=1, y_tiles=1, channels=[488], color_table=table)
    with fastims.open(out) as r:
        info = r.metadata["DataSetInfo"]["Channel 0"]
        assert info["ColorMode"] == "TableColor" and info["ColorTableLength"] == "10"
        # the table's last entry, as written (3 decimals)
        assert r.channel_colors == [tuple(round(v, 3) for v in table[-1])]


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_link_ims_bad_input(tmp_path, ims_grid, rng):
    before = listing(tmp_path)
    with pytest.raises(FileNotFoundError, match=tile_name(0, 3, 488)):
        link_ims(tmp_path / "a.ims", x_tiles=2, y_tiles=4, channels=[488])
    with pytest.raises(ValueError, match="channel_colors gives 1 channel, but the tiles have 2"):
        link_ims(tmp_path / "a.ims", channel_colors=[(1, 0, 0)])
    with pytest.raises(ValueError, match="color_ranges needs 2 numbers per channel"):
        link_ims(tmp_path / "a.ims", color_ranges=[0, 1, 2])
    with pytest.raises(ValueError, match="min above its max"):
        link_ims(tmp_path / "a.ims", color_ranges=[(100, 0), (0, 5)])
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(ValueError, match=r"outside the folder .*sub.* '\.\.'"):
        link_ims(sub / "a.ims", [tmp_path / tile_name(0, 0, 488)])
    # mismatched tiles: each error names the odd file
    odd = tmp_path / "odd"
    odd.mkdir()
    write_ims(odd / "a.ims", ims_grid[(488, 0, 0)], voxel_size=VOXEL)
    write_ims(odd / "dtype.ims", ims_grid[(488, 0, 0)].astype(np.uint8), voxel_size=VOXEL)
    write_ims(odd / "shape.ims", ims_grid[(488, 0, 0)][:, :20], voxel_size=VOXEL)
    write_ims(odd / "voxel.ims", ims_grid[(488, 0, 0)], voxel_size=(1.0, 0.5, 0.5))
    for name, what in (("dtype", "data type uint8"), ("shape", r"\(Z, Y, X\) size \(6, 20, 30\)"), ("voxel", "voxel size")):
        with pytest.raises(ValueError, match=f"{name}.ims has {what}"):
            link_ims(odd / "out.ims", [odd / "a.ims", odd / f"{name}.ims"])
    with pytest.raises(ValueError, match="both give tile 0"):
        link_ims(odd / "out.ims", [LinkSource(odd / "a.ims"), LinkSource(odd / "a.ims")])
    with pytest.raises(ValueError, match=r"a.ims is given twice \(tiles 0 and 2\)"):
        link_ims(odd / "out.ims", [odd / "a.ims", odd / "dtype.ims", odd / "." / "a.ims"])
    (odd / "junk.ims").write_bytes(b"not hdf5")
    with pytest.raises(fastims.FormatError, match="junk.ims"):
        link_ims(odd / "out.ims", [odd / "a.ims", odd / "junk.ims"])
    with pytest.raises(FileNotFoundError, match="nope.ims"):
        link_ims(odd / "out.ims", [odd / "a.ims", odd / "nope.ims"])
    assert listing(odd) == ["a.ims", "dtype.ims", "junk.ims", "shape.ims", "voxel.ims"]  # nothing half-written
    assert listing(tmp_path) == sorted([*before, "odd", "sub"])
    link_ims(tmp_path / "a.ims", x_tiles=1, y_tiles=1, channels=[488])
    with pytest.raises(FileExistsError, match="a.ims exists"):
        link_ims(tmp_path / "a.ims", x_tiles=1, y_tiles=1, channels=[488])
    link_ims(tmp_path / "a.ims", x_tiles=1, y_tiles=1, channels=[561], overwrite=True)
    with fastims.open(tmp_path / "a.ims") as r:
        np.testing.assert_array_equal(r[0, 0], ims_grid[(561, 0, 0)])
    # a tile of the grid named as the output: refused, the tile untouched (it was left out of
    # the grid and replaced by the linked file)
    tile = tmp_path / tile_name(0, 0, 488)
    before = tile.read_bytes()
    with pytest.raises(ValueError, match="cannot also be one of the tiles"):
        link_ims(tile, x_tiles=2, y_tiles=3, channels=[488], overwrite=True)
    assert tile.read_bytes() == before


def test_tiles_far_from_the_stage_origin(tmp_path):
    # .ims extents are float32: tiles tens of millimetres out read their voxel size back ~5e-4
    # off, differently per tile; they were refused as mismatched
    a = np.arange(4 * 40 * 47, dtype=np.uint16).reshape(4, 40, 47)
    names = []
    for i in range(4):
        names.append(tmp_path / f"t{i}.ims")
        write_ims(names[-1], a, voxel_size=(2, 0.1625, 0.1625), origin=(1500, 12345.6, 35123.4 + 7.1 * i))
    voxels = []
    for n in names:
        with fastims.open(n) as r:
            voxels.append(r.voxel_size[2])
    assert max(voxels) - min(voxels) > 1e-5  # the premise
    out = link_ims(tmp_path / "all.ims", names)
    with fastims.open(out) as r:
        assert len(r.scenes) == 4
        np.testing.assert_array_equal(r[0, 0], a)
    (tmp_path / "bdv").mkdir()  # a tile pattern converted to BDV tiles, then linked
    xml = fastims.convert(str(tmp_path / "t{tile}.ims"), tmp_path / "bdv" / "all.xml")
    with fastims.open(xml) as r:
        np.testing.assert_array_equal(r.asarray(tile=3), a)
    # a real difference is still refused, and voxel_rtol widens the tolerance
    write_ims(tmp_path / "other.ims", a, voxel_size=(2, 0.1625, 0.17), origin=(1500, 12345.6, 35200.0))
    with pytest.raises(ValueError, match="other.ims has voxel size"):
        link_ims(tmp_path / "bad.ims", [names[0], tmp_path / "other.ims"])
    link_ims(tmp_path / "loose.ims", [names[0], tmp_path / "other.ims"], voxel_rtol=0.05)


def test_reader_refuses_links_leaving_the_folder(tmp_path, ims_grid):
    # a hand-made link with '..' (not something link_ims writes) is refused by the reader
    sub = tmp_path / "sub"
    sub.mkdir()
    out = link_ims(tmp_path / "ok.ims", x_tiles=1, y_tiles=1, channels=[488])
    bad = sub / "bad.ims"
    with h5py.File(out, "r") as src, h5py.File(bad, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy("DataSetInfo", dst)
        dst["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"] = h5py.ExternalLink(
            "../" + tile_name(0, 0, 488), "/DataSet/ResolutionLevel 0/TimePoint 0/Channel 0")
    with pytest.raises(fastims.FormatError, match="outside the dataset folder"):
        fastims.open(bad)


def test_tile_pattern():
    p = TilePattern("t_{t}_x{x:03d}_c{ch}.tif")
    # integer formats give ints; fields without one keep their text (so names round-trip)
    assert p.match("t_12_x007_cGFP.tif") == {"time": "12", "x": 7, "channel": "GFP"}
    assert p.match("t_12_x07_cGFP.tif") is None
    assert p.format(time=1, x=2, channel="RFP") == "t_1_x002_cRFP.tif"
    for bad in ("no_fields.tif", "{q}.tif", "{x:s}.tif", "{tile}_{x}.tif", "a/{x}.tif"):
        with pytest.raises(ValueError):
            TilePattern(bad)


def test_grid_sources_orders_and_reports_missing(tmp_path):
    for z in range(2):
        for x in range(3):
            (tmp_path / f"x{x}_z{z}.npy").touch()
    (tmp_path / "x9_z0_extra.npy").touch()  # does not match
    tiles = grid_sources(tmp_path, "x{x}_z{z}.npy")
    assert [(s.tile, s.grid) for s in tiles] == [(i, (z, 0, x)) for i, (z, x) in enumerate(
        [(z, x) for z in range(2) for x in range(3)])]
    (tmp_path / "x1_z1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 tile file is missing from the grid \(x1_z1.npy\)"):
        grid_sources(tmp_path, "x{x}_z{z}.npy")
    with pytest.raises(ValueError, match="no {y} field"):
        grid_sources(tmp_path, "x{x}_z{z}.npy", y_tiles=2)
    # a column missing from every row is a gap too: x = 0, 2 would place x2 next to x0
    for z in range(2):
        (tmp_path / f"x1_z{z}.npy").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"2 tile files are missing from the grid \(x1_z0.npy, x1_z1.npy\)"):
        grid_sources(tmp_path, "x{x}_z{z}.npy")
    with pytest.raises(FileNotFoundError, match=r"tile_x_0001.tif"):  # integer formats alike
        for x in (0, 2):
            (tmp_path / f"tile_x_{x:04d}.tif").touch()
        grid_sources(tmp_path, "tile_x_{x:04d}.tif")
    # numbering may start anywhere (1-based names): only the range found is the grid
    for x in (1, 2, 3):
        (tmp_path / f"p{x}.npy").touch()
    assert [s.grid for s in grid_sources(tmp_path, "p{x}.npy")] == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]


# ---------------------------------------------------------------------------------------
# BigDataViewer
# ---------------------------------------------------------------------------------------


def test_link_bdv_tiles_become_setups(tmp_path, rng):
    # 2 tiles x 2 channels, each file one view; tile 1 also split over two time-point files
    data = {}
    sources = []
    for tile in range(2):
        for ch in range(2):
            for t in range(2):
                a = rng.integers(0, 65535, (5, 24, 20), dtype=np.uint16, endpoint=True)
                data[(tile, ch, t)] = a
            if tile == 0:  # one file with both time points
                name = f"tile{tile}_ch{ch}.xml"
                write_bdv(tmp_path / name, {(t,): data[(tile, ch, t)] for t in range(2)}, voxel_size=VOXEL,
                          tile_location=(0.0, 0.0, 0.0), factors=LEVELS)
                sources.append(LinkSource(tmp_path / name, tile=tile, channel=ch, tile_name="left",
                                          channel_name=f"c{ch}"))
            else:
                for t in range(2):
                    name = f"tile{tile}_ch{ch}_t{t}.xml"
                    write_bdv(tmp_path / name, data[(tile, ch, t)], voxel_size=VOXEL,
                              tile_location=(0.0, 0.0, 9.0), factors=LEVELS)
                    sources.append(LinkSource(tmp_path / name, tile=tile, channel=ch, time=t, tile_name="right",
                                              channel_name=f"c{ch}"))
    xml = link_bdv(tmp_path / "master.xml", sources)
    assert xml == tmp_path / "master.xml" and (tmp_path / "master.h5").is_file()
    with fastims.open(xml) as r:
        assert r.shape == (2, 4, 5, 24, 20) and r.dtype == np.uint16
        for tile in range(2):
            for ch in range(2):
                sid = r.select_setup(tile=tile, channel=ch)
                assert sid == ch * 2 + tile  # BdvWriter / npy2bdv numbering
                for t in range(2):
                    np.testing.assert_array_equal(r.asarray(t=t, tile=tile, channel=ch), data[(tile, ch, t)])
                    affine = r.affine(t, sid)
                    np.testing.assert_allclose(affine[:, 3], (18.0 * tile, 0, 0))  # 9 um / 0.5 um
                    np.testing.assert_allclose(np.diag(affine[:, :3]), (1, 1, 4))
        values = r.attribute_values
        assert values["tile"][1].name == "right" and values["tile"][1].extra["location"] == "9.0 0.0 0.0"
        assert values["channel"][0].name == "c0"
        parts = r.spimdata.image_loader.partitions
        assert len(parts) == len(sources)
        remapped = next(p for p in parts if p.path.name == "tile1_ch1_t1.h5")
        assert remapped.timepoints == (1,) and remapped.timepoints_mapped == (0,)
        assert remapped.setups == (3,) and remapped.setups_mapped == (0,)
        with fastims.open(tmp_path / "tile1_ch1_t1.xml") as tile:
            np.testing.assert_array_equal(r.level(1)[1, 3], tile.level(1)[0, 0])
    with h5py.File(tmp_path / "master.h5", "r") as f:
        link = f["t00001/s03/0"].get("cells", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "tile1_ch1_t1.h5" and link.path == "/t00000/s00/0/cells"
        assert f["s03/resolutions"].shape[1] == 3
        assert "dataType" not in f["s03"].attrs  # legacy int16 storage kept legacy
    with fastims.open(tmp_path / "master.h5") as r:  # the master alone, without its XML
        np.testing.assert_array_equal(r.asarray(t=1, setup=3), data[(1, 1, 1)])


def test_link_bdv_positions_and_other_writers(tmp_path, rng):
    npy2bdv = pytest.importorskip("npy2bdv")
    stacks = [rng.integers(0, 3000, (4, 32, 16), dtype=np.uint16) for _ in range(2)]
    for i, stack in enumerate(stacks):
        w = npy2bdv.BdvWriter(str(tmp_path / f"n{i}.h5"), nchannels=1, ntiles=1, subsamp=((1, 1, 1),))
        w.append_view(stack, time=0, channel=0, tile=0, voxel_size_xyz=(0.5, 0.5, 2.0), voxel_units="um")
        w.write_xml()
        w.close()
    xml = link_bdv(tmp_path / "m.xml", [
        LinkSource(tmp_path / "n0.xml", tile=0, position=(0.0, 0.0, 0.0)),
        LinkSource(tmp_path / "n1.xml", tile=1, position=(0.0, 12.0, 0.0)),
    ])
    with fastims.open(xml) as r:
        for i in range(2):
            np.testing.assert_array_equal(r.asarray(tile=i), stacks[i])
            np.testing.assert_allclose(r.affine(0, i)[:, 3], (0, 24.0 * i, 0))
        assert r.attribute_values["tile"][1].extra["location"] == "0.0 12.0 0.0"
    # one tile keeps npy2bdv's identity registration (world unit: its anisotropic voxel), the
    # other is calibrated on the smallest voxel: the master would misplace one of them
    with pytest.warns(UserWarning, match=r"n0.xml keep their own registration, whose world unit differs .*"
                                         r"\(1 = 0.5 um\)"):
        link_bdv(tmp_path / "mixed.xml", [LinkSource(tmp_path / "n0.xml", tile=0),
                                          LinkSource(tmp_path / "n1.xml", tile=1, position=(0.0, 12.0, 0.0))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alike conventions: nothing to say
        link_bdv(tmp_path / "kept.xml", [LinkSource(tmp_path / "n0.xml", tile=0),
                                         LinkSource(tmp_path / "n1.xml", tile=1)])


def test_link_bdv_bad_input(tmp_path, rng):
    a = rng.integers(0, 100, (4, 16, 16), dtype=np.uint16)
    write_bdv(tmp_path / "a.xml", a, voxel_size=VOXEL)
    write_bdv(tmp_path / "b.xml", a.astype(np.float32), voxel_size=VOXEL, dtype_mode="typed")
    write_bdv(tmp_path / "c.xml", a, voxel_size=(1.0, 1.0, 1.0))
    before = listing(tmp_path)
    with pytest.raises(ValueError, match="b.xml has data type float32"):
        link_bdv(tmp_path / "m.xml", [tmp_path / "a.xml", tmp_path / "b.xml"])
    with pytest.raises(ValueError, match="c.xml has voxel size"):
        link_bdv(tmp_path / "m.xml", [tmp_path / "a.xml", tmp_path / "c.xml"])
    with pytest.raises(ValueError, match="both give the view"):
        link_bdv(tmp_path / "m.xml", [LinkSource(tmp_path / "a.xml"), LinkSource(tmp_path / "a.xml")])
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="outside the folder"):
        link_bdv(tmp_path / "sub" / "m.xml", [tmp_path / "a.xml"])
    assert listing(tmp_path) == sorted([*before, "sub"])


def test_cli_link_imaris_linker_options(tmp_path, ims_grid, capsys, monkeypatch):
    argv = ["link", "--path", str(tmp_path), "--filename", "linked.ims", "--x-tiles", "2", "--y_tiles", "3",
            "--z-tiles", "1", "--channels", "488", "561", "--color-range", "0", "1000", "0", "500",
            "--color", "0", "1", "0", "0", "0", "1"]
    assert main(argv) == 0
    with fastims.open(tmp_path / "linked.ims") as r:
        assert len(r.scenes) == 12
        r.set_scene(7)  # channel 561, y 0, x 1
        np.testing.assert_array_equal(r[0, 0], ims_grid[(561, 0, 1)])
        assert r.channel_colors == [(0.0, 0.0, 1.0)]
    assert main(argv) == 1
    assert "use --overwrite" in capsys.readouterr().err
    assert main([*argv[:3], "--filename", "linked.tif"]) == 1
    assert "--filename must end in .ims (Imaris) or .xml / .h5" in capsys.readouterr().err
    assert main([*argv[:3], "--filename", "linked.xml", "--group-channels"]) == 1
    assert "--group-channels apply to Imaris" in capsys.readouterr().err
    assert main([*argv[:-7], "--color", "1", "0", "0", "--overwrite"]) == 1
    assert "--color gives 1 channel, but the tiles have 2" in capsys.readouterr().err
    csv = tmp_path / "fire.csv"
    csv.write_text("0,0,0\n255,128,0\n")
    assert main([*argv[:-7], "--color-table", str(csv), "--overwrite"]) == 0
    with fastims.open(tmp_path / "linked.ims") as r:
        assert r.channel_colors == [(1.0, 0.502, 0.0)]
    # BDV tiles given as files
    write_bdv(tmp_path / "b0.xml", ims_grid[(488, 0, 0)], voxel_size=VOXEL)
    write_bdv(tmp_path / "b1.xml", ims_grid[(488, 0, 1)], voxel_size=VOXEL)
    assert main(["link", str(tmp_path / "b0.xml"), str(tmp_path / "b1.xml"), "--filename",
                 str(tmp_path / "bm.xml")]) == 0
    # tiles named relative to --path, from another folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["link", "b0.xml", "b1.xml", "--path", str(tmp_path), "--filename", "bm2.xml"]) == 0
    with fastims.open(tmp_path / "bm2.xml") as r:
        np.testing.assert_array_equal(r.asarray(tile=1), ims_grid[(488, 0, 1)])
    with fastims.open(tmp_path / "bm.xml") as r:
        np.testing.assert_array_equal(r.asarray(tile=1), ims_grid[(488, 0, 1)])


def test_link_bdv_tiles_with_data_outside_their_xml_folder(tmp_path, rng, capsys):
    # tile XMLs in xml/ naming their .h5 as ../data/t.h5; the master in the common parent
    (tmp_path / "xml").mkdir()
    (tmp_path / "data").mkdir()
    tiles = [rng.integers(0, 4000, TILE, dtype=np.uint16) for _ in range(2)]
    for i, a in enumerate(tiles):
        write_bdv(tmp_path / "data" / f"t{i}.xml", a, voxel_size=VOXEL, tile_location=(0.0, 0.0, 13.5 * i))
        text = (tmp_path / "data" / f"t{i}.xml").read_text()
        (tmp_path / "xml" / f"t{i}.xml").write_text(
            text.replace(f'<hdf5 type="relative">t{i}.h5</hdf5>', f'<hdf5 type="relative">../data/t{i}.h5</hdf5>'))
    sources = [tmp_path / "xml" / f"t{i}.xml" for i in range(2)]
    with pytest.raises(fastims.FormatError, match=r"tile .*t0.xml: .*outside the dataset folder.*pass "
                       r"allow_external_paths=True to link_bdv\(\)"):
        link_bdv(tmp_path / "m.xml", sources)
    assert not (tmp_path / "m.xml").exists() and not (tmp_path / "m.h5").exists()
    xml = link_bdv(tmp_path / "m.xml", sources, allow_external_paths=True)
    with fastims.open(xml) as r:  # the master's own links stay inside its folder
        for i in range(2):
            np.testing.assert_array_equal(r.asarray(tile=i), tiles[i])
    # the CLI names its flag
    argv = ["link", "xml/t0.xml", "xml/t1.xml", "--path", str(tmp_path), "--filename", "m2.xml"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "use --allow-external-paths to follow it" in err and "allow_external_paths" not in err
    assert main([*argv, "--allow-external-paths"]) == 0
    with fastims.open(tmp_path / "m2.xml") as r:
        np.testing.assert_array_equal(r.asarray(tile=1), tiles[1])


def test_link_ims_tile_linking_outside_its_folder(tmp_path, rng):
    # an .ims tile whose data are external links to a file outside the tile's folder
    (tmp_path / "tiles").mkdir()
    (tmp_path / "store").mkdir()
    a = rng.integers(0, 4000, TILE, dtype=np.uint16)
    write_ims(tmp_path / "store" / "full.ims", a, voxel_size=VOXEL)
    link_ims(tmp_path / "store" / "one.ims", [tmp_path / "store" / "full.ims"])
    os.replace(tmp_path / "store" / "one.ims", tmp_path / "tiles" / "one.ims")
    with h5py.File(tmp_path / "tiles" / "one.ims", "a") as f:  # re-point the links: ../store/full.ims
        links = _external_links(f)
        assert links
        for name, link in links:
            del f[name]
            f[name] = h5py.ExternalLink("../store/" + link.filename, link.path)
    with pytest.raises(fastims.FormatError, match=r"pass allow_external_paths=True to link_ims\(\)"):
        link_ims(tmp_path / "all.ims", [tmp_path / "tiles" / "one.ims"])
    out = link_ims(tmp_path / "all.ims", [tmp_path / "tiles" / "one.ims"], allow_external_paths=True)
    with fastims.open(out, allow_external_paths=True) as r:
        np.testing.assert_array_equal(r[0, 0], a)


def _external_links(group: h5py.Group, prefix: str = "") -> list[tuple[str, h5py.ExternalLink]]:
    """(path, link) of every external link below `group` (not followed)."""
    found = []
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            found.append((prefix + name, link))
        elif isinstance(link, h5py.HardLink) and isinstance(group[name], h5py.Group):
            found += _external_links(group[name], f"{prefix}{name}/")
    return found
