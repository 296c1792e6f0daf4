"""The compiled FFCV loaders the tasks of one process share: one bounded ``LoaderPool``, passed down to askshift.lib.

Tasks of a flow run as threads of one process (or of one Dask worker), and many of them read the same few .beton
files with the same pipeline: a training run's loader, freed, serves the next run's; a prediction's, the next
split's.  Here, at the task layer, is the one instance and its bounds; the science in askshift.lib takes the pool as
an argument and never keeps one of its own (``ASKSHIFT_LOADER_POOL=0`` still turns it off).
"""
from __future__ import annotations

from askshift.lib.data.loaders import LoaderPool


class TaskLoaderPool(LoaderPool):
    """The tasks' pool.  Dask ships a task's function with the globals it reads (cloudpickle, by value, since a
    Prefect task's function is not importable under its own name); the pool then travels as a reference to the
    receiving process's own pool, never as a copy of this one (its lock and compiled loaders belong here)."""

    def __reduce__(self):
        return (process_pool, ())


def process_pool() -> LoaderPool:
    """This process's pool (what an unpickled reference to the tasks' pool becomes)."""
    return LOADER_POOL


# Two idle loaders per (file, pipeline) serve two tasks that run side by side; eight keys cover the training and
# evaluation pipelines of a few splits.  Each idle loader keeps its pipeline's buffers, so the bounds are memory.
LOADER_POOL = TaskLoaderPool(max_idle_per_key=2, max_keys=8)
