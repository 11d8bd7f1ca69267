"""Stream, convert, link and benchmark Imaris (.ims) and BigDataViewer files.

Commands: ``fastims simulate``, ``fastims bench``, ``fastims convert``, ``fastims link``.

Progress bars live here only; the library logs and warns.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

from fastims._version import __version__
from fastims.errors import FastimsError

__all__ = ["main"]


class Progress:
    """A minimal stderr progress bar, drawn only on a terminal."""

    def __init__(self, total: int, label: str, *, enabled: bool | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.count = 0
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1, *, extra: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and self.count < self.total):
            return
        self._last = now
        frac = self.count / self.total
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.count}/{self.total} {extra}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _size(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2048x2048 (Y x X), got {text!r}") from None
    if y < 1 or x < 1:
        raise argparse.ArgumentTypeError("size must be positive")
    return y, x


def _int_in(text: str, lo: int, hi: int | None, what: str) -> int:
    """`text` as an int in lo..hi (no upper bound for None), else the argument's error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, 1, None, "a positive integer")


def _gzip_level(text: str) -> int:
    return _int_in(text, 1, 9, "a gzip level 1-9")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _length(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction 0 <= overlap < 1, got {text!r}")
    return value


#: what a command reports as one line on stderr (exit status 1) instead of a traceback
_USER_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, MemoryError, ImportError, FastimsError)

#: library parameter -> the command's flag, for messages raised or warned by the library
_FLAGS: dict[str, dict[str, str]] = {
    "simulate": {
        "compression": "--compression", "compression_level": "--level", "max_workers": "--workers",
        "voxel_size": "--voxel-size", "overwrite": "--overwrite",
    },
    "convert": {
        "compression": "--compression", "compression_level": "--level", "max_workers": "--threads",
        "memory_limit": "--memory-limit", "voxel_size": "--voxel-size", "unit": "--unit",
        "channel_names": "--channel-names", "origin": "--origin", "overlap": "--overlap",
        "scheduler": "--scheduler", "workers": "--workers", "overwrite": "--overwrite",
        "allow_external_paths": "--allow-external-paths",
    },
    "link": {
        "x_tiles": "--x-tiles", "y_tiles": "--y-tiles", "z_tiles": "--z-tiles", "channels": "--channels",
        "channel_colors": "--color", "color_ranges": "--color-range", "color_table": "--color-table",
        "split_channels": "--group-channels", "overwrite": "--overwrite",
        "allow_external_paths": "--allow-external-paths",
    },
}


def _cli_words(text: str, flags: Mapping[str, str]) -> str:
    """`text` (a library message) with the parameters it names replaced by their flags.

    ``pass overwrite=True`` / ``open with allow_external_paths=True [to f()]`` become ``use
    --flag``; ``compression=None`` becomes ``--compression none``; a leading list of
    parameters (``voxel_size, unit apply to...``) and other snake_case names (``max_workers``)
    become flags. Plain words such as *unit* or *origin* elsewhere in a sentence stay words.
    """
    if not flags:
        return text

    def use(m: re.Match[str]) -> str:
        return f"use {flags[m.group(1)]}" if m.group(1) in flags else m.group(0)

    def assign(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2).strip("'\"")
        return f"{flags[name]} {value.lower() if value == 'None' else value}" if name in flags else m.group(0)

    def listed(m: re.Match[str]) -> str:
        names = [n.strip() for n in m.group(1).split(",")]
        if not all(n in flags for n in names):
            return m.group(0)
        return ", ".join(flags[n] for n in names) + m.group(2)

    def snake(m: re.Match[str]) -> str:
        return flags.get(m.group(0), m.group(0))

    text = re.sub(r"\b(?:pass|open with) (\w+)=True(?: to \w+\(\))?", use, text)
    text = re.sub(r"(?<![\w.-])(\w+)=(None|'[^']*'|\"[^\"]*\"|\w+)", assign, text)
    text = re.sub(r"^(\w+(?:, \w+)*)( apply to )", listed, text)
    # snake_case only: such names are not English words; not inside paths or file names
    return re.sub(r"(?<![\w./\\-])[a-z]+(?:_[a-z]+)+(?![\w/\\-]|\.\w)", snake, text)


def _report(exc: BaseException, flags: Mapping[str, str] | None = None) -> int:
    """Print `exc` as the CLI's one-line error, in the CLI's words; return the exit status."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    if notes:
        text += " (" + "; ".join(notes) + ")"
    print(f"fastims: error: {_cli_words(text, {'overwrite': '--overwrite', **(flags or {})})}", file=sys.stderr)
    return 1


def _warning_printer(flags: Mapping[str, str]) -> object:
    """A :func:`warnings.showwarning` printing ``fastims: warning: ...`` in the CLI's words
    (not the library's file and line, which mean nothing to a command-line user)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        print(f"fastims: warning: {_cli_words(str(message), flags)}", file=sys.stderr)

    return show


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the frame rate must be a positive number, got {text!r}")
    return value


def _compression(text: str) -> str | None:
    value = text.lower()
    if value in ("none", "raw", "off"):
        return None
    if value not in ("gzip", "lz4"):
        raise argparse.ArgumentTypeError(f"compression must be none, gzip or lz4, got {text!r}")
    return value


def _cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from fastims.ims.writer import ImsWriter
    from fastims.synthetic import SyntheticCamera

    ny, nx = args.size
    nt, nc, nz = args.timepoints, args.channels, args.frames
    if not args.out.lower().endswith(".ims"):
        raise ValueError(f"simulate writes an Imaris file: OUT must end in .ims, got {args.out!r}")
    _check_level(args)
    level = {} if args.level is None else {"compression_level": args.level}
    cam = SyntheticCamera((ny, nx), depth=nz, dtype=args.dtype, channels=nc, seed=args.seed)
    # a bank of frames computed up front: the camera must not be the bottleneck we measure
    nbank = min(nz, args.bank)
    bank = [[cam.frame(z * max(1, nz // nbank), c) for z in range(nbank)] for c in range(nc)]
    frame_bytes = bank[0][0].nbytes
    total = nt * nc * nz
    progress = Progress(total, "simulate", enabled=None if not args.no_progress else False)
    waits: list[float] = []
    opening = time.perf_counter()
    with ImsWriter(
        args.out, shape=(nt, nc, nz, ny, nx), dtype=args.dtype, voxel_size=args.voxel_size,
        compression=args.compression, shuffle=args.shuffle, max_workers=args.workers,
        overwrite=args.overwrite, **level,
    ) as writer:
        # the camera starts once the file is open, as in an acquisition (opening faults in
        # the writer's buffers: ~0.5 s for a 2048 x 2048 stack)
        t0 = time.perf_counter()
        i = 0
        for t in range(nt):
            for z in range(nz):
                for c in range(nc):  # acquisition order: z-major, channels interleaved
                    if args.fps:
                        arrival = t0 + i / args.fps
                        now = time.perf_counter()
                        if now < arrival:
                            time.sleep(arrival - now)
                            now = arrival
                        waits.append(now - arrival)
                    writer.write_plane(bank[c][z % nbank], t=t, c=c, z=z)
                    i += 1
                    progress.update(extra=f"{i * frame_bytes / 1e6 / max(1e-9, time.perf_counter() - t0):.0f} MB/s")
    elapsed = time.perf_counter() - t0
    progress.close()
    size = os.path.getsize(args.out)
    mb = total * frame_bytes / 1e6
    print(f"wrote {args.out}: {total} frames of {ny}x{nx} {args.dtype}, {mb:.0f} MB in {elapsed:.2f} s "
          f"(writer opened in {t0 - opening:.2f} s before the first frame)")
    print(f"throughput: {mb / elapsed:.0f} MB/s ({total / elapsed:.1f} frames/s); file {size / 1e6:.0f} MB, "
          f"ratio {total * frame_bytes / max(1, size):.2f}")
    if args.fps:
        # a frame is lost when more than the camera's buffer of newer frames arrived before we took it
        limit = args.camera_buffer / args.fps
        dropped = int(np.count_nonzero(np.asarray(waits) > limit))
        rate = args.fps * frame_bytes / 1e6
        print(f"camera at {args.fps:g} fps ({rate:.0f} MB/s, buffer {args.camera_buffer} frames): "
              f"{dropped} of {total} frames would have been dropped")
    return 0


_BYTE_UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}


def _byte_size(text: str) -> int:
    """``2GB``, ``512MiB``, ``1.5G`` or a plain number of bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if m is None or m.group(2) not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size like 2GB, 512MiB or 1000000, got {text!r}")
    value = int(float(m.group(1)) * _BYTE_UNITS[m.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte, got {text!r}")
    return value


def _check_level(args: argparse.Namespace) -> None:
    """--level is the gzip level: refuse it with another codec rather than ignore it."""
    if args.level is not None and args.compression != "gzip":
        codec = "none" if args.compression is None else args.compression
        args.command_parser.error(
            f"--level sets the gzip level; --compression {codec} has no level (use --compression gzip, "
            "or leave out --level)"
        )


def _cmd_convert(args: argparse.Namespace) -> int:
    import math

    from fastims.convert import convert

    bar: Progress | None = None
    seen = [0, 0]  # bytes done, total
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal bar
        seen[:] = [done, total]
        if bar is None:
            bar = Progress(math.ceil(total / 1e6), "convert", enabled=False if args.no_progress else None)
        rate = done / 1e6 / max(1e-9, time.perf_counter() - t0)
        bar.update(math.ceil(done / 1e6) - bar.count, extra=f"{rate:.0f} MB/s")

    from fastims.link import is_pattern

    tiles = is_pattern(args.input)
    _check_level(args)
    if args.overlap and not tiles:
        args.command_parser.error("--overlap places the tiles of a tile pattern (e.g. 'raw/tile_{x}_{y}.tif'); "
                                  f"{args.input!r} is a single input")
    # --workers: processes of a local cluster for tile patterns, else encoding threads
    threads = args.threads if args.threads is not None else (None if tiles else args.workers)
    cluster = {}
    if tiles:
        cluster = {"scheduler": args.scheduler,
                   "workers": args.workers if args.scheduler is None else None}
    elif args.scheduler is not None:
        print("fastims: error: --scheduler needs a tile pattern as input (e.g. 'raw/tile_{x}_{y}.tif')",
              file=sys.stderr)
        return 1
    extra = {k: v for k, v in (("voxel_size", args.voxel_size), ("unit", args.unit),
                                ("channel_names", args.channel_names), ("origin", args.origin))
             if v is not None}
    if args.overlap:
        extra["overlap"] = args.overlap
    if args.allow_external_paths:
        extra["allow_external_paths"] = True
    # the library's messages name max_workers: the flag that set it
    flags = {**_FLAGS["convert"], "max_workers": "--threads" if args.threads is not None else "--workers"}
    try:
        out = convert(
            args.input, args.output, compression=args.compression, compression_level=args.level,
            shuffle=args.shuffle, max_workers=threads, memory_limit=args.memory_limit,
            overwrite=args.overwrite, progress=report, **extra, **cluster,
        )
    except _USER_ERRORS as exc:
        if bar is not None:
            bar.close()
        return _report(exc, flags)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("fastims: interrupted; no output was written", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    from fastims.bdv.writer import pair_paths

    files = {out} if out.suffix.lower() == ".ims" else set(pair_paths(args.output))
    if tiles:  # the linked file is tiny: count the tiles written beside it
        files |= {p for p in out.parent.glob(f"{out.stem}_*") if p.suffix.lower() in (".ims", ".h5", ".xml")}
    size = sum(p.stat().st_size for p in files if p.exists())
    mb = seen[1] / 1e6
    print(f"converted {args.input} -> {out}: {mb:.1f} MB in {elapsed:.2f} s "
          f"({mb / max(elapsed, 1e-9):.0f} MB/s), output {size / 1e6:.1f} MB")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from fastims.bench import run_bench

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fastims-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    bar: Progress | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(total, "bench", enabled=None if not args.no_progress else False)
        bar.update(done - bar.count)

    try:
        report = run_bench(size=args.size, dtype=args.dtype, fps=args.fps, fmt=args.format, out_dir=out,
                           frames=args.frames, progress=progress)
    except BaseException:
        if not args.out:  # the temporary folder holds nothing worth keeping
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    print(report.to_table())  # ends with the recommended setting, or says that none sustains the rate
    report.write_json(out / "bench.json")
    report.plot_png(out / "bench.png")
    print(f"results: {out / 'bench.json'}, plot: {out / 'bench.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastims", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastims {__version__}")
    sub = parser.add_subparsers(dest="command")

    sim = sub.add_parser("simulate", help="stream a synthetic camera into an .ims file and report throughput")
    sim.add_argument("out", help="output .ims file")
    sim.add_argument("--frames", type=int, default=128, help="planes per stack (Z), default 128")
    sim.add_argument("--size", type=_size, default=(2048, 2048), help="frame size YxX, default 2048x2048")
    sim.add_argument("--dtype", default="uint16", choices=["uint8", "uint16", "float32"])
    sim.add_argument("--channels", type=int, default=2)
    sim.add_argument("--timepoints", type=int, default=1)
    sim.add_argument("--compression", type=_compression, default="lz4", help="none, gzip or lz4 (default)")
    sim.add_argument("--level", type=_gzip_level, default=None,
                     help="gzip level 1-9 (default 2); only with --compression gzip (LZ4 has no level)")
    sim.add_argument("--shuffle", action="store_true", help="byte-shuffle before the codec")
    sim.add_argument("--voxel-size", type=_length, nargs=3, default=(1.0, 0.5, 0.5), metavar=("Z", "Y", "X"))
    sim.add_argument("--workers", type=_positive_int, default=None, help="encoding threads (default: CPUs)")
    sim.add_argument("--fps", type=_rate, default=None, help="pace frames like a camera at this rate")
    sim.add_argument("--camera-buffer", type=int, default=64, help="frames the camera can buffer (with --fps)")
    sim.add_argument("--bank", type=int, default=16, help="distinct synthetic frames per channel")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--overwrite", action="store_true")
    sim.add_argument("--no-progress", action="store_true")
    sim.set_defaults(func=_cmd_simulate)

    bench = sub.add_parser("bench", help="measure codec x workers settings on this disk against a camera rate")
    bench.add_argument("--size", type=_size, default=(2048, 2048), help="frame size YxX, default 2048x2048")
    bench.add_argument("--dtype", default="uint16", choices=["uint8", "uint16", "float32"])
    bench.add_argument("--fps", type=_rate, default=100.0, help="camera frame rate (default 100)")
    bench.add_argument("--format", default="ims", choices=["ims", "bdv"])
    bench.add_argument("--frames", type=int, default=None, help="frames per setting (default ~512 MiB)")
    bench.add_argument("--out", default=None, help="folder for bench.json and bench.png (default: a temp dir)")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=_cmd_bench)

    conv = sub.add_parser("convert", help="convert images to .ims or BigDataViewer (.xml/.h5), pyramid regenerated")
    conv.add_argument("input", help="source: .ims, BDV .xml/.h5, a folder of 2-D TIFFs, .tif/.ome.tif, .npy, "
                                    "or a tile pattern such as 'raw/tile_x_{x:04d}_y_{y:04d}_ch_{ch}.tif' "
                                    "(one output per file, then a linked file)")
    conv.add_argument("output", help="target: .ims (Imaris) or .xml/.h5 (BigDataViewer)")
    conv.add_argument("--compression", type=_compression, default="gzip", help="none, gzip (default) or lz4")
    conv.add_argument("--level", type=_gzip_level, default=None,
                      help="gzip level 1-9 (default 2); only with --compression gzip")
    conv.add_argument("--shuffle", action="store_true", help="byte-shuffle before the codec")
    conv.add_argument("--workers", type=_positive_int, default=None,
                      help="encoding threads (default: CPUs); with a tile pattern: worker processes of a "
                           "local dask cluster converting files in parallel")
    conv.add_argument("--threads", type=_positive_int, default=None, help="encoding threads per file (default: CPUs, "
                                                                  "shared among --workers)")
    conv.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="tile patterns: convert on this dask scheduler (e.g. tcp://host:8786)")
    conv.add_argument("--voxel-size", type=_length, nargs=3, default=None, metavar=("Z", "Y", "X"),
                      help="TIFF/.npy inputs: voxel size (overrides the file's metadata)")
    conv.add_argument("--unit", default=None, help="TIFF/.npy inputs: unit of --voxel-size (default um)")
    conv.add_argument("--channel-names", nargs="+", default=None, metavar="NAME",
                      help="TIFF/.npy inputs: one name per channel")
    conv.add_argument("--origin", type=_finite, nargs=3, default=None, metavar=("Z", "Y", "X"),
                      help="TIFF/.npy inputs: position of the first voxel's corner")
    conv.add_argument("--overlap", type=_fraction, default=0.0,
                      help="tile patterns of TIFF/.npy tiles: overlap fraction of neighbouring grid tiles")
    conv.add_argument("--memory-limit", type=_byte_size, default=None, metavar="BYTES",
                      help="bytes in flight, e.g. 2GB or 512MiB (default: 512 MiB or an eighth of RAM, whichever is smaller)")
    conv.add_argument("--overwrite", action="store_true", help="replace existing output files")
    conv.add_argument("--allow-external-paths", action="store_true",
                      help=".ims/BDV inputs: follow paths leaving the input's folder (a BDV <hdf5> that is "
                           "absolute or ../data/d.h5, partitions, HDF5 external links)")
    conv.add_argument("--no-progress", action="store_true")
    conv.set_defaults(func=_cmd_convert)

    link = sub.add_parser(
        "link", help="link tiles into one .ims (imaris-linker layout) or BDV .xml/.h5, without copying data",
        description="Link tile files into one dataset through HDF5 external links (relative paths). "
                    "Tiles are the TILES given, or the grid --pattern names in --path.")
    link.add_argument("tiles", nargs="*",
                      help="tile files in order, relative to --path (default: the grid of --pattern in --path)")
    link.add_argument("--path", default=".", help="folder of the tiles (default: the current folder)")
    link.add_argument("--filename", required=True,
                      help="linked file, relative to --path: .ims (Imaris) or .xml/.h5 (BigDataViewer)")
    link.add_argument("--pattern", default=None,
                      help="tile file names (default tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.ims, or .xml for BDV)")
    for axis in "xyz":
        link.add_argument(f"--{axis}-tiles", f"--{axis}_tiles", type=_positive_int, default=None, dest=f"{axis}_tiles",
                          help=f"tiles along {axis} (default: as many as the folder holds)")
    # dest differs from simulate's --channels count, which main() checks as an int
    link.add_argument("--channels", nargs="+", default=None, dest="channel_labels",
                      help="channel labels in the names, e.g. 488 561")
    link.add_argument("--color-range", "--color_range", type=float, nargs="+", default=None, dest="color_range",
                      metavar="V", help="Imaris: min max per channel")
    link.add_argument("--color", type=float, nargs="+", default=None, metavar="V",
                      help="Imaris: r g b (0-1) per channel")
    link.add_argument("--color-table", "--color_table", default=None, dest="color_table", metavar="CSV",
                      help="Imaris: colour table, a CSV of r,g,b rows (0-255 or 0-1) for every channel")
    link.add_argument("--group-channels", action="store_true",
                      help="Imaris: one dataset per tile with all its channels (default: one per channel, as imaris-linker)")
    link.add_argument("--overwrite", action="store_true", help="replace an existing linked file")
    link.add_argument("--allow-external-paths", action="store_true",
                      help="read tiles whose data or links leave the tile's folder (e.g. a BDV <hdf5> "
                           "of ../data/t.h5); the linked file's own links stay relative, inside --path")
    link.set_defaults(func=_cmd_link)
    for name, command in sub.choices.items():  # option errors print the command's own usage
        command.set_defaults(command_parser=command, flags=_FLAGS.get(name, {}))
    return parser


def _cmd_link(args: argparse.Namespace) -> int:
    from fastims.link import (
        DEFAULT_BDV_PATTERN,
        DEFAULT_IMS_PATTERN,
        link_bdv,
        link_ims,
    )

    folder = args.path
    out = args.filename if os.path.isabs(args.filename) else os.path.join(folder, args.filename)
    imaris = out.lower().endswith(".ims")
    if not imaris and not out.lower().endswith((".xml", ".h5")):
        return _report(ValueError(f"--filename must end in .ims (Imaris) or .xml / .h5 (BigDataViewer), got {args.filename!r}"))
    grid = {"x_tiles": args.x_tiles, "y_tiles": args.y_tiles, "z_tiles": args.z_tiles,
            "channels": args.channel_labels}
    try:
        if not imaris and (args.color is not None or args.color_range is not None or args.color_table is not None
                           or args.group_channels):
            raise ValueError("--color, --color-range, --color-table and --group-channels apply to Imaris (.ims) outputs")
        if args.tiles:
            if any(v is not None for v in grid.values()) or args.pattern is not None:
                raise ValueError("give tile files or a grid (--pattern, --x-tiles...), not both")
            # relative to --path, like --filename and the grid (the help says so)
            kwargs: dict = {"sources": [t if os.path.isabs(t) else os.path.join(folder, t) for t in args.tiles]}
        else:
            pattern = args.pattern or (DEFAULT_IMS_PATTERN if imaris else DEFAULT_BDV_PATTERN)
            kwargs = {"folder": folder, "pattern": pattern, **grid}
        if imaris:
            table = None
            if args.color_table is not None:
                import numpy as np

                table = np.loadtxt(args.color_table, delimiter=",", ndmin=2)
                if table.size and table.max() > 1.0:
                    table = table / 255.0  # imaris-linker's CSV tables are 0-255
            result = link_ims(out, **kwargs, channel_colors=args.color, color_ranges=args.color_range,
                              color_table=table, split_channels=not args.group_channels,
                              overwrite=args.overwrite, allow_external_paths=args.allow_external_paths)
        else:
            result = link_bdv(out, **kwargs, overwrite=args.overwrite,
                              allow_external_paths=args.allow_external_paths)
    except _USER_ERRORS as exc:
        return _report(exc, args.flags)
    print(f"linked -> {result}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    for name in ("frames", "channels", "timepoints", "bank", "camera_buffer"):
        value = getattr(args, name, None)  # None: not an option of this command, or its default is computed
        if value is not None and value < 1:
            args.command_parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if getattr(args, "seed", 0) < 0:
        args.command_parser.error("--seed must be >= 0")
    with warnings.catch_warnings():  # restores showwarning when main() returns (tests call it)
        warnings.showwarning = _warning_printer(args.flags)  # type: ignore[assignment]
        try:
            return args.func(args)
        except _USER_ERRORS as exc:
            return _report(exc, args.flags)
        except KeyboardInterrupt:
            print("fastims: interrupted", file=sys.stderr)
            return 130
