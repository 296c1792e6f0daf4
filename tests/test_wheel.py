"""The wheel: one top-level import name, and it works installed outside the checkout, beside a user's own
``flows/`` and ``lib/`` folders (which must not shadow askshift's)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools' build/ folder keeps files of earlier builds, which would slip into the wheel.
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                                "__pycache__", "askshift-store", "store", ".prefect"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out)], capture_output=True, text=True, timeout=600, cwd=out)
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("askshift-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding only the wheel; its dependencies come from this environment's site-packages by a path
    line (which does not run this environment's .pth files, so the editable checkout install stays out of it)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps-from-the-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env_dir, env


def test_the_wheels_only_top_level_name_is_askshift(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"askshift"}
    for data in ("askshift/deployments/prefect.yaml", "askshift/deployments/slurm-local.yaml",
                 "askshift/lib/robustness/paper_zoo.csv", "askshift/data/timm-results/results-imagenet.csv"):
        assert data in names, data


def test_the_installed_wheel_works_beside_a_users_own_flows_and_lib_folders(installed, tmp_path):
    env_dir, env = installed
    for own in ("flows", "lib", "tasks"):  # what a Prefect user's project often has: must not shadow askshift's
        (tmp_path / own).mkdir()
        (tmp_path / own / "__init__.py").write_text("raise ImportError('the user project, not askshift')\n")
    python = str(env_dir / "bin" / "python")

    def run(*command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        return done

    where = run(python, "-c", "import askshift.lib, askshift.flows.deployments as d; print(askshift.lib.__file__); "
                              "print(d.PREFECT_YAML)").stdout.split()
    assert all(str(env_dir) in w for w in where), where  # the wheel's files, not the checkout's
    assert "askshift" in run(str(env_dir / "bin" / "askshift"), "--help").stdout
    zoo = run(str(env_dir / "bin" / "askshift"), "zoo", "--shift", "sketch", "--store", str(tmp_path / "store"))
    assert "er.parquet" in zoo.stdout and (tmp_path / "store").is_dir()
    assert "usage: askshift" in run(python, "-m", "askshift", "--help").stdout
