"""Tile patterns: one conversion per file (in turn or on a dask.distributed cluster), then a link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastims
from fastims.cli import main
from fastims.convert import convert

distributed = pytest.importorskip("distributed")

PATTERN = "tile_x{x}_y{y}_ch{ch}.npy"
TILE = (4, 24, 20)
VOXEL = (2.0, 0.5, 0.5)


@pytest.fixture
def tiles(tmp_path, rng):
    """A 2 x 2 grid in two channels of .npy tiles."""
    raw = tmp_path / "raw"
    raw.mkdir()
    data = {}
    for ch in (488, 561):
        for y in range(2):
            for x in range(2):
                a = rng.integers(0, 65535, TILE, dtype=np.uint16, endpoint=True)
                np.save(raw / PATTERN.format(x=x, y=y, ch=ch), a)
                data[(ch, y, x)] = a
    return data


@pytest.fixture(scope="module")
def client():
    # threads, not processes: quick to start, and enough to run the tasks concurrently
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def scenes_of(path):
    with fastims.open(path) as r:
        out = []
        for i in range(len(r.scenes)):
            r.set_scene(i)
            out.append((r.channel_names, r._axis_origin(0), r[:]))
        return out


@pytest.mark.parametrize("target", ["all.ims", "all.xml"])
def test_cluster_result_equals_single_process(tmp_path, tiles, client, target):
    pattern = str(tmp_path / "raw" / PATTERN)
    (tmp_path / "seq").mkdir()
    (tmp_path / "dist").mkdir()
    seen = []
    serial = convert(pattern, tmp_path / "seq" / target, voxel_size=VOXEL, overlap=0.25)
    parallel = convert(pattern, tmp_path / "dist" / target, voxel_size=VOXEL, overlap=0.25, client=client,
                       progress=lambda done, total: seen.append((done, total)))
    total = 8 * np.prod(TILE) * 2
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) == 9
    assert sorted(listing(tmp_path / "seq")) == sorted(listing(tmp_path / "dist"))
    if target == "all.ims":
        a, b = scenes_of(serial), scenes_of(parallel)
        assert len(a) == len(b) == 8
        order = [(ch, y, x) for ch in (488, 561) for y in range(2) for x in range(2)]
        for (names, origin, data), (names2, origin2, data2), (ch, y, x) in zip(a, b, order):
            assert names == names2 == [str(ch)]
            np.testing.assert_array_equal(data, data2)
            np.testing.assert_array_equal(data[0, 0], tiles[(ch, y, x)])
            # grid index x tile extent x (1 - overlap), at voxel centres
            np.testing.assert_allclose(origin, origin2)
            np.testing.assert_allclose(origin, (1.0, y * 24 * 0.5 * 0.75 + 0.25, x * 20 * 0.5 * 0.75 + 0.25))
    else:
        with fastims.open(serial) as r, fastims.open(parallel) as q:
            assert r.shape == q.shape == (1, 8, *TILE)
            np.testing.assert_array_equal(r[:], q[:])
            for s in r.setups:
                ch = (488, 561)[s.attributes["channel"]]
                y, x = divmod(s.attributes["tile"], 2)
                np.testing.assert_array_equal(r.asarray(setup=s.id), tiles[(ch, y, x)])
                np.testing.assert_allclose(r.affine(0, s.id), q.affine(0, s.id))
                np.testing.assert_allclose(r.affine(0, s.id)[:, 3], (x * 15.0, y * 18.0, 0.0))  # in 0.5 um units
            assert [v.name for v in r.attribute_values["channel"].values()] == ["488", "561"]


def test_failed_task_leaves_nothing(tmp_path, tiles, client):
    out = tmp_path / "out"
    out.mkdir()
    # a tile's output path is taken by a folder: that task fails on the cluster
    (out / "all_tile_x1_y0_ch561.ims").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        convert(str(tmp_path / "raw" / PATTERN), out / "all.ims", client=client, overwrite=True)
    assert any("tile_x1_y0_ch561.npy" in note for note in info.value.__notes__)
    assert listing(out) == ["all_tile_x1_y0_ch561.ims"]  # no tile, no link, no temporary file


def test_pattern_errors_name_the_files(tmp_path, tiles):
    raw = tmp_path / "raw"
    pattern = str(raw / PATTERN)
    (raw / PATTERN.format(x=1, y=1, ch=561)).unlink()
    with pytest.raises(FileNotFoundError, match="tile_x1_y1_ch561.npy"):
        convert(pattern, tmp_path / "a.ims")
    np.save(raw / PATTERN.format(x=1, y=1, ch=561), tiles[(561, 1, 1)][:, :10])
    with pytest.raises(ValueError, match=r"tile_x1_y1_ch561.npy has \(Z, Y, X\) size \(4, 10, 20\)"):
        convert(pattern, tmp_path / "a.ims")
    np.save(raw / PATTERN.format(x=1, y=1, ch=561), tiles[(561, 1, 1)].astype(np.uint8))
    with pytest.raises(ValueError, match="tile_x1_y1_ch561.npy has data type uint8"):
        convert(pattern, tmp_path / "a.ims")
    np.save(raw / PATTERN.format(x=1, y=1, ch=561), tiles[(561, 1, 1)])
    with pytest.raises(ValueError, match="channel_names must give 2 names"):
        convert(pattern, tmp_path / "a.ims", channel_names=["one"])
    with pytest.raises(ValueError, match="overlap must be a fraction"):
        convert(pattern, tmp_path / "a.ims", overlap=1.0)
    with pytest.raises(ValueError, match="one of client, scheduler or workers"):
        convert(pattern, tmp_path / "a.ims", scheduler="tcp://127.0.0.1:1", workers=2)
    assert listing(tmp_path) == ["raw"]


def test_scheduler_address(tmp_path, tiles, client):
    address = client.scheduler.address
    out = convert(str(tmp_path / "raw" / PATTERN), tmp_path / "s.ims", scheduler=address)
    with fastims.open(out) as r:
        r.set_scene(3)
        np.testing.assert_array_equal(r[0, 0], tiles[(488, 1, 1)])


def test_cli_local_cluster_of_processes(tmp_path, tiles, capsys):
    pattern = str(tmp_path / "raw" / PATTERN)
    assert main(["convert", pattern, str(tmp_path / "c.xml"), "--workers", "2", "--no-progress",
                 "--voxel-size", *map(str, VOXEL), "--compression", "none"]) == 0
    assert "converted" in capsys.readouterr().out
    with fastims.open(tmp_path / "c.xml") as r:
        np.testing.assert_array_equal(r.asarray(tile=3, channel=1), tiles[(561, 1, 1)])
        assert r.setups[0].voxel_size == VOXEL
    assert main(["convert", pattern, str(tmp_path / "c.xml"), "--no-progress"]) == 1
    assert "use --overwrite" in capsys.readouterr().err


def test_tiles_of_several_channels_take_one_name_per_channel(tmp_path):
    """Without a channel field, each tile's own channels are the dataset's: they take the names."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for x in range(2):
        np.save(raw / f"tile_x{x}.npy", np.full((2, 3, 8, 10), x + 1, np.uint16))  # (C, Z, Y, X)
    out = convert(str(raw / "tile_x{x}.npy"), tmp_path / "all.ims", channel_names=["GFP", "RFP"])
    # imaris-linker's layout: one dataset per (channel, tile), channel by channel
    assert [names for names, _, _ in scenes_of(out)] == [["GFP"], ["GFP"], ["RFP"], ["RFP"]]
    with pytest.raises(ValueError, match="channel_names must give 2 names"):
        convert(str(raw / "tile_x{x}.npy"), tmp_path / "one.ims", channel_names=["GFP"])
    assert not (tmp_path / "one.ims").exists()
