"""The interpreter-exit hook that finishes writers a program left open."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastims import BdvEditor, BdvWriter, _lifecycle


class _InOrder(set):
    """A set iterated in insertion order, so the hook meets the broken writer first."""

    def __init__(self, items=()):
        super().__init__()
        self._order: list = []
        for item in items:
            self.add(item)

    def add(self, item):
        if item not in self:
            self._order.append(item)
        super().add(item)

    def __iter__(self):
        return iter([item for item in self._order if item in self])


def test_exit_hook_finishes_the_others_after_a_broken_writer(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_lifecycle, "_OPEN", _InOrder())
    # what a failed constructor used to leave registered: no _closed, no engine
    broken = object.__new__(BdvEditor)
    _lifecycle._OPEN.add(broken)
    w = BdvWriter(tmp_path / "acq.xml")  # registered after the broken one
    w.add_view(shape=(2, 8, 8), dtype="uint16")
    w.write(np.ones((2, 8, 8), np.uint16))
    with caplog.at_level(logging.WARNING, logger="fastims"):
        _lifecycle._close_open_writers()
    assert w.closed
    assert (tmp_path / "acq.xml").is_file()
    assert not _lifecycle._OPEN  # the broken one is dropped too, not retried
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "BdvEditor" in failed[0].getMessage() and failed[0].exc_info


@pytest.mark.parametrize(
    "options",
    [{"compression": "bogus"}, {"dtype_mode": "bogus"}, {"factors": [(2, 2, 2)]}],
    ids=["compression", "dtype_mode", "factors"],
)
def test_failed_editor_constructor_is_not_registered(tmp_path, options):
    xml = tmp_path / "a.xml"
    with BdvWriter(xml) as w:
        w.write_view(np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(ValueError):
        BdvEditor(xml, **options)
    assert not [wr for wr in _lifecycle._OPEN if isinstance(wr, BdvEditor)]
    with BdvEditor(xml) as ed:  # the file was closed again: it opens for writing
        ed.set_metadata(user="me")


def test_failed_writer_constructor_is_not_registered(tmp_path, monkeypatch):
    xml = tmp_path / "a.xml"
    xml.write_text("<stale/>")
    real_unlink = type(xml).unlink

    def unlink(self, *args, **kwargs):
        if self.suffix == ".xml":
            raise PermissionError(13, "denied", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(type(xml), "unlink", unlink)
    before = set(_lifecycle._OPEN)
    with pytest.raises(PermissionError):
        BdvWriter(xml, overwrite=True)
    assert set(_lifecycle._OPEN) == before


def test_interpreter_exit_after_a_failed_editor_finishes_an_unclosed_writer(tmp_path):
    child = textwrap.dedent(f"""
        import numpy as np, fastims
        base = {str(tmp_path / "base.xml")!r}
        fastims.write_bdv(base, np.zeros((2, 16, 16), np.uint16))
        for options in [{{"compression": "bogus"}}, {{"dtype_mode": "bogus"}}] * 4:
            try:
                fastims.BdvEditor(base, **options)
            except ValueError:
                pass
        w = fastims.BdvWriter({str(tmp_path / "acq.xml")!r})
        w.add_view(shape=(2, 16, 16), dtype="uint16")
        w.write(np.ones((2, 16, 16), np.uint16))
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "AttributeError" not in r.stderr
    assert "acq.xml was not closed: finishing it at interpreter exit" in r.stderr
    with BdvEditor(tmp_path / "acq.xml") as ed:
        np.testing.assert_array_equal(ed.read_view(), 1)


@pytest.mark.parametrize("stage", ["open", "preallocate"])
def test_failed_ims_writer_constructor_leaves_nothing(tmp_path, monkeypatch, stage):
    """A constructor that fails (no memory for the stream's buffers, a failed metadata write)
    closes what it opened, removes the file it began and is not finished at exit."""
    import os

    from fastims import ImsWriter
    from fastims.engine import Engine
    from fastims.ims import writer as ims_writer

    def fail(*args, **kwargs):
        raise MemoryError("no room for the buffers")

    if stage == "open":
        monkeypatch.setattr(ims_writer, "write_attr_u32", fail)  # after the file is created
    else:
        monkeypatch.setattr(Engine, "preallocate", fail)
    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    registered = set(_lifecycle._OPEN)
    path = tmp_path / "x.ims"
    with pytest.raises(MemoryError, match="no room"):
        ImsWriter(path, shape=(1, 1, 4, 64, 64), dtype="uint16")
    assert set(_lifecycle._OPEN) == registered
    assert not path.exists()
    if before is not None:
        assert set(os.listdir("/proc/self/fd")) <= before
