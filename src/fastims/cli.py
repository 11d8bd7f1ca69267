"""Command-line interface: ``fastims simulate``, ``fastims --version``.

Progress bars live here only; the library logs and warns.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from fastims._version import __version__

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
    cam = SyntheticCamera((ny, nx), depth=nz, dtype=args.dtype, channels=nc, seed=args.seed)
    # a bank of frames computed up front: the camera must not be the bottleneck we measure
    nbank = min(nz, args.bank)
    bank = [[cam.frame(z * max(1, nz // nbank), c) for z in range(nbank)] for c in range(nc)]
    frame_bytes = bank[0][0].nbytes
    total = nt * nc * nz
    progress = Progress(total, "simulate", enabled=None if not args.no_progress else False)
    waits: list[float] = []
    t0 = time.perf_counter()
    with ImsWriter(
        args.out, shape=(nt, nc, nz, ny, nx), dtype=args.dtype, voxel_size=args.voxel_size,
        compression=args.compression, compression_level=args.level, shuffle=args.shuffle,
        max_workers=args.workers, overwrite=args.overwrite,
    ) as writer:
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
    print(f"wrote {args.out}: {total} frames of {ny}x{nx} {args.dtype}, {mb:.0f} MB in {elapsed:.2f} s")
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
    sim.add_argument("--level", type=int, default=2, help="gzip level (default 2)")
    sim.add_argument("--shuffle", action="store_true", help="byte-shuffle before the codec")
    sim.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 0.5, 0.5), metavar=("Z", "Y", "X"))
    sim.add_argument("--workers", type=int, default=None, help="encoding threads (default: CPUs)")
    sim.add_argument("--fps", type=float, default=None, help="pace frames like a camera at this rate")
    sim.add_argument("--camera-buffer", type=int, default=64, help="frames the camera can buffer (with --fps)")
    sim.add_argument("--bank", type=int, default=16, help="distinct synthetic frames per channel")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--overwrite", action="store_true")
    sim.add_argument("--no-progress", action="store_true")
    sim.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    for name in ("frames", "channels", "timepoints", "bank", "camera_buffer"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"fastims: error: {exc}", file=sys.stderr)
        return 1
