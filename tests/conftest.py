"""Shared test fixtures. Tests never write into the working directory: use ``tmp_path``."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import configuration as _hyp_config
from hypothesis import settings

# hypothesis keeps state in the working directory by default: keep it in a temp dir instead,
# removed when the session ends so runs do not pile up directories in /tmp
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="fastims-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
_hyp_config.set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("fastims", database=None, deadline=None, max_examples=60)
settings.load_profile("fastims")

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def pytest_report_header(config: pytest.Config) -> list[str]:
    import h5py

    import fastims
    from fastims import _dispatch

    lines = [
        f"fastims {fastims.__version__}, kernels: {_dispatch.backend()}",
        f"numpy {np.__version__}, h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}",
        f"fixtures: {FIXTURES if FIXTURES.is_dir() else 'absent'}",
    ]
    return lines


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real files written by other tools (``../shared/fixtures``); skip when absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real-file fixtures not found at {FIXTURES} (the ../shared folder is absent)")
    return FIXTURES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
