"""``fastims.bench``: the measuring grid on tiny frames, its report, JSON, PNG and recommendation."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from fastims.bench import BenchReport, BenchRow, _parse_codec, run_bench

SIZE = (64, 96)


def _row(codec: str, mbs: float, ratio: float, *, sustains: bool = True, workers: int = 1) -> BenchRow:
    return BenchRow(codec=codec, workers=workers, chunk_depth=None, chunks=(8, 64, 96), mb_per_s=mbs, ratio=ratio,
                    p50_ms=0.1, p99_ms=0.5, max_ms=1.0, paced=sustains, sustains=sustains, seconds=1.0,
                    file_bytes=1000)


def _report(rows: list[BenchRow], fps: float = 100.0) -> BenchReport:
    return BenchReport(fmt="ims", size=SIZE, dtype="uint16", fps=fps, frames=8, rows=rows, plain_mb_per_s=500.0,
                       deflate_ratio=2.0, out_dir="/tmp")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks.append((tag, body))
        pos += 12 + n
    return chunks


def _decode_rgb(data: bytes) -> np.ndarray:
    """Decode the filter-0 RGB PNGs the built-in rasteriser writes."""
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)
    assert not rows[:, 0].any()  # filter type 0 on every row
    return rows[:, 1:].reshape(h, w, 3)


@pytest.fixture(scope="module")
def ims_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchReport, Path, list[tuple[int, int]]]:
    disk = tmp_path_factory.mktemp("disk")
    calls: list[tuple[int, int]] = []
    report = run_bench(size=SIZE, frames=8, fps=50.0, out_dir=disk, codecs=["none", "shuffle+lz4"], workers=[1, 2],
                       progress=lambda done, total: calls.append((done, total)))
    return report, disk, calls


def test_ims_rows(ims_report):
    report, disk, calls = ims_report
    assert [r.setting for r in report.rows] == ["none w1", "none w2", "shuffle+lz4 w1", "shuffle+lz4 w2"]
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert list(disk.iterdir()) == []  # the working folder is removed
    assert report.frames == 8 and report.size == SIZE and report.dtype == "uint16"
    assert report.frame_bytes == 64 * 96 * 2
    assert report.camera_mb_per_s == pytest.approx(64 * 96 * 2 * 50 / 1e6)
    assert report.plain_mb_per_s > 0 and report.deflate_ratio > 1.0
    for r in report.rows:
        assert r.chunk_depth is None and len(r.chunks) == 3 and min(r.chunks) >= 1
        assert r.mb_per_s > 0 and r.seconds > 0 and r.file_bytes > 0
        assert r.ratio == pytest.approx(8 * report.frame_bytes / r.file_bytes, abs=1e-3)
        assert 0 <= r.p50_ms <= r.p99_ms <= r.max_ms
    by = {r.setting: r for r in report.rows}
    # same layout, so a compressing codec makes the smaller file of these noisy frames
    assert by["shuffle+lz4 w1"].file_bytes < by["none w1"].file_bytes
    # 0.6 MB/s is far below any disk: every setting keeps pace, measured at the camera's pace
    assert all(r.sustains and r.paced for r in report.rows)
    assert all(r.buffer_frames is not None and r.buffer_frames >= 0 for r in report.rows)
    assert report.recommended is not None and report.recommended.sustains


def test_json(ims_report, tmp_path):
    report, _, _ = ims_report
    path = tmp_path / "bench.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == "ims" and data["size"] == [64, 96] and data["fps"] == 50.0 and data["frames"] == 8
    assert data["recommended"] == report.recommended.setting
    assert [row["setting"] for row in data["rows"]] == [r.setting for r in report.rows]
    first = data["rows"][0]
    assert {"codec", "workers", "chunk_depth", "chunks", "mb_per_s", "ratio", "p99_ms", "sustains"} <= set(first)
    assert first["chunks"] == list(report.rows[0].chunks)
    assert data["machine"]["cpus"] >= 1


def test_table(ims_report):
    report, _, _ = ims_report
    text = report.to_table()
    lines = text.splitlines()
    assert "50 fps" in lines[1]
    rec = report.recommended
    starred = [line for line in lines if line.startswith("* ")]
    assert len(starred) == 1 and starred[0][2:].startswith(rec.codec)
    assert lines[-1].startswith(f"recommended (*): {rec.setting}")


def test_png_numpy(ims_report, tmp_path):
    report, _, _ = ims_report
    path = tmp_path / "bench.png"
    report.plot_png(path, engine="numpy")
    img = _decode_rgb(path.read_bytes())
    h, w, _ = img.shape
    assert w >= 300 and h >= 300
    colors = {tuple(c) for c in img.reshape(-1, 3)[:: 7]}
    assert (46, 160, 67) in colors  # sustaining bars
    assert (31, 119, 180) in colors  # the camera's rate line
    assert (214, 96, 77) not in colors  # no failing setting here


def test_png_auto(ims_report, tmp_path):
    report, _, _ = ims_report
    path = tmp_path / "auto.png"
    report.plot_png(path)
    chunks = _png_chunks(path.read_bytes())
    w, h = struct.unpack(">II", chunks[0][1][:8])
    assert chunks[0][0] == b"IHDR" and w > 100 and h > 100


def test_png_matplotlib(ims_report, tmp_path):
    pytest.importorskip("matplotlib")
    report, _, _ = ims_report
    path = tmp_path / "mpl.png"
    report.plot_png(path, engine="matplotlib")
    assert _png_chunks(path.read_bytes())[0][0] == b"IHDR"


def test_unreachable_rate(tmp_path):
    report = run_bench(size=SIZE, frames=4, fps=1e9, out_dir=tmp_path, codecs=["lz4"], workers=[1])
    (row,) = report.rows
    assert not row.sustains and not row.paced and row.buffer_frames is None
    assert report.recommended is None
    assert "no setting sustains" in report.to_table()
    path = tmp_path / "fail.png"
    report.plot_png(path, engine="numpy")
    colors = {tuple(c) for c in _decode_rgb(path.read_bytes()).reshape(-1, 3)}
    assert (214, 96, 77) in colors and (46, 160, 67) not in colors


def test_bdv_depths(tmp_path):
    report = run_bench(size=SIZE, frames=8, fps=50.0, fmt="bdv", out_dir=tmp_path, codecs=["gzip1"], workers=[1],
                       depths=[4, 8])
    assert [r.setting for r in report.rows] == ["gzip1 w1 d4", "gzip1 w1 d8"]
    assert [r.chunks for r in report.rows] == [(4, 64, 96), (8, 64, 96)]
    assert all(r.ratio > 1.0 for r in report.rows)  # gzip on camera-like frames


def test_recommended_rule():
    fast_big = _row("none", 1000.0, 0.9)
    near_small = _row("shuffle+lz4", 920.0, 1.5)  # within 10 %: the smaller file wins
    nearer_bigger = _row("lz4", 950.0, 1.1)
    far_smallest = _row("shuffle+gzip2", 800.0, 2.2)  # 20 % slower: not considered
    too_fast = _row("none", 5000.0, 3.0, sustains=False, workers=2)  # does not sustain: ignored
    assert _report([fast_big, near_small, nearer_bigger, far_smallest, too_fast]).recommended is near_small
    assert _report([fast_big, far_smallest]).recommended is fast_big
    assert _report([too_fast]).recommended is None
    same = _row("gzip1", 930.0, 1.5)  # equal ratio: the faster one
    assert _report([fast_big, near_small, same]).recommended is same


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("none", ("none", None, False)), ("raw", ("none", None, False)), ("gzip", ("gzip2", "gzip", False)),
     ("GZIP1", ("gzip1", "gzip", False)), ("shuffle+gzip9", ("shuffle+gzip9", "gzip", True)),
     ("lz4", ("lz4", "lz4", False)), ("shuffle+lz4", ("shuffle+lz4", "lz4", True))],
)
def test_parse_codec(spec, expected):
    c = _parse_codec(spec)
    assert (c.label, c.compression, c.shuffle) == expected


@pytest.mark.parametrize("spec", ["zstd", "gzip0", "gzip10", "shuffle+none", "gzipx"])
def test_parse_codec_rejects(spec):
    with pytest.raises(ValueError):
        _parse_codec(spec)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"fmt": "tiff"}, ValueError), ({"depths": [4]}, ValueError), ({"frames": 0}, ValueError),
     ({"fps": 0.0}, ValueError), ({"fps": float("nan")}, ValueError), ({"workers": [0]}, ValueError),
     ({"codecs": ["zstd"]}, ValueError), ({"codecs": []}, ValueError), ({"size": (64,)}, ValueError),
     ({"size": (0, 64)}, ValueError), ({"dtype": "int8"}, TypeError), ({"fps": "fast"}, TypeError)],
)
def test_validation(tmp_path, kwargs, error):
    options = {"size": SIZE, "frames": 4, "out_dir": tmp_path, "codecs": ["none"], "workers": [1], **kwargs}
    with pytest.raises(error):
        run_bench(**options)
    assert list(tmp_path.iterdir()) == []


def test_missing_out_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_bench(size=SIZE, frames=4, out_dir=tmp_path / "nope", codecs=["none"], workers=[1])
