"""Reading a flow's task futures so that a failure surfaces as the failed task's own exception."""
from __future__ import annotations

from typing import Any, Iterable


def results(futures: Iterable[Any]) -> list[Any]:
    """Wait for every future and return their results in order; on failure raise the first failed or crashed task's
    own exception.

    A task submitted with ``wait_for=[upstream]`` never runs when ``upstream`` fails: Prefect leaves it Pending
    ("NotReady") and reading it raises ``UnfinishedRun: Run is in PENDING state``, which says nothing about the
    cause.  Pass the upstream futures too (``results([*trained, *predictions])``) and the upstream's exception is
    raised instead.
    """
    from prefect.futures import wait

    futures = list(futures)
    wait(futures)
    for future in futures:
        state = future.state
        if state.is_failed() or state.is_crashed():
            future.result()  # raises the task's exception with its traceback
    return [future.result() for future in futures]


__all__ = ["results"]
