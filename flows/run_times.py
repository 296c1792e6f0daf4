"""How long each task run of a tagged run took, read back from the Prefect API (for askshift.flows.time_budget)."""
from __future__ import annotations

import importlib
import pkgutil

import askshift.flows
import askshift.tasks


def _task_names() -> dict[str, str]:
    """task_key -> registered task name, for every task the package defines."""
    from prefect import Task

    names: dict[str, str] = {}
    modules = [f"askshift.tasks.{m.name}" for m in pkgutil.iter_modules(askshift.tasks.__path__)]
    modules += [f"askshift.flows.{m.name}" for m in pkgutil.iter_modules(askshift.flows.__path__) if m.name in ("demo", "report")]
    for module_name in modules:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, Task):
                names[value.task_key] = value.name
    return names


def task_seconds(tag: str, page: int = 200) -> list[tuple[str, float]]:
    """(task name, run seconds) of every task run of a flow run carrying ``tag`` (subflows inherit the tag; the
    local runner's task runs carry none, ``askshift.flows.backends.LocalTaskRunner``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, TaskRunFilter, TaskRunFilterSubFlowRuns

    names = _task_names()
    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
    task_filter = TaskRunFilter(subflow_runs=TaskRunFilterSubFlowRuns(exists_=False))
    out: list[tuple[str, float]] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_task_runs(flow_run_filter=flow_filter, task_run_filter=task_filter, limit=page,
                                         offset=offset)
            out += [(names.get(r.task_key, r.name), r.total_run_time.total_seconds()) for r in runs]
            if len(runs) < page:
                return out
            offset += page


__all__ = ["task_seconds"]
