"""``fastims`` command-line arguments: errors and warnings in the CLI's words (its flags)."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

import fastims
from fastims import write_bdv
from fastims.cli import _FLAGS, _cli_words, main

SIM = ["--frames", "2", "--size", "16x16", "--channels", "1", "--no-progress"]


@pytest.fixture
def bdv(tmp_path, rng):
    path = tmp_path / "in.xml"
    write_bdv(path, rng.integers(0, 4000, (3, 12, 10), dtype=np.uint16), voxel_size=(2.0, 0.5, 0.5))
    return path


def gzip_level(path) -> int:
    with h5py.File(path, "r") as f:
        ds = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        assert ds.compression == "gzip"
        return ds.compression_opts


@pytest.mark.parametrize("codec", [[], ["--compression", "lz4"], ["--compression", "none"]])
def test_simulate_level_needs_gzip(tmp_path, capsys, codec):
    # --level is the gzip level: with LZ4 (the default) or no codec it used to be ignored
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(tmp_path / "x.ims"), *SIM, *codec, "--level", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--level sets the gzip level" in err and "has no level" in err
    assert not (tmp_path / "x.ims").exists()


def test_simulate_level_with_gzip(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "a.ims"), *SIM, "--compression", "gzip", "--level", "5"]) == 0
    assert main(["simulate", str(tmp_path / "b.ims"), *SIM, "--compression", "gzip"]) == 0
    assert gzip_level(tmp_path / "a.ims") == 5
    assert gzip_level(tmp_path / "b.ims") == 2  # the default
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["simulate", "x.ims", *SIM, "--workers", "0"], "--workers"),
        (["simulate", "x.ims", *SIM, "--workers", "-3"], "--workers"),
        (["simulate", "x.ims", *SIM, "--voxel-size", "0", "1", "1"], "--voxel-size"),
        (["simulate", "x.ims", *SIM, "--voxel-size", "nan", "1", "1"], "--voxel-size"),
        (["simulate", "x.ims", *SIM, "--compression", "gzip", "--level", "0"], "--level"),
        (["convert", "in.xml", "out.ims", "--threads", "0"], "--threads"),
        (["convert", "in.xml", "out.ims", "--workers", "0"], "--workers"),
        (["convert", "in.xml", "out.ims", "--level", "12"], "--level"),
        (["convert", "in.xml", "out.ims", "--voxel-size", "1", "-1", "1"], "--voxel-size"),
        (["convert", "in.xml", "out.ims", "--origin", "0", "inf", "0"], "--origin"),
        (["convert", "in.xml", "out.ims", "--overlap", "1.5"], "--overlap"),
        (["link", "--filename", "l.xml", "--x-tiles", "0"], "--x-tiles"),
    ],
)
def test_bad_numbers_name_the_flag(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert not any(name in err for name in ("max_workers", "voxel_size", "compression_level"))
    assert not list(tmp_path.iterdir())


def test_convert_errors_name_the_flags(tmp_path, bdv, capsys):
    out = str(tmp_path / "o.ims")
    assert main(["convert", str(bdv), out, "--no-progress", "--voxel-size", "1", "1", "1"]) == 1
    err = capsys.readouterr().err
    assert "--voxel-size apply to TIFF and .npy inputs" in err and "voxel_size" not in err
    assert main(["convert", str(bdv), out, "--no-progress", "--voxel-size", "1", "1", "1", "--unit", "nm",
                 "--channel-names", "a"]) == 1
    assert "--voxel-size, --unit, --channel-names apply to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(bdv), out, "--no-progress", "--overlap", "0.2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--overlap places the tiles of a tile pattern" in err and "src" not in err.split("error:")[-1]
    with pytest.raises(SystemExit):
        main(["convert", str(bdv), out, "--no-progress", "--compression", "lz4", "--level", "3"])
    assert "--level sets the gzip level" in capsys.readouterr().err
    assert not (tmp_path / "o.ims").exists()


@pytest.mark.filterwarnings("default::UserWarning")
def test_convert_prints_warnings_cleanly(tmp_path, bdv, capsys):
    shown = warnings.showwarning
    assert main(["convert", str(bdv), str(tmp_path / "o.xml"), "--no-progress", "--compression", "lz4"]) == 0
    assert warnings.showwarning is shown  # restored for the rest of the process
    err = capsys.readouterr().err
    assert "fastims: warning: LZ4 (HDF5 filter 32004, hdf5plugin) is not readable by Fiji" in err
    assert "--compression none or 'gzip'" in err
    assert ".py:" not in err and "BdvWriter(" not in err
    with fastims.open(tmp_path / "o.xml") as r:
        assert r.shape == (1, 1, 3, 12, 10)


def test_cli_words():
    flags = _FLAGS["convert"]
    assert _cli_words("max_workers must be a positive integer, got 0", flags) == \
        "--threads must be a positive integer, got 0"
    assert _cli_words("x exists; pass overwrite=True to replace it", flags) == "x exists; use --overwrite to replace it"
    assert _cli_words("d.xml: <hdf5> path 'a' points outside; pass allow_external_paths=True to convert() "
                      "to follow it", flags).endswith("; use --allow-external-paths to follow it")
    assert _cli_words("open with allow_external_paths=True to follow it", _FLAGS["link"]) == \
        "use --allow-external-paths to follow it"
    assert _cli_words("use compression=None or 'gzip'", flags) == "use --compression none or 'gzip'"
    assert _cli_words("origin, unit apply to TIFF", flags) == "--origin, --unit apply to TIFF"
    # plain words and names inside paths are left alone
    text = "unit 'furlong' is not a length; origin of /data/voxel_size/max_workers.tif and voxel_size.npy"
    assert _cli_words(text, flags) == text
    assert _cli_words("t=0 c=1 shape=(3, 4)", flags) == "t=0 c=1 shape=(3, 4)"
