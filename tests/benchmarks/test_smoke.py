"""Every benchmark still runs: each ``benchmarks/*.py`` is run with ``--smoke`` (one tiny
iteration) in a subprocess and must exit 0. Scripts are found by glob, so a new benchmark
without ``--smoke`` fails here; helper modules that are not benchmarks are listed below."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: modules the benchmarks start or import, not benchmarks themselves
HELPERS = frozenset({"fast_upstream.py", "naive_proxy.py"})
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)
#: benchmarks that take ``--model DIR`` (default: build the tiny model): given the session's
#: tiny model, so that it is built once
TAKE_MODEL = frozenset({"throughput.py", "grammar.py"})

pytestmark = pytest.mark.e2e


def test_the_benchmarks_are_found() -> None:
    assert {"throughput.py", "auth_overhead.py", "grammar.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode(script: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_model_dir)] if script in TAKE_MODEL else []
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", *model],
        cwd=tmp_path,  # whatever a script writes by default lands here
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "OMP_NUM_THREADS": "1",  # no spinning torch threads on a shared CI machine
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (
        f"{script} --smoke exited {done.returncode}:\n" + (done.stdout + done.stderr)[-4000:]
    )
