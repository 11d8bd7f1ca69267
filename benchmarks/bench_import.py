"""Cold start: ``import fastims``, the first frame of a fresh writer, numba warm-up.

Each case runs in a fresh interpreter (subprocess), which is what an acquisition program
pays when it starts. Times are reported in extra_info (seconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_IMPORT = "import time; t = time.perf_counter(); import fastims; print(time.perf_counter() - t)"

_FIRST_FRAME = textwrap.dedent(
    """
    import json, os, sys, tempfile, time
    import numpy as np
    t0 = time.perf_counter()
    import fastims
    t1 = time.perf_counter()
    frame = np.full((2048, 2048), 100, np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cold.ims")
        w = fastims.ImsWriter(path, shape=(1, 1, 16, 2048, 2048), dtype="uint16", compression="lz4")
        t2 = time.perf_counter()
        w.write_plane(frame, z=0)
        t3 = time.perf_counter()
        for z in range(1, 16):
            w.write_plane(frame, z=z)
        w.close()
        t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "open": t2 - t1, "first frame": t3 - t2, "rest + close": t4 - t3}))
    """
)

_WARMUP = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import fastims
    t0 = time.perf_counter()
    fastims.warmup()
    t1 = time.perf_counter()
    h = fastims.Histogram("float32")
    h.update(np.ones((2048, 2048), np.float32))
    t2 = time.perf_counter()
    print(json.dumps({"warmup": t1 - t0, "first float32 histogram after warmup": t2 - t1}))
    """
)


def _run(code: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def test_import_time(benchmark):
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(float(_run(_IMPORT))), rounds=5, iterations=1)
    benchmark.extra_info["import fastims (s, median of 5 fresh processes)"] = sorted(times)[2]


def test_first_frame_latency(benchmark):
    out: dict = {}
    benchmark.pedantic(lambda: out.update(json.loads(_run(_FIRST_FRAME))), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in out.items()})


def test_numba_warmup_cold_and_cached(benchmark, tmp_path):
    import os

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    out: dict = {}

    def run():
        out["cold cache"] = json.loads(_run(_WARMUP, env))
        out["warm cache"] = json.loads(_run(_WARMUP, env))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({f"{k}: {kk}": round(vv, 4) for k, v in out.items() for kk, vv in v.items()})
