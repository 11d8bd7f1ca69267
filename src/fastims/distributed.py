"""Convert tiles and time points in parallel, then link them: :func:`convert_tiles`.

HDF5 files have a single writer, so the unit of parallel work is one output file: every
input file of a tile pattern (one tile, channel or time point) is converted by one task —
in this process one after the other, or on a ``dask.distributed`` cluster (an existing
``Client``, a scheduler address, or a ``LocalCluster`` started for the run) — and the
outputs are then linked into one dataset with :func:`fastims.link.link_ims` or
:func:`fastims.link.link_bdv`.

Everything that can be checked before converting is: the grid is complete, every tile is
readable and the tiles agree in size, data type and voxel size, no output exists (unless
overwriting). If a task fails, the other tasks are cancelled (running ones finish), every
tile file of the run is removed and the error, naming its input, is raised: a failed run
leaves nothing behind.

``distributed`` is optional (``pip install distributed`` or ``fastims[distributed]``); the
workers must see the same paths as the caller (a shared file system).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastims.link import (
    _RTOL,
    LinkSource,
    TilePattern,
    _float32_extent_rtol,
    _Geometry,
    grid_sources,
    link_bdv,
    link_ims,
)

__all__ = ["convert_tiles", "get_client"]

logger = logging.getLogger("fastims")

_STRIP_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".npy", ".ims", ".xml", ".h5", ".hdf5")


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    lower = name.lower()
    for suffix in _STRIP_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def get_client(
    client: Any = None, scheduler: str | None = None, workers: int | None = None
) -> tuple[Any, list[Any]]:
    """The ``dask.distributed.Client`` to run on, and what to close afterwards.

    Parameters
    ----------
    client : dask.distributed.Client, optional
        Used as is (not closed).
    scheduler : str, optional
        Address of a running scheduler to connect to.
    workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker processes.

    Returns
    -------
    (Client, list)
        The client and the objects to ``close()`` when done (in order).

    Raises
    ------
    ImportError
        If ``distributed`` is not installed.
    ValueError
        If more than one of the three is given, or `workers` is not positive.
    """
    given = [name for name, v in (("client", client), ("scheduler", scheduler), ("workers", workers))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of client, scheduler or workers, not {' and '.join(given)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError(
            "converting on a cluster needs dask.distributed, an optional dependency: "
            "pip install distributed (or pip install 'fastims[distributed]')"
        ) from None
    if client is not None:
        return client, []
    if scheduler is not None:
        c = Client(scheduler)
        return c, [c]
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    try:
        c = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return c, [c, cluster]


def _convert_task(src: str, dst: str, options: dict[str, Any], abort: str | None = None) -> str | None:
    """One tile: runs on a worker (top level, so it pickles by reference).

    A task not yet started when another failed finds the run's `abort` event set and skips
    its file (``None``); a running one cannot be interrupted and completes it.
    """
    from fastims.convert import convert

    if abort is not None:
        from distributed import Event

        if Event(abort).is_set():
            return None
    return str(convert(src, dst, **options))


def _outputs_of(path: Path, target: str) -> list[Path]:
    if target == "ims":
        return [path]
    from fastims.bdv.writer import pair_paths

    return list(pair_paths(path))


def convert_tiles(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overlap: float = 0.0,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    channel_names: Sequence[str] | None = None,
    origin: Sequence[float] | None = None,
    memory_limit: int | None = None,
    allow_external_paths: bool = False,
    max_workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Path:
    """Convert the files of a tile pattern, one output per file, and link the outputs.

    Called by :func:`fastims.convert.convert` for a `src` with fields; see it for the
    options. Tile outputs are written beside `dst` as ``{dst stem}_{input stem}`` with the
    target's extension.

    Parameters
    ----------
    src : str
        Folder and pattern, e.g. ``"raw/tile_x_{x:04d}_y_{y:04d}_ch_{ch}.tif"``.
    dst : path-like
        The linked ``.ims`` or BDV ``.xml`` / ``.h5``.
    client, scheduler, workers
        Where to run (see :func:`get_client`); none of them: in this process, in turn.
    overlap : float
        Fraction by which neighbouring TIFF / ``.npy`` tiles of an ``{x}``/``{y}``/``{z}``
        grid overlap (their positions: grid index x extent x (1 - overlap)).
    voxel_size, unit, channel_names, origin
        For TIFF / ``.npy`` tiles (`channel_names`: one per channel of the linked dataset).
    allow_external_paths : bool
        For .ims and BDV tiles: follow data and links that leave a tile's folder (checked
        here and passed to each tile's conversion).
    memory_limit, max_workers, overwrite, progress, **options
        As for :func:`~fastims.convert.convert`, per tile. `max_workers` defaults, on a
        ``LocalCluster``, to the CPUs divided among the workers.

    Returns
    -------
    pathlib.Path
        The linked file (``.ims`` or the BDV ``.xml``).
    """
    from fastims.convert import _open_input, _outputs, _source_options

    text = os.fspath(src)
    folder = Path(os.path.dirname(text.rstrip("/" + os.sep)) or ".")
    pattern = TilePattern(os.path.basename(text.rstrip("/" + os.sep)))
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap < 1.0):
        raise ValueError(f"overlap must be a fraction 0 <= overlap < 1, got {overlap!r}")
    entries = grid_sources(folder, pattern)
    target, finals = _outputs(dst)
    if finals[0].parent.is_dir() is False:
        raise FileNotFoundError(f"output folder {finals[0].parent} does not exist")
    suffix = ".ims" if target == "ims" else ".xml"
    tile_paths = [finals[0].with_name(f"{finals[0].stem}_{_stem(e.path)}{suffix}") for e in entries]
    if len(set(tile_paths)) != len(tile_paths):
        raise ValueError(f"the inputs of {pattern.pattern!r} do not have distinct names")
    produced = [p for tp in tile_paths for p in _outputs_of(tp, target)]
    for p in [*finals, *produced]:
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    inputs = {os.path.normpath(os.path.abspath(e.path)) for e in entries}
    clash = [p for p in [*finals, *produced] if str(p) in inputs]
    if clash:
        raise ValueError(f"output {clash[0]} would overwrite an input")

    # every tile readable and alike before any work (a failure names the file)
    nchannels = 1 + max(e.channel for e in entries)  # channels named by the pattern's field
    if channel_names is not None:
        if isinstance(channel_names, str):
            raise ValueError(f"channel_names must be a sequence of names, got {channel_names!r}")
        names = list(channel_names)
    tasks: list[tuple[str, str, dict[str, Any]]] = []
    sizes: list[int] = []
    first: _Geometry | None = None
    voxel_rtol = _RTOL  # and the .ims inputs' float32 uncertainty, which their outputs inherit
    for entry, out in zip(entries, tile_paths):
        base = _source_options(entry.path, voxel_size=voxel_size, unit=unit, channel_names=None,
                               origin=origin, memory_limit=memory_limit)
        external = allow_external_paths and base is None  # TIFF / .npy tiles have no links
        with _open_input(entry.path, base, allow_external_paths=external) as reader:
            shape, dtype = tuple(reader.shape), reader.dtype
            vox, vunit = tuple(reader.voxel_size), reader.unit
            tile_origin = getattr(reader, "origin", None)
            meta = getattr(reader, "metadata", None)  # .ims: extents stored as float32
            image = meta.get("DataSetInfo", {}).get("Image", {}) if isinstance(meta, dict) else {}
        geometry = _Geometry(entry.path, shape[2:], dtype, vox, vunit, 1, _float32_extent_rtol(image))
        if first is None:
            first = geometry
        else:
            first.check(geometry)
        voxel_rtol = max(voxel_rtol, *(2 * t for t in geometry.rtol))
        sizes.append(math.prod(shape) * dtype.itemsize)
        task_options = dict(options, memory_limit=memory_limit, max_workers=max_workers,
                            overwrite=overwrite)
        if base is not None:  # TIFF / .npy: placement and names are ours to give
            task_options.update(voxel_size=voxel_size, unit=unit, origin=_place(
                tile_origin or (0.0, 0.0, 0.0), entry.grid, shape[2:], vox, overlap))
            nc = shape[1]
            if channel_names is not None:
                # without a channel field, a tile's own channels are the dataset's channels
                want = nc if nchannels == 1 else nchannels
                if len(names) != want:
                    raise ValueError(f"channel_names must give {want} names (one per channel), got {channel_names!r}")
                task_options["channel_names"] = names if nchannels == 1 else names[entry.channel : entry.channel + nc]
            elif entry.channel_name is not None and nc == 1:
                task_options["channel_names"] = [entry.channel_name]
        elif overlap:
            logger.info("%s keeps its own position; overlap applies to TIFF and .npy tiles", entry.path.name)
        if external:
            task_options["allow_external_paths"] = True
        tasks.append((str(entry.path), str(out), task_options))

    token = secrets.token_hex(4)
    try:
        _run(tasks, sizes, client=client, scheduler=scheduler, workers=workers, progress=progress,
             token=token)
        linked = [
            LinkSource(out, tile=e.tile, channel=e.channel, time=e.time, tile_name=e.tile_name,
                       channel_name=e.channel_name)
            for e, out in zip(entries, tile_paths)
        ]
        if target == "ims":
            return link_ims(finals[0], linked, voxel_rtol=voxel_rtol, overwrite=overwrite)
        return link_bdv(finals[0], linked, voxel_rtol=voxel_rtol, overwrite=overwrite)
    except BaseException:
        for p in produced:
            if p.is_dir():
                continue  # not ours (it made a task fail)
            try:
                p.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - best effort while failing
                logger.warning("could not remove %s", p, exc_info=True)
        raise


def _place(
    origin: Sequence[float], grid: tuple[int, int, int] | None, zyx: Sequence[int],
    voxel: Sequence[float], overlap: float,
) -> tuple[float, float, float]:
    """Corner of a grid tile: the input's origin + grid index x extent x (1 - overlap)."""
    if grid is None:
        return tuple(float(o) for o in origin)  # type: ignore[return-value]
    return tuple(  # type: ignore[return-value]
        float(o) + g * n * v * (1.0 - overlap) for o, g, n, v in zip(origin, grid, zyx, voxel)
    )


def _run(
    tasks: list[tuple[str, str, dict[str, Any]]],
    sizes: list[int],
    *,
    client: Any,
    scheduler: str | None,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    token: str,
) -> None:
    """Run every conversion; raise the first failure (named) after the others stopped."""
    from fastims.convert import convert

    total = sum(sizes)
    if client is None and scheduler is None and workers is None:
        done = 0
        for (src, dst, options), size in zip(tasks, sizes):
            offset = done

            def report(d: int, _t: int, offset: int = offset) -> None:
                if progress is not None:
                    progress(offset + d, total)

            try:
                convert(src, dst, progress=report if progress is not None else None, **options)
            except BaseException as exc:
                exc.add_note(f"while converting tile {src}")
                raise
            done += size
        return

    the_client, owned = get_client(client, scheduler, workers)
    try:
        from distributed import as_completed, wait

        if workers is not None:
            per_task = max(1, (os.cpu_count() or 1) // workers)
            tasks = [(s, d, {**o, "max_workers": o.get("max_workers") or per_task}) for s, d, o in tasks]
        from distributed import Event

        abort_name = f"fastims-abort-{token}"
        abort = Event(abort_name, client=the_client)
        futures = [
            the_client.submit(_convert_task, s, d, o, abort_name, key=f"fastims-convert-{token}-{i}", pure=False)
            for i, (s, d, o) in enumerate(tasks)
        ]
        by_key = {f.key: i for i, f in enumerate(futures)}
        if progress is not None:
            progress(0, total)
        done = 0
        current: int | None = None
        try:
            for future in as_completed(futures):
                current = by_key[future.key]
                future.result()
                done += sizes[current]
                if progress is not None:
                    progress(done, total)
        except Exception as exc:
            # tasks not started skip their file; running ones finish, so that every file of
            # the run exists (or not) for good before the caller removes them
            abort.set()
            try:
                wait(futures)
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                logger.debug("waiting for the tasks after a failure", exc_info=True)
            if current is not None:
                exc.add_note(f"while converting tile {tasks[current][0]}")
            raise
        except BaseException:  # interrupted: stop what can be stopped
            abort.set()
            for future in futures:
                future.cancel()
            raise
    finally:
        for obj in owned:
            try:
                obj.close()
            except Exception:  # pragma: no cover - closing must not hide the result
                logger.debug("closing %r", obj, exc_info=True)
