"""End-to-end BigDataViewer streaming: 2048x2048 uint16 frames, plane by plane.

Three writers of the same 64 frames, measured in the same run:

* fastims ``BdvWriter`` with the full xyz pyramid BDV proposes for the stack ((2,2,2), (4,4,4),
  (8,8,8)), no compression or gzip (levels 1 and 4), all levels written while streaming;
* npy2bdv's virtual-stack ``append_plane`` path with its xy-only pyramid ((1,2,2), (1,4,4),
  (1,8,8): plane mode cannot downsample z) and the notebook's plane chunks (1, 256, 256), no
  compression or gzip (h5py's default level 4);
* a plain sequential write of the same bytes — the physical limit of the disk.

Every run ends with fsync of every file it wrote. Input MB/s are reported in extra_info.
"""

from __future__ import annotations

import os

import pytest

NFRAMES = 64
SHAPE = (NFRAMES, 2048, 2048)


def test_plain_write(benchmark, camera_bank, tmp_path, report, io_helpers):
    _, plain_write = io_helpers
    path = tmp_path / "plain.raw"
    benchmark.pedantic(lambda: plain_write(path, camera_bank, NFRAMES), setup=lambda: path.unlink(missing_ok=True),
                       rounds=3, iterations=1)
    report(benchmark, NFRAMES * camera_bank[0].nbytes)


@pytest.mark.parametrize(
    ("compression", "level"), [(None, 6), ("gzip", 1), ("gzip", 4)], ids=["raw", "gzip1", "gzip4"]
)
def test_fastims_xyz_pyramid(benchmark, camera_bank, tmp_path, compression, level, report, io_helpers):
    fsync, _ = io_helpers
    import fastims

    xml = tmp_path / "fastims.xml"
    h5 = tmp_path / "fastims.h5"
    levels = {}

    def run():
        with fastims.BdvWriter(xml, compression=compression, compression_level=level, overwrite=True) as w:
            w.add_view(shape=SHAPE, dtype="uint16")
            for z in range(NFRAMES):
                w.write_plane(camera_bank[z % len(camera_bank)], z=z)
            levels["factors"] = [lv.factors for lv in w.levels()]
        fsync(h5, xml)

    def setup():
        h5.unlink(missing_ok=True)
        xml.unlink(missing_ok=True)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1, warmup_rounds=1)
    nbytes = NFRAMES * camera_bank[0].nbytes
    report(benchmark, nbytes, ratio=round(nbytes / os.path.getsize(h5), 3), factors=str(levels["factors"]))


@pytest.mark.parametrize("compression", [None, "gzip"], ids=["raw", "gzip4"])
def test_npy2bdv_append_plane(benchmark, camera_bank, tmp_path, compression, report, io_helpers):
    fsync, _ = io_helpers
    npy2bdv = pytest.importorskip("npy2bdv")
    h5 = tmp_path / "npy2bdv.h5"
    xml = tmp_path / "npy2bdv.xml"

    def run():
        w = npy2bdv.BdvWriter(str(h5), subsamp=((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)),
                              blockdim=((1, 256, 256),), compression=compression, overwrite=True)
        w.append_view(stack=None, virtual_stack_dim=SHAPE)
        for z in range(NFRAMES):
            w.append_plane(camera_bank[z % len(camera_bank)], z=z)
        w.write_xml()
        w.close()
        fsync(h5, xml)

    def setup():
        h5.unlink(missing_ok=True)
        xml.unlink(missing_ok=True)

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    nbytes = NFRAMES * camera_bank[0].nbytes
    report(benchmark, nbytes, ratio=round(nbytes / os.path.getsize(h5), 3))
