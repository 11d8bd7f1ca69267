"""fastims.sources (TIFF folders, TIFF/OME-TIFF/ImageJ stacks, .npy) and converting them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastims
from fastims.cli import main
from fastims.convert import convert
from fastims.sources import NpySource, Source, TiffFolderSource, natural_key, open_source

tifffile = pytest.importorskip("tifffile")

TCZYX = (2, 2, 5, 24, 20)


@pytest.fixture
def stack(rng):
    return rng.integers(0, 65535, TCZYX, dtype=np.uint16, endpoint=True)


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_natural_key():
    names = ["z10.tif", "z2.tif", "Z1.tif", "z2b.tif"]
    assert sorted(names, key=natural_key) == ["Z1.tif", "z2.tif", "z2b.tif", "z10.tif"]


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_npy_shapes(tmp_path, stack, ndim):
    arr = stack[(0,) * (5 - ndim)]
    np.save(tmp_path / "a.npy", arr)
    with open_source(tmp_path / "a.npy") as src:
        assert isinstance(src, NpySource)
        assert src.shape == (1,) * (5 - ndim) + arr.shape
        full = arr.reshape(src.shape)
        nt, nc, nz = src.shape[:3]
        depth = min(2, nz)
        out = np.empty((depth, *src.shape[3:]), src.dtype)
        src.read(nt - 1, nc - 1, nz - depth, out)  # the last planes of the last volume
        np.testing.assert_array_equal(out, full[-1, -1, nz - depth:])
        assert src.voxel_size == (1.0, 1.0, 1.0) and src.unit is None
        with pytest.raises(ValueError, match="does not fit"):
            src.read(0, 0, nz, out)


def test_npy_errors(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(5))
    with pytest.raises(ValueError, match="1-D array"):
        open_source(tmp_path / "one.npy")
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    with pytest.raises(fastims.FormatError, match="bad.npy is not a .npy file: it does not start with NumPy's magic"):
        open_source(tmp_path / "bad.npy")
    np.savez(tmp_path / "z.npz", a=np.zeros((2, 4, 4)))
    os.replace(tmp_path / "z.npz", tmp_path / "z.npy")
    with pytest.raises(fastims.FormatError, match="z.npy is a .npz archive"):
        open_source(tmp_path / "z.npy")
    np.save(tmp_path / "cut.npy", np.zeros((4, 64, 64), np.uint16))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:5000])
    with pytest.raises(fastims.FormatError, match="cut.npy is not a readable .npy file"):
        open_source(tmp_path / "cut.npy")
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="has 2 channels, but 3 channel names"):
        open_source(tmp_path / "c.npy", channel_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="voxel_size must be 3 positive"):
        open_source(tmp_path / "c.npy", voxel_size=(1, 0, 1))
    (tmp_path / "x.raw").touch()
    with pytest.raises(ValueError, match="unknown input kind"):
        open_source(tmp_path / "x.raw")


def test_tiff_folder_natural_order_and_errors(tmp_path, stack):
    planes = stack[0, 0]
    folder = tmp_path / "planes"
    folder.mkdir()
    for z, plane in enumerate(planes):
        tifffile.imwrite(folder / f"img_z{z}.tif", plane)  # z10 would sort before z2 as text
    (folder / "notes.txt").write_text("ignored")
    with open_source(folder, voxel_size=(3.0, 0.5, 0.5)) as src:
        assert isinstance(src, TiffFolderSource) and src.chunk_depth == 1
        assert src.shape == (1, 1, 5, 24, 20) and src.voxel_size == (3.0, 0.5, 0.5) and src.unit == "um"
        np.testing.assert_array_equal(src.asarray(), planes)
    tifffile.imwrite(folder / "img_z5.tif", planes[0][:10])
    with pytest.raises(ValueError, match="img_z5.tif is 10x20 uint16, unlike img_z0.tif"):
        open_source(folder)
    (folder / "img_z5.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(fastims.FormatError, match="img_z5.tif is not a readable TIFF"):
        open_source(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .tif"):
        open_source(empty)


def test_multipage_tiff_layouts(tmp_path, stack):
    zyx = stack[0, 0]
    cases = {
        "plain.tif": dict(photometric="minisblack"),  # contiguous: memory-mapped
        "zlib.tif": dict(photometric="minisblack", compression="zlib"),  # read page by page
        "big_endian.tif": dict(photometric="minisblack", byteorder=">"),
    }
    for name, kwargs in cases.items():
        tifffile.imwrite(tmp_path / name, zyx, **kwargs)
        with open_source(tmp_path / name) as src:
            assert src.shape == (1, 1, *zyx.shape) and src.dtype == np.uint16
            np.testing.assert_array_equal(src.asarray(), zyx)
            out = np.empty((2, *zyx.shape[1:]), np.uint16)
            np.testing.assert_array_equal(src.read(0, 0, 3, out), zyx[3:5])


def test_imagej_hyperstack(tmp_path, stack):
    # ImageJ orders TZCYX; X pixel 0.5, Y pixel 0.25 (resolution is pixels per unit, x then y)
    tifffile.imwrite(tmp_path / "ij.tif", stack.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(2.0, 4.0), metadata={"axes": "TZCYX", "spacing": 3.0, "unit": "micron"})
    with open_source(tmp_path / "ij.tif") as src:
        assert src.shape == TCZYX
        assert src.voxel_size == (3.0, 0.25, 0.5) and src.unit == "um"
        for t in range(2):
            for c in range(2):
                np.testing.assert_array_equal(src.asarray(t=t, c=c), stack[t, c])


def test_ome_tiff_metadata_and_conversion(tmp_path, stack):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, ome=True, compression="zlib", metadata={
        "axes": "TCZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2000.0,
        "PhysicalSizeZUnit": "nm", "Channel": {"Name": ["GFP", "RFP"]}})
    with open_source(path) as src:
        assert src.shape == TCZYX
        assert src.voxel_size == (2.0, 0.5, 0.5) and src.unit == "um"  # nm converted to the X unit
        assert src.channel_names == ["GFP", "RFP"]
        assert src.metadata["ome"] is True and src.metadata["axes"] == "TCZYX"
    out = convert(path, tmp_path / "cells.ims")
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[:], stack)
        np.testing.assert_allclose(r.voxel_size, (2.0, 0.5, 0.5))
        assert r.channel_names == ["GFP", "RFP"] and r.unit == "um"
    xml = convert(path, tmp_path / "cells.xml", channel_names=["a", "b"])
    with fastims.open(xml) as r:
        np.testing.assert_array_equal(r[:], stack)
        assert r.channel_names == ["a", "b"]
        assert r.setups[0].voxel_size == (2.0, 0.5, 0.5)


def test_ome_tiff_in_angstrom(tmp_path, stack):
    # Å was taken for nm without its factor: voxel sizes 10x too large
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "TCZYX", "PhysicalSizeX": 5.0, "PhysicalSizeXUnit": "Å", "PhysicalSizeY": 5.0,
        "PhysicalSizeYUnit": "Å", "PhysicalSizeZ": 20.0, "PhysicalSizeZUnit": "Å"})
    with open_source(path) as src:
        assert src.voxel_size == (2.0, 0.5, 0.5) and src.unit == "nm"


def test_rgb_samples_become_channels(tmp_path, rng):
    rgb = rng.integers(0, 255, (3, 16, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="zlib")
    with open_source(tmp_path / "rgb.tif") as src:
        assert src.shape == (1, 3, 3, 16, 12)
        for c in range(3):
            np.testing.assert_array_equal(src.asarray(c=c), rgb[..., c])


def test_convert_sources_bounded_slabs(tmp_path, stack, monkeypatch):
    np.save(tmp_path / "a.npy", stack)
    plane = stack.shape[3] * stack.shape[4] * 2
    largest = []
    original = Source.read

    def spy(self, t, c, z0, out):
        largest.append(out.nbytes)
        return original(self, t, c, z0, out)

    monkeypatch.setattr(Source, "read", spy)
    limit = 8 * plane  # a quarter of it per read slab: 2 planes
    out = convert(tmp_path / "a.npy", tmp_path / "a.ims", memory_limit=limit, voxel_size=(2, 1, 1),
                  origin=(10.0, 0.0, -4.0))
    assert max(largest) <= limit // 4 and sum(largest) == stack.nbytes
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[:], stack)
        np.testing.assert_allclose(r._axis_origin(0), (11.0, 0.5, -3.5))  # voxel centres
    xml = convert(tmp_path / "a.npy", tmp_path / "a.xml", voxel_size=(2, 1, 1), origin=(10.0, 0.0, -4.0))
    with fastims.open(xml) as r:
        np.testing.assert_array_equal(r[:], stack)
        np.testing.assert_allclose(r.affine(0, 0)[:, 3], (-4.0, 0.0, 10.0))


def test_convert_source_options_are_checked(tmp_path, stack):
    np.save(tmp_path / "a.npy", stack[0, 0])
    fastims.write_ims(tmp_path / "b.ims", stack[0, 0])
    with pytest.raises(ValueError, match="voxel_size apply to TIFF and .npy inputs"):
        convert(tmp_path / "b.ims", tmp_path / "c.xml", voxel_size=(1, 1, 1))
    with pytest.raises(ValueError, match="tile pattern"):
        convert(tmp_path / "a.npy", tmp_path / "c.ims", workers=2)
    np.save(tmp_path / "i16.npy", stack[0, 0].astype(np.int16))
    with pytest.raises(TypeError, match="int16"):
        convert(tmp_path / "i16.npy", tmp_path / "c.ims")
    assert listing(tmp_path) == ["a.npy", "b.ims", "i16.npy"]


def test_tiff_without_tifffile(tmp_path, monkeypatch, stack):
    tifffile.imwrite(tmp_path / "a.tif", stack[0, 0, 0])
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(ImportError, match="pip install tifffile"):
        open_source(tmp_path / "a.tif")
    with pytest.raises(ImportError, match="pip install tifffile"):
        convert(tmp_path / "a.tif", tmp_path / "a.ims")
    np.save(tmp_path / "b.npy", stack[0, 0])  # the rest works without it
    convert(tmp_path / "b.npy", tmp_path / "b.ims")


def test_cli_convert_tiff_folder(tmp_path, stack, capsys):
    folder = tmp_path / "planes"
    folder.mkdir()
    for z, plane in enumerate(stack[0, 0]):
        tifffile.imwrite(folder / f"p{z}.tiff", plane)
    out = tmp_path / "p.ims"
    assert main(["convert", str(folder), str(out), "--no-progress", "--voxel-size", "2", "0.3", "0.3",
                 "--channel-names", "DAPI"]) == 0
    assert "converted" in capsys.readouterr().out
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[0, 0], stack[0, 0])
        np.testing.assert_allclose(r.voxel_size, (2.0, 0.3, 0.3))
        assert r.channel_names == ["DAPI"]
    with h5py.File(out, "r") as f:
        assert f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].compression == "gzip"
    (folder / "p9.tiff").write_bytes(b"MM\x00*broken")
    assert main(["convert", str(folder), str(tmp_path / "q.ims"), "--no-progress"]) == 1
    assert "p9.tiff is not a readable TIFF" in capsys.readouterr().err
    assert not (tmp_path / "q.ims").exists()


def test_damaged_compressed_tiff_is_a_format_error(tmp_path, stack):
    """A page whose deflate stream is damaged: FormatError naming the file (zlib.error escaped)."""
    import tifffile

    from fastims import FormatError
    from fastims.sources import open_source

    def damage(path, page):
        with tifffile.TiffFile(path) as t:
            off, n = t.pages[page].dataoffsets[0], t.pages[page].databytecounts[0]
        with open(path, "r+b") as fh:
            fh.seek(off + 2)
            fh.write(b"\xff" * (n - 4))

    stack = stack[0, 0]  # (Z, Y, X)
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib")
    damage(tmp_path / "stack.tif", 1)
    with open_source(tmp_path / "stack.tif") as src, pytest.raises(FormatError, match="stack.tif: reading"):
        src.read(0, 0, 0, np.empty_like(stack))
    folder = tmp_path / "planes"
    folder.mkdir()
    for z, plane in enumerate(stack):
        tifffile.imwrite(folder / f"z{z}.tif", plane, compression="zlib")
    damage(folder / "z1.tif", 0)
    with open_source(folder) as src, pytest.raises(FormatError, match="z1.tif"):
        src.read(0, 0, 0, np.empty_like(stack))


def test_tiff_with_several_series_warns_and_reads_the_first(tmp_path):
    """An OME-TIFF of two positions: only the first is converted, and that is said."""
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for value, name in ((1, "pos0"), (2, "pos1")):
            tw.write(np.full((4, 16, 16), value, np.uint16), metadata={"axes": "ZYX", "Name": name})
    with pytest.warns(UserWarning, match=r"two.ome.tif holds 2 image series \(pos0, pos1\); reading the first"):
        out = convert(path, tmp_path / "two.ims")
    with fastims.open(out) as r:
        assert r.shape == (1, 1, 4, 16, 16) and (r[:] == 1).all()
