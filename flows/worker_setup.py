"""Dask worker preload (``--preload askshift.flows.worker_setup``): make worker processes behave like the flow process."""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os

from askshift.env import apply_safe_defaults

logger = logging.getLogger("askshift.worker_setup")

# Imported before the worker registers with the scheduler (preloads run first): a worker still importing torch
# (tens of seconds on a busy node) is then never handed a task that a warm worker could run at once.
# ASKSHIFT_WORKER_WARM_IMPORTS (comma-separated; empty: none) overrides the list.
WARM_IMPORTS = ("torch", "prefect.task_engine", "askshift.lib.models.training", "askshift.lib.data.loaders", "askshift.lib.models.evaluation")


def warm_imports() -> tuple[str, ...]:
    configured = os.environ.get("ASKSHIFT_WORKER_WARM_IMPORTS")
    if configured is None:
        return WARM_IMPORTS
    return tuple(m.strip() for m in configured.split(",") if m.strip())


def dask_setup(worker) -> None:
    """Run by each Dask worker at start-up (LocalCluster and SLURM jobs alike)."""
    apply_safe_defaults()
    # Nanny-started workers are spawned children, and spawn passes its start method on as the default. Library code
    # written for Linux's default (fork), such as FFCV's dataset writer handing a dataset with closures to its
    # writer processes, then fails with "Can't pickle local object". Restore the platform default.
    if multiprocessing.get_start_method(allow_none=True) != "fork":
        multiprocessing.set_start_method("fork", force=True)
    for module in warm_imports():
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing optional module must not keep the worker from starting
            logger.warning("askshift worker could not pre-import %s: %s", module, exc)
