"""The compiled FFCV loaders the tasks of one process share: one bounded ``LoaderPool``, passed down to askshift.lib.

Tasks of a flow run as threads of one process (or of one Dask worker), and many of them read the same few .beton
files with the same pipeline: a training run's loader, freed, serves the next run's; a prediction's, the next
split's.  Here, at the task layer, is the one instance and its bounds; the science in askshift.lib takes the pool as
an argument and never keeps one of its own (``ASKSHIFT_LOADER_POOL=0`` still turns it off).
"""
from __future__ import annotations

from askshift.lib.data.loaders import LoaderPool
from askshift.tasks.owned import ProcessOwned


class TaskLoaderPool(ProcessOwned, LoaderPool):
    """The tasks' pool: it travels to a Dask worker as that worker's own (``askshift.tasks.owned``)."""

    _global = (__name__, "LOADER_POOL")


# Two idle loaders per (file, pipeline) serve two tasks that run side by side; eight keys cover the training and
# evaluation pipelines of a few splits.  Each idle loader keeps its pipeline's buffers, so the bounds are memory.
LOADER_POOL = TaskLoaderPool(max_idle_per_key=2, max_keys=8)
