"""Execution backends: one switch (local | dask | slurm) that yields a Prefect task runner for any flow."""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator


@contextlib.contextmanager
def task_runner_from_args(args: argparse.Namespace) -> Iterator[object]:
    """Yield the task runner for ``args.backend`` / ``args.profile`` (None means Prefect's default)."""
    yield make_task_runner(getattr(args, "backend", "local"), getattr(args, "profile", None))


def make_task_runner(backend: str = "local", profile: str | None = None):
    if backend == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    raise NotImplementedError(f"backend {backend!r} is not available yet")
