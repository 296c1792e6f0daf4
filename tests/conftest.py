"""Shared fixtures: offline hub, a session-wide real Prefect API (prefect_test_harness), tiny data."""
from __future__ import annotations

import os
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


def askshift_exe() -> str:
    """The installed console script next to the interpreter running the tests."""
    exe = VENV_BIN / "askshift"
    return str(exe) if exe.exists() else "askshift"


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for the whole session; its URL is exported so subprocesses use it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        url = PREFECT_API_URL.value()
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


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
