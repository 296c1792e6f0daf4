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


def test_loader_benchmark_on_mixed_size_photos_ends_with_a_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loader.py"), "--photos", "--images", "60",
                          "--batch-size", "16", "--workers", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("generated 60 photos")
    assert any(line.startswith("note: torchvision decodes the original JPEGs") for line in lines)
    for dtype in ("float32", "uint8"):
        for storage in ("jpg", "raw"):  # both storages, both batch types, against the same torchvision pipeline
            assert any(re.fullmatch(rf"  ratio {dtype} {storage}: \d+\.\d\d", line) for line in lines), (dtype, storage)
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), lines[-1]


def test_photo_scale_benchmark_ends_with_a_markdown_table_row_per_size():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "photo_scale.py"), "--scale", "30",
                          "--resolution", "32", "--batch-size", "8", "--workers", "1"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-3] == "| N | write s | write img/s | epoch s | epoch img/s | peak RSS MB |"
    assert lines[-1].split("|")[1].strip() == "30"
