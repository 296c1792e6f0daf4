"""Shared fixtures: offline hub, a session-wide real Prefect API (prefect_test_harness), the single-node SLURM cluster."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Before anything imports prefect / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SLURM_SCRIPT = REPO / "deployments" / "slurm" / "local-cluster.sh"
LOCAL_PROFILE = REPO / "deployments" / "slurm-local.yaml"
# Dask worker preload recording, inside each worker, which process and SLURM job ran which task.
PROBE = REPO / "tests" / "slurm_probe.py"


def askshift_exe() -> str:
    """The installed console script next to the interpreter running the tests."""
    exe = VENV_BIN / "askshift"
    return str(exe) if exe.exists() else "askshift"


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for the whole session; its URL is exported so subprocesses use it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180), pytest.MonkeyPatch.context() as env:
        url = PREFECT_API_URL.value()
        env.setenv("PREFECT_API_URL", url)
        yield url


@pytest.fixture
def askshift():
    """Path of the ``askshift`` console script (for subprocess tests of the CLI)."""
    return askshift_exe()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread: on a busy 2-core machine two threads are slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def slurm_dir() -> str:
    """Folder of the single-node SLURM cluster's configuration, state and logs (local-cluster.sh's default)."""
    return os.environ.get("ASKSHIFT_SLURM_DIR", "/tmp/askshift-slurm")


def _missing_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the single-node SLURM cluster needs root (slurmd starts jobs as their owner); CI runs as root"
    missing = [exe for exe in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
               if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists()]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """deployments/slurm/local-cluster.sh up for the session; down at the end unless it was already running.

    Tests using it are marked ``slurm``.
    """
    reason = _missing_slurm()
    if reason:
        pytest.skip(reason)
    directory = slurm_dir()
    env = {**os.environ, "ASKSHIFT_SLURM_DIR": directory}
    was_up = subprocess.run([str(SLURM_SCRIPT), "status", directory], env=env, capture_output=True).returncode == 0
    up = subprocess.run([str(SLURM_SCRIPT), "up", directory], env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, f"local-cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", f"{directory}/slurm.conf")  # sbatch/squeue of this process and its children
            yield directory
    finally:
        if not was_up:
            subprocess.run([str(SLURM_SCRIPT), "down", directory], env=env, capture_output=True, timeout=120)


def pytest_collection_modifyitems(config, items):
    """With ``-n 2 --dist loadgroup`` (``make test``) a test file stays on one worker, so its module fixtures
    (a trained store, a photo folder) are built once; every SLURM test shares one worker, as they share one cluster."""
    slurm_files = {item.path for item in items if item.get_closest_marker("slurm")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("slurm" if item.path in slurm_files else item.path.name))
