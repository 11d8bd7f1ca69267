"""``fastims bench``: will this camera's rate be sustained on this machine, and with what settings?

:func:`run_bench` writes a short stack of realistic synthetic frames
(:class:`fastims.synthetic.SyntheticCamera`) with every setting of a small grid, on the
user's own disk, and measures for each

* the input throughput at full speed (MB/s, from creating the file to its fsync — so it is
  conservative for long acquisitions, where opening and closing are amortised);
* the compression ratio (input bytes / file bytes, pyramid included);
* the distribution of ``write_plane`` call times while frames arrive at the camera's pace
  (what blocks the acquisition loop);
* whether the setting sustains the camera's rate: its full-speed throughput reaches the
  camera's MB/s *and*, fed at the camera's pace, it kept pace — the last frame was accepted
  within 4 frame periods of its arrival (no backlog building up);
* the largest backlog of the paced run, in frames: the camera/frame-grabber buffer the
  setting needs so that no frame is lost.

A setting whose full-speed throughput is below the camera's rate cannot sustain it; its
paced run would only be back-pressured from the first slabs on, so it is skipped and the call
times of the full-speed run are reported instead (``paced=False``).

The grid: for ``.ims`` codec x workers (the chunk layout is ImarisWriter's rule, fixed by the
image size); for BDV codec x workers x level-0 chunk depth. :attr:`BenchReport.recommended`
is the fastest setting that sustains the rate, preferring the smaller file among settings
within 10 % of its throughput.

Examples
--------
>>> import tempfile
>>> report = run_bench(size=(64, 96), frames=8, codecs=["lz4"], workers=[1], fps=100.0,
...                    out_dir=tempfile.mkdtemp())
>>> [row.setting for row in report.rows]
['lz4 w1']
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import platform
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchReport", "BenchRow", "run_bench", "DEFAULT_CODECS"]

logger = logging.getLogger("fastims")

#: Codecs of the default grid, per format. BDV leaves out LZ4: Fiji cannot read it.
DEFAULT_CODECS = {
    "ims": ("none", "gzip1", "gzip2", "shuffle+gzip2", "lz4", "shuffle+lz4"),
    "bdv": ("none", "gzip1", "shuffle+gzip2"),
}
#: Level-0 chunk depths of the default BDV grid.
DEFAULT_DEPTHS = (4, 8, 16)

_CASE_BYTES = 512 << 20  # input per setting by default: 64 frames of 2048 x 2048 uint16
_BANK_BYTES = 256 << 20  # distinct frames held in memory
_DEFLATE_SAMPLE = 32 << 20  # bytes of the bank the deflate ratio is measured on
_NEAR = 0.10  # settings within 10 % of the fastest count as equally fast
_SLACK_FRAMES = 4  # backlog allowed at the end of the paced run (one stall is not a trend)


@dataclass(frozen=True)
class _Codec:
    label: str
    compression: str | None
    level: int
    shuffle: bool


def _parse_codec(spec: str) -> _Codec:
    """``none``/``raw``, ``gzip`` (level 2), ``gzip1``..``gzip9``, ``lz4``; ``shuffle+`` prefix."""
    if not isinstance(spec, str):
        raise TypeError(f"codecs are names like 'gzip1' or 'shuffle+lz4', got {spec!r}")
    text = spec.strip().lower()
    shuffle = text.startswith("shuffle+")
    name = text[len("shuffle+"):] if shuffle else text
    if name in ("none", "raw"):
        if shuffle:
            raise ValueError(f"shuffle needs a codec, got {spec!r}")
        return _Codec("none", None, 2, False)
    if name == "lz4":
        return _Codec(text, "lz4", 2, shuffle)
    if name.startswith("gzip"):
        digits = name[4:] or "2"
        if not (digits.isdigit() and 1 <= int(digits) <= 9):
            raise ValueError(f"gzip level must be 1-9, got {spec!r}")
        label = ("shuffle+" if shuffle else "") + f"gzip{int(digits)}"
        return _Codec(label, "gzip", int(digits), shuffle)
    raise ValueError(f"unknown codec {spec!r}: use none, gzip, gzip1-gzip9 or lz4, optionally 'shuffle+'")


@dataclass(frozen=True)
class BenchRow:
    """Measurements of one setting.

    Attributes
    ----------
    codec : str
        Codec label (``none``, ``gzip1``, ``shuffle+lz4``, ...).
    workers : int
        Encoding threads (``max_workers``).
    chunk_depth : int or None
        Level-0 chunk depth requested (BDV); None when the format fixes the layout (.ims).
    chunks : tuple of int
        (Z, Y, X) level-0 chunk shape written.
    mb_per_s : float
        Input MB/s at full speed, file creation to fsync.
    ratio : float
        Input bytes / file bytes (pyramid included).
    p50_ms, p99_ms, max_ms : float
        ``write_plane`` call times.
    paced : bool
        True when the call times were measured at the camera's pace; False when the setting
        is too slow for the rate and they come from the full-speed run.
    sustains : bool
        The setting sustains the camera's rate (module docstring).
    buffer_frames : int or None
        Largest number of frames that had arrived but were not yet accepted during the paced
        run (None when there was no paced run).
    seconds : float
        Wall time of the full-speed run.
    file_bytes : int
        Size of the data file.
    """

    codec: str
    workers: int
    chunk_depth: int | None
    chunks: tuple[int, int, int]
    mb_per_s: float
    ratio: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    paced: bool
    sustains: bool
    seconds: float
    file_bytes: int
    buffer_frames: int | None = None

    @property
    def setting(self) -> str:
        """Short name, e.g. ``shuffle+lz4 w2`` or ``gzip1 w1 d8``."""
        depth = "" if self.chunk_depth is None else f" d{self.chunk_depth}"
        return f"{self.codec} w{self.workers}{depth}"


@dataclass
class BenchReport:
    """Result of :func:`run_bench`.

    Attributes
    ----------
    fmt : str
        ``"ims"`` or ``"bdv"``.
    size : tuple of int
        Frame (Y, X).
    dtype : str
        Frame dtype.
    fps : float
        Camera frame rate the settings were judged against.
    frames : int
        Frames written per setting.
    rows : list of BenchRow
        One per setting, in grid order.
    plain_mb_per_s : float
        A plain sequential write + fsync of the same bytes in `out_dir`: the disk's limit.
    deflate_ratio : float
        zlib level-1 ratio of the synthetic frames' raw bytes (how compressible they are).
    out_dir : str
        Folder measured (the disk of the acquisition).
    machine : dict
        CPU count, platform, Python and fastims versions.
    """

    fmt: str
    size: tuple[int, int]
    dtype: str
    fps: float
    frames: int
    rows: list[BenchRow]
    plain_mb_per_s: float
    deflate_ratio: float
    out_dir: str
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame."""
        return self.size[0] * self.size[1] * np.dtype(self.dtype).itemsize

    @property
    def camera_mb_per_s(self) -> float:
        """The camera's data rate, MB/s."""
        return self.frame_bytes * self.fps / 1e6

    @property
    def recommended(self) -> BenchRow | None:
        """The fastest setting that sustains the rate; among those within 10 % of its
        throughput, the one with the smallest file. None when no setting sustains it."""
        ok = [r for r in self.rows if r.sustains]
        if not ok:
            return None
        best = max(r.mb_per_s for r in ok)
        near = [r for r in ok if r.mb_per_s >= (1.0 - _NEAR) * best]
        return max(near, key=lambda r: (r.ratio, r.mb_per_s))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python content (what :meth:`write_json` stores)."""
        rec = self.recommended
        return {
            "format": self.fmt,
            "size": list(self.size),
            "dtype": self.dtype,
            "fps": self.fps,
            "frames": self.frames,
            "frame_bytes": self.frame_bytes,
            "camera_mb_per_s": round(self.camera_mb_per_s, 1),
            "plain_mb_per_s": round(self.plain_mb_per_s, 1),
            "deflate_ratio": round(self.deflate_ratio, 3),
            "out_dir": self.out_dir,
            "machine": dict(self.machine),
            "rows": [{"setting": r.setting, **asdict(r), "chunks": list(r.chunks)} for r in self.rows],
            "recommended": None if rec is None else rec.setting,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as indented JSON to `path`."""
        Path(os.fspath(path)).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def to_table(self) -> str:
        """A plain-text table of the rows with the camera's rate and the recommendation."""
        rate = self.camera_mb_per_s
        ny, nx = self.size
        head = [
            f"{self.fmt}: {self.frames} frames of {ny}x{nx} {self.dtype} per setting, in {self.out_dir}",
            f"camera: {self.fps:g} fps = {rate:.0f} MB/s; plain write + fsync: {self.plain_mb_per_s:.0f} MB/s; "
            f"frames deflate (zlib 1) {self.deflate_ratio:.2f}x",
            "",
        ]
        cols = ["setting", "workers", "chunks", "MB/s", "x rate", "ratio", "p99 ms", "buffer", "sustains"]
        rec = self.recommended
        body = []
        for r in self.rows:
            body.append([
                ("* " if r is rec else "  ") + r.codec + ("" if r.chunk_depth is None else f" d{r.chunk_depth}"),
                str(r.workers),
                "x".join(str(v) for v in r.chunks),
                f"{r.mb_per_s:.0f}",
                f"{r.mb_per_s / rate:.2f}" if rate > 0 else "-",
                f"{r.ratio:.2f}",
                f"{r.p99_ms:.1f}" + ("" if r.paced else "^"),
                "-" if r.buffer_frames is None else str(r.buffer_frames),
                "yes" if r.sustains else "no",
            ])
        widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(cols)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = head + [line(cols), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
        out.append("")
        if any(not r.paced for r in self.rows):
            out.append("^ too slow for the rate: call times at full speed, not at the camera's pace")
        out.append("buffer: most frames waiting at once at the camera's pace (the camera buffer needed)")
        if rec is None:
            out.append(f"no setting sustains {self.fps:g} fps ({rate:.0f} MB/s) here")
        else:
            out.append(f"recommended (*): {rec.setting} — {rec.mb_per_s:.0f} MB/s, ratio {rec.ratio:.2f}, "
                       f"p99 {rec.p99_ms:.1f} ms")
        return "\n".join(out)

    def plot_png(self, path: str | os.PathLike, *, engine: str = "auto") -> None:
        """Bar chart of the throughput of every setting with the camera's rate as a line.

        Parameters
        ----------
        path : str or os.PathLike
            PNG file to write.
        engine : {"auto", "matplotlib", "numpy"}
            ``"auto"`` uses matplotlib when it is installed, else the built-in rasteriser
            (no dependency: bars, the rate line and minimal labels).
        """
        if engine not in ("auto", "matplotlib", "numpy"):
            raise ValueError(f"engine must be 'auto', 'matplotlib' or 'numpy', got {engine!r}")
        if engine == "auto":
            import importlib.util

            engine = "matplotlib" if importlib.util.find_spec("matplotlib") is not None else "numpy"
        if engine == "matplotlib":
            _plot_matplotlib(self, Path(os.fspath(path)))
        else:
            Path(os.fspath(path)).write_bytes(_plot_numpy(self))


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------


def _fsync(*paths: Path) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plain_write(path: Path, bank: Sequence[np.ndarray], frames: int) -> float:
    """Seconds to write `frames` frames sequentially and fsync them."""
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for i in range(frames):
            f.write(bank[i % len(bank)])
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def _deflate_ratio(bank: Sequence[np.ndarray]) -> float:
    enc = zlib.compressobj(1)
    raw = encoded = 0
    for frame in bank:
        data = np.ascontiguousarray(frame).tobytes()
        raw += len(data)
        encoded += len(enc.compress(data))
        if raw >= _DEFLATE_SAMPLE:
            break
    encoded += len(enc.flush())
    return raw / max(1, encoded)


class _Case:
    """One setting: opens the writer for it and knows its data files."""

    def __init__(self, fmt: str, codec: _Codec, workers: int, depth: int | None,
                 size: tuple[int, int], dtype: np.dtype, folder: Path) -> None:
        self.fmt, self.codec, self.workers, self.depth = fmt, codec, workers, depth
        self.size, self.dtype = size, dtype
        if fmt == "ims":
            self.data = folder / "bench.ims"
            self.files = [self.data]
        else:
            self.xml = folder / "bench.xml"
            self.data = folder / "bench.h5"
            self.files = [self.data, self.xml]
        self.chunks: tuple[int, int, int] = (0, 0, 0)

    def open(self, frames: int) -> Any:
        ny, nx = self.size
        c = self.codec
        if self.fmt == "ims":
            from fastims.ims.writer import ImsWriter

            w = ImsWriter(self.data, shape=(1, 1, frames, ny, nx), dtype=self.dtype, compression=c.compression,
                          compression_level=c.level, shuffle=c.shuffle, max_workers=self.workers, overwrite=True)
            self.chunks = tuple(w.chunks[0])  # type: ignore[assignment]
            return w
        from fastims.bdv.writer import BdvWriter

        chunks = None if self.depth is None else (self.depth, min(256, ny), min(256, nx))
        legacy = self.dtype in (np.dtype(np.uint16), np.dtype(np.int16))
        w = BdvWriter(self.xml, compression=c.compression, compression_level=c.level, shuffle=c.shuffle,
                      chunks=chunks, dtype_mode="legacy" if legacy else "typed", max_workers=self.workers,
                      overwrite=True)
        try:
            w.add_view(shape=(frames, ny, nx), dtype=self.dtype)
            self.chunks = tuple(w.levels()[0].chunks)  # type: ignore[assignment]
        except BaseException:
            _abandon(w)
            raise
        return w

    def remove(self) -> None:
        for p in self.files:
            p.unlink(missing_ok=True)


def _abandon(writer: Any) -> None:
    """Close a writer whose view could not be declared (nothing written: no data to keep)."""
    try:
        writer.close()
    except Exception:  # an empty dataset may not close cleanly; the folder is removed anyway
        logger.debug("closing an abandoned bench writer failed", exc_info=True)


def _run(case: _Case, bank: Sequence[np.ndarray], frames: int, fps: float | None) -> dict[str, Any]:
    """Write `frames` frames (paced at `fps` when given); time every call and the whole run."""
    calls = np.empty(frames)
    lag = np.zeros(frames)  # acceptance - arrival of each frame (paced runs)
    t_open = time.perf_counter()
    with case.open(frames) as w:
        t0 = time.perf_counter()
        for i in range(frames):
            start = time.perf_counter()
            if fps is not None:
                arrival = t0 + i / fps
                if start < arrival:
                    time.sleep(arrival - start)
                    start = time.perf_counter()
            w.write_plane(bank[i % len(bank)], z=i)
            done = time.perf_counter()
            calls[i] = done - start
            if fps is not None:
                lag[i] = done - arrival
    _fsync(*case.files)
    t_end = time.perf_counter()
    size = case.data.stat().st_size
    case.remove()
    return {"calls": calls, "lag": lag, "seconds": t_end - t_open, "file_bytes": size}


def _positive_ints(name: str, values: Sequence[int], *, unique: bool = True) -> tuple[int, ...]:
    """Validated positive ints, duplicates dropped (order kept) when `unique`."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be positive integers, got {list(values)!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} must not be empty")
    return tuple(dict.fromkeys(out)) if unique else tuple(out)


def run_bench(
    *,
    size: tuple[int, int] = (2048, 2048),
    dtype: Any = "uint16",
    fps: float = 100.0,
    fmt: str = "ims",
    out_dir: str | os.PathLike,
    frames: int | None = None,
    codecs: Sequence[str] | None = None,
    workers: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Measure every setting of a short grid on this machine's disk and judge it against `fps`.

    Parameters
    ----------
    size : (int, int)
        Frame (Y, X) of the camera.
    dtype : dtype-like
        Frame dtype (uint8, uint16 or float32; BDV also uint32).
    fps : float
        Camera frame rate.
    fmt : {"ims", "bdv"}
        File format.
    out_dir : str or os.PathLike
        Existing folder on the disk to measure; a temporary subfolder is created in it and
        removed at the end.
    frames : int, optional
        Frames per setting. Default: about 512 MiB of input (64 frames of 2048 x 2048
        uint16), between 16 and 256 frames. The whole default grid takes about a minute for
        2048 x 2048 uint16 on a 2-core machine.
    codecs : sequence of str, optional
        ``none``, ``gzip`` (level 2), ``gzip1``..``gzip9``, ``lz4``, each optionally prefixed
        ``shuffle+``. Default: :data:`DEFAULT_CODECS` of `fmt`.
    workers : sequence of int, optional
        Encoding thread counts. Default: 1 and the number of CPUs.
    depths : sequence of int, optional
        BDV only: level-0 chunk depths (chunks are (depth, 256, 256)). Default
        :data:`DEFAULT_DEPTHS`.
    progress : callable, optional
        Called as ``progress(done, total)`` with the number of settings measured.

    Returns
    -------
    BenchReport

    Raises
    ------
    ValueError
        For an unknown format or codec, non-positive sizes, counts or rate, or `depths`
        with ``fmt="ims"`` (ImarisWriter's rule fixes the .ims chunks).
    TypeError
        For an unsupported dtype or a non-numeric `fps`.
    FileNotFoundError
        When `out_dir` does not exist.
    OSError
        When `out_dir` has too little free space for one setting.
    """
    from fastims._dispatch import warmup
    from fastims.synthetic import SyntheticCamera

    if fmt not in ("ims", "bdv"):
        raise ValueError(f"fmt must be 'ims' or 'bdv', got {fmt!r}")
    if len(tuple(size)) != 2:
        raise ValueError(f"size must be (Y, X), got {size!r}")
    ny, nx = _positive_ints("size", size, unique=False)
    dt = np.dtype(dtype)
    if dt.name not in ("uint8", "uint16", "uint32", "float32"):
        raise TypeError(f"dtype must be uint8, uint16, uint32 or float32, got {dt}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number, got {fps!r}")
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    settings_codecs = [_parse_codec(c) for c in (DEFAULT_CODECS[fmt] if codecs is None else codecs)]
    if not settings_codecs:
        raise ValueError("codecs must not be empty")
    worker_counts = _positive_ints("workers", workers if workers is not None else sorted({1, os.cpu_count() or 1}))
    if fmt == "ims":
        if depths is not None:
            raise ValueError("depths apply to BDV only: .ims chunks follow ImarisWriter's rule for the image size")
        depth_list: tuple[int | None, ...] = (None,)
    else:
        depth_list = _positive_ints("depths", DEFAULT_DEPTHS if depths is None else depths)
    frame_bytes = ny * nx * dt.itemsize
    if frames is None:
        frames = min(256, max(16, round(_CASE_BYTES / frame_bytes)))
    elif isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    frames = int(frames)
    root = Path(os.fspath(out_dir))
    if not root.is_dir():
        raise FileNotFoundError(f"out_dir {root} is not an existing folder")
    need = int(frames * frame_bytes * 1.5) + (64 << 20)  # the largest file: raw data + pyramid
    free = shutil.disk_usage(root).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{root} has {free / 1e9:.1f} GB free, a setting needs {need / 1e9:.1f} GB")

    grid = [(c, w, d) for c in settings_codecs for w in worker_counts for d in depth_list]
    total = len(grid)
    if progress is not None:
        progress(0, total)

    warmup(dtypes=(dt.name,))
    nbank = max(1, min(16, frames, _BANK_BYTES // max(1, frame_bytes)))
    cam = SyntheticCamera((ny, nx), depth=max(frames, 2), dtype=dt, seed=1)
    bank = [cam.frame(i * frames // nbank) for i in range(nbank)]
    rate = frame_bytes * fps / 1e6
    folder = Path(tempfile.mkdtemp(prefix="fastims-bench-", dir=root))
    rows: list[BenchRow] = []
    try:
        # the first writes of a process land on fresh pages: warm the page cache path first
        _plain_write(folder / "plain.raw", bank, frames)
        plain = min(_plain_write(folder / "plain.raw", bank, frames) for _ in range(2))
        _run(_Case(fmt, grid[0][0], grid[0][1], grid[0][2], (ny, nx), dt, folder), bank,
             min(frames, 16), None)  # warm the buffer pool and kernels
        for done, (codec, nworkers, depth) in enumerate(grid, start=1):
            case = _Case(fmt, codec, nworkers, depth, (ny, nx), dt, folder)
            full = _run(case, bank, frames, None)
            mbs = frames * frame_bytes / 1e6 / full["seconds"]
            fast_enough = mbs >= rate
            sustains, calls, backlog = False, full["calls"], None
            if fast_enough:
                paced = _run(case, bank, frames, fps)
                calls, lag = paced["calls"], paced["lag"]
                sustains = lag[-1] * fps <= _SLACK_FRAMES
                # frames waiting at the worst moment: the late one plus those that arrived meanwhile
                backlog = int(math.ceil(float(lag.max()) * fps))
            p50, p99 = np.percentile(calls, [50, 99]) * 1e3
            row = BenchRow(
                codec=codec.label, workers=nworkers, chunk_depth=depth, chunks=case.chunks,
                mb_per_s=round(mbs, 1), ratio=round(frames * frame_bytes / full["file_bytes"], 3),
                p50_ms=round(float(p50), 3), p99_ms=round(float(p99), 3),
                max_ms=round(float(calls.max()) * 1e3, 3), paced=fast_enough, sustains=bool(sustains),
                seconds=round(full["seconds"], 4), file_bytes=int(full["file_bytes"]), buffer_frames=backlog,
            )
            rows.append(row)
            logger.info("bench %s: %.0f MB/s, ratio %.2f, p99 %.1f ms, sustains %s",
                        row.setting, row.mb_per_s, row.ratio, row.p99_ms, row.sustains)
            if progress is not None:
                progress(done, total)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    from fastims._version import __version__

    return BenchReport(
        fmt=fmt, size=(ny, nx), dtype=dt.name, fps=float(fps), frames=frames, rows=rows,
        plain_mb_per_s=round(frames * frame_bytes / 1e6 / plain, 1), deflate_ratio=round(_deflate_ratio(bank), 3),
        out_dir=str(root),
        machine={"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "fastims": __version__},
    )


# ---------------------------------------------------------------------------------------
# plotting: matplotlib when installed, else a tiny NumPy rasteriser + PNG encoder
# ---------------------------------------------------------------------------------------

_GREEN = (46, 160, 67)
_RED = (214, 96, 77)
_BLUE = (31, 119, 180)
_GREY = (128, 128, 128)
_BLACK = (0, 0, 0)


def _bar_colors(report: BenchReport) -> list[tuple[int, int, int]]:
    return [_GREEN if r.sustains else _RED for r in report.rows]


def _title(report: BenchReport) -> str:
    ny, nx = report.size
    return (f"fastims bench: {report.fmt}, {ny}x{nx} {report.dtype}, camera {report.fps:g} fps "
            f"= {report.camera_mb_per_s:.0f} MB/s")


def _plot_matplotlib(report: BenchReport, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(report.rows)
    fig = Figure(figsize=(max(6.0, 0.45 * n + 2.5), 4.8), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no GUI backend
    ax = fig.add_subplot()
    x = np.arange(n)
    colors = [tuple(v / 255 for v in c) for c in _bar_colors(report)]
    ax.bar(x, [r.mb_per_s for r in report.rows], color=colors, width=0.7)
    ax.axhline(report.camera_mb_per_s, color=tuple(v / 255 for v in _BLUE), linewidth=2,
               label=f"camera {report.fps:g} fps ({report.camera_mb_per_s:.0f} MB/s)")
    ax.axhline(report.plain_mb_per_s, color=tuple(v / 255 for v in _GREY), linestyle="--",
               label=f"plain write ({report.plain_mb_per_s:.0f} MB/s)")
    rec = report.recommended
    if rec is not None:
        i = report.rows.index(rec)
        ax.annotate("recommended", (i, rec.mb_per_s), xytext=(0, 4), textcoords="offset points",
                    ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([r.setting for r in report.rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("input MB/s (file creation to fsync)")
    ax.set_title(_title(report), fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png")


# 3x5 pixel glyphs: five rows of three cells, top to bottom ("#" = ink)
_FONT = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# ..# .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    " ": "... ... ... ... ...", "+": "... .#. ### .#. ...", "-": "... ... ### ... ...",
    ".": "... ... ... ... .#.", "/": "..# ..# .#. #.. #..", ":": "... .#. ... .#. ...",
    "%": "#.# ..# .#. #.. #.#", "(": "..# .#. .#. .#. ..#", ")": "#.. .#. .#. .#. #..",
    "=": "... ### ... ### ...", ",": "... ... ... .#. #..", "_": "... ... ... ... ###",
    "*": "... #.# .#. #.# ...", "?": "### ..# .#. ... .#.", "x": "... #.# .#. #.# ...",
}


def _glyph(ch: str) -> np.ndarray:
    rows = _FONT.get(ch) or _FONT.get(ch.upper()) or _FONT["?"]
    return np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)


class _Canvas:
    """An RGB image with the few drawing operations the bench plot needs."""

    def __init__(self, width: int, height: int) -> None:
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        h, w = self.img.shape[:2]
        x0, x1 = max(0, min(x0, x1)), min(w, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(h, max(y0, y1))
        if x0 < x1 and y0 < y1:
            self.img[y0:y1, x0:x1] = color

    def hline(self, x0: int, x1: int, y: int, color: tuple[int, int, int], *, width: int = 1, dash: int = 0) -> None:
        if dash <= 0:
            self.rect(x0, y, x1, y + width, color)
            return
        for x in range(x0, x1, 2 * dash):
            self.rect(x, y, min(x + dash, x1), y + width, color)

    @staticmethod
    def text_width(text: str, scale: int) -> int:
        return max(0, len(text) * 4 * scale - scale)

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int], *, scale: int = 2) -> None:
        h, w = self.img.shape[:2]
        for i, ch in enumerate(text):
            mask = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool))
            gx = x + i * 4 * scale
            ys, xs = np.nonzero(mask)
            ys, xs = ys + y, xs + gx
            keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            self.img[ys[keep], xs[keep]] = color


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag  # pragma: no cover - the loop always returns


def _png(img: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as an 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = img.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter byte 0 + pixels
    raw[:, 1:] = img.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, truecolour, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def _plot_numpy(report: BenchReport) -> bytes:
    s = 2  # glyph scale: 8 px per character, 10 px tall
    line_h = 7 * s
    rows = report.rows
    n = max(1, len(rows))
    rate, plain = report.camera_mb_per_s, report.plain_mb_per_s
    top_value = max([r.mb_per_s for r in rows] + [rate, plain, 1e-9]) * 1.1
    step = _nice_step(top_value)
    ymax = step * math.ceil(top_value / step)
    tick_labels = [f"{v:g}" for v in np.arange(0.0, ymax + step / 2, step)]
    rec = report.recommended
    legend = [f"{i + 1} {r.setting}: {r.mb_per_s:.0f} MB/s, ratio {r.ratio:.2f}, p99 {r.p99_ms:.1f} ms"
              + (" *" if r is rec else "") for i, r in enumerate(rows)]
    legend += ["", f"- camera {rate:.0f} MB/s   -- plain write {plain:.0f} MB/s   * recommended",
               "green: sustains the rate   red: does not"]
    left = 16 + _Canvas.text_width(max(tick_labels, key=len), s) + 10
    slot = 40
    plot_w, plot_h = n * slot, 320
    top = 16 + 3 * line_h
    width = max(left + plot_w + 24, 32 + max(_Canvas.text_width(t, s) for t in [_title(report), *legend]))
    height = top + plot_h + 2 * line_h + len(legend) * line_h + 16
    cv = _Canvas(width, height)
    cv.text(16, 12, _title(report), _BLACK, scale=s)
    y0 = top + plot_h  # pixel row of value 0

    def ypix(v: float) -> int:
        return int(round(y0 - v / ymax * plot_h))

    for label, v in zip(tick_labels, np.arange(0.0, ymax + step / 2, step)):
        y = ypix(float(v))
        cv.hline(left, left + plot_w, y, (230, 230, 230))
        cv.text(left - 8 - _Canvas.text_width(label, s), y - 5 * s // 2, label, _BLACK, scale=s)
    for i, (r, color) in enumerate(zip(rows, _bar_colors(report))):
        x = left + i * slot + 6
        cv.rect(x, min(ypix(r.mb_per_s), y0 - 2), x + slot - 12, y0, color)  # >= 2 px: never invisible
        idx = str(i + 1)
        cv.text(x + (slot - 12 - _Canvas.text_width(idx, s)) // 2, y0 + 6, idx, _BLACK, scale=s)
        if r is rec:
            cv.text(x + (slot - 12 - _Canvas.text_width("*", s)) // 2, ypix(r.mb_per_s) - 7 * s, "*", _BLACK, scale=s)
    cv.hline(left, left + plot_w, ypix(plain), _GREY, width=2, dash=6)
    cv.hline(left, left + plot_w, ypix(rate), _BLUE, width=3)
    cv.rect(left - 1, top, left + 1, y0 + 1, _BLACK)  # y axis
    cv.rect(left - 1, y0, left + plot_w, y0 + 2, _BLACK)  # x axis
    cv.text(16, top - 2 * line_h, "input MB/s", _BLACK, scale=s)
    for j, text in enumerate(legend):
        cv.text(16, y0 + 2 * line_h + j * line_h, text, _BLACK, scale=s)
    return _png(cv.img)
