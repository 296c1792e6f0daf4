"""Dask worker preload for the SLURM tests: records, from inside each worker, which SLURM job ran which task."""
from __future__ import annotations

import json
import os
import time

from distributed.diagnostics.plugin import WorkerPlugin


class SlurmJobProbe(WorkerPlugin):
    """Appends one JSON line per task start/finish: task key, SLURM_JOB_ID and pid of the worker running it."""

    name = "askshift-slurm-probe"

    def __init__(self, path: str):
        self.path = path

    def transition(self, key, start, finish, **kwargs):
        if finish not in ("executing", "memory", "error"):
            return
        record = {"key": str(key), "state": finish, "job": os.environ.get("SLURM_JOB_ID"), "pid": os.getpid(),
                  "api": os.environ.get("PREFECT_API_URL"), "time": time.time()}
        with open(self.path, "a") as fh:  # one short line per write: appends from several workers stay whole
            fh.write(json.dumps(record) + "\n")


def dask_setup(worker):
    directory = os.environ.get("ASKSHIFT_PROBE_DIR")
    if directory:
        worker.plugins[SlurmJobProbe.name] = SlurmJobProbe(os.path.join(directory, "tasks.jsonl"))
