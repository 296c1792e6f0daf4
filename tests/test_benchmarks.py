"""The benchmark scripts run from a checkout and end with their ratio line (speed itself is not asserted)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loader_pool_benchmark_reuses_one_compiled_loader_and_ends_with_a_ratio():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loader_pool.py"), "--runs", "3"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "built 1, reused 2" in lines[-2]
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), lines[-1]
