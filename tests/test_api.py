"""Public surface: exports, import cost, kernel dispatch, warm-up, CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import fastims
from fastims import _dispatch
from fastims.cli import main


def test_public_names_resolve():
    for name in fastims.__all__:
        assert getattr(fastims, name) is not None, name
    with pytest.raises(AttributeError):
        fastims.no_such_name  # noqa: B018


def test_import_is_light_and_ext_is_private():
    code = (
        "import sys, fastims; "
        "bad = [m for m in ('numba', 'h5py', 'Cython') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
    assert importlib.util.find_spec("_ext") is None  # never a top-level _ext
    assert importlib.util.find_spec("fastims._ext._downsample") is not None


def test_every_kernel_has_a_twin_with_the_same_name():
    for name, module in _dispatch.KERNEL_MODULES.items():
        compiled = _dispatch.kernel(name)
        twin = _dispatch.reference(name)
        assert compiled.__name__ == twin.__name__ == name
        assert importlib.util.find_spec(f"fastims._ext.{module}") is not None


def test_use_reference_switches_backend():
    try:
        _dispatch.use_reference(True)
        assert _dispatch.backend() == "reference"
        assert _dispatch.kernel("hist_u16") is _dispatch.reference("hist_u16")
    finally:
        _dispatch.use_reference(False)
    assert _dispatch.backend() == "compiled"
    assert _dispatch.kernel("hist_u16") is not _dispatch.reference("hist_u16")


def test_writer_with_reference_kernels_equals_compiled(tmp_path):
    from fastims.synthetic import camera_stack

    data = camera_stack((2, 12, 40, 70), "uint16", seed=11)
    fastims.write_ims(tmp_path / "c.ims", data, compression="gzip", shuffle=True)
    try:
        _dispatch.use_reference(True)
        fastims.write_ims(tmp_path / "r.ims", data, compression="gzip", shuffle=True)
    finally:
        _dispatch.use_reference(False)
    with h5py.File(tmp_path / "c.ims", "r") as a, h5py.File(tmp_path / "r.ims", "r") as b:
        def items(f):
            out = {}
            f.visititems(lambda n, o: out.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
            return out
        ia, ib = items(a), items(b)
        assert ia.keys() == ib.keys()
        for key in ia:
            np.testing.assert_array_equal(ia[key], ib[key], err_msg=key)


def test_warmup_compiles_jit_kernels():
    assert fastims.warmup() >= 0.0


def test_version_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert fastims.__version__ in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "fastims", "--version"], check=True, capture_output=True, text=True)
    assert fastims.__version__ in out.stdout


def test_simulate_cli(tmp_path, capsys):
    out = tmp_path / "sim.ims"
    assert main(["simulate", str(out), "--frames", "9", "--size", "48x80", "--channels", "2",
                 "--compression", "gzip", "--fps", "500", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "MB/s" in text and "dropped" in text
    with h5py.File(out, "r") as f:
        data = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 1/Data"][:9, :48, :80]
        # realistic frames: a dark offset, structure and noise, not zeros or constant
        assert data.min() >= 50 and data.std() > 1.0
    assert main(["simulate", str(out), "--frames", "2", "--size", "8x8", "--no-progress"]) == 1  # exists
    assert "exists; use --overwrite" in capsys.readouterr().err


def test_simulate_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "x.ims"), "--size", "12by12"])
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "x.ims"), "--frames", "0"])
    assert "usage: fastims simulate" in capsys.readouterr().err  # the command's usage, not the top level's
    for fps in ("-1", "0", "nan", "inf", "fast"):
        with pytest.raises(SystemExit):
            main(["simulate", str(tmp_path / "x.ims"), "--fps", fps])
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "x.ims"), "--seed", "-1"])
    assert "--seed must be >= 0" in capsys.readouterr().err
    # user and environment errors: one line naming the problem, exit status 1, no traceback
    folder = tmp_path / "adir.ims"
    folder.mkdir()
    cases = [
        ([str(tmp_path / "x.txt")], "must end in .ims"),
        ([str(folder), "--overwrite"], "adir.ims"),
        ([str(tmp_path / "missing" / "x.ims")], "x.ims"),
    ]
    for args, message in cases:
        assert main(["simulate", *args, "--frames", "2", "--size", "8x8", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("fastims: error: ") and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("x.*"))


def test_simulate_starts_the_camera_when_the_file_is_open(tmp_path, capsys, monkeypatch):
    # opening a writer faults in its buffers: frames paced from before the open arrived late
    import fastims.ims.writer as ims_writer

    opened = ims_writer.ImsWriter.__init__

    def slow_open(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        time.sleep(0.3)

    monkeypatch.setattr(ims_writer.ImsWriter, "__init__", slow_open)
    assert main(["simulate", str(tmp_path / "p.ims"), "--frames", "8", "--size", "16x16", "--channels", "1",
                 "--fps", "100", "--camera-buffer", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "0 of 8 frames would have been dropped" in text and "writer opened in 0.3" in text


def test_bench_cli(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--size", "48x64", "--frames", "8", "--fps", "2000", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "recommended" in text or "no setting sustains" in text
    assert (out / "bench.json").stat().st_size > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_default_frames(tmp_path, capsys):
    # without --frames the depth is computed from the frame size (256 frames for tiny frames)
    out = tmp_path / "bench"
    assert main(["bench", "--size", "48x64", "--fps", "20000", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "bench.json").read_text())["frames"] == 256
    assert "frames of 48x64 uint16" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--frames", "0", "--out", str(out)])


_UNCLOSED = """
import sys
import numpy as np
import fastims
fmt, path = sys.argv[1], sys.argv[2]
data = np.arange(24 * 64 * 96, dtype=np.uint16).reshape(24, 64, 96)
if fmt == "ims":
    w = fastims.ImsWriter(path, shape=(1, 1, 24, 64, 96), dtype="uint16", compression="lz4", shuffle=True)
else:
    w = fastims.BdvWriter(path, compression="gzip")
    w.add_view(shape=(24, 64, 96), dtype="uint16")
for z in range(10):  # planes 10..23 never written, and no close(): the program just ends
    w.write_plane(data[z], z=z)
print("exiting")
"""


@pytest.mark.parametrize("fmt", ["ims", "bdv"])
def test_a_writer_left_open_is_finished_at_exit(tmp_path, fmt):
    """HDF5's own exit handler used to close such files after Python was gone: a segfault
    (exit status -11) and a file without metadata. Now the writer is finished as close() would."""
    path = tmp_path / ("open.ims" if fmt == "ims" else "open.xml")
    run = subprocess.run([sys.executable, "-c", _UNCLOSED, fmt, str(path)], capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "was not closed: finishing it at interpreter exit" in run.stderr
    data = np.arange(24 * 64 * 96, dtype=np.uint16).reshape(24, 64, 96)
    expect = data.copy()
    expect[10:] = 0  # never written: zero-filled, and said so in the file
    if fmt == "ims":
        import hdf5plugin  # noqa: F401 - h5py decodes LZ4 through it

        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][:24, :64, :96],
                                          expect)
            log = f["DataSetInfo/Log"].attrs["Entry0"].tobytes().decode()
            assert "incomplete: t=0 c=0 z=10-23 zero-filled" in log
    else:
        with fastims.BdvReader(path) as r:
            np.testing.assert_array_equal(r.asarray(), expect)


_FORKED = """
import os, sys
import numpy as np
import fastims
w = fastims.ImsWriter(sys.argv[1], shape=(1, 1, 8, 64, 64), dtype="uint16", compression=None)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit runs the exit hooks, with none of the writer's threads here
os.waitpid(pid, 0)
for z in range(8):
    w.write_plane(np.full((64, 64), z, np.uint16), z=z)
w.close()
print("parent closed")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork: POSIX only")
def test_a_forked_child_leaves_the_parents_writer_alone(tmp_path):
    path = tmp_path / "fork.ims"
    run = subprocess.run([sys.executable, "-c", _FORKED, str(path)], capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 0 and "parent closed" in run.stdout, run.stderr
    assert "was not closed" not in run.stderr
    with h5py.File(path, "r") as f:
        data = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][:8, :64, :64]
    np.testing.assert_array_equal(data[:, 0, 0], np.arange(8))
