"""Dask worker preload (``--preload flows.worker_setup``): make worker processes behave like the flow process."""
from __future__ import annotations

import multiprocessing

from lib.env import apply_safe_defaults


def dask_setup(worker) -> None:
    """Run by each Dask worker at start-up (LocalCluster and SLURM jobs alike)."""
    apply_safe_defaults()
    # Nanny-started workers are spawned children, and spawn passes its start method on as the default. Library code
    # written for Linux's default (fork), such as FFCV's dataset writer handing a dataset with closures to its
    # writer processes, then fails with "Can't pickle local object". Restore the platform default.
    if multiprocessing.get_start_method(allow_none=True) != "fork":
        multiprocessing.set_start_method("fork", force=True)
