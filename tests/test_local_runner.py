"""The local runner's task runs carry neither the run's tags nor the gpu tag (no tag concurrency slot to ask the API
for), and a run's task runs are still found through its tagged flow runs: the time budget counts them and the
failure line names them."""
from __future__ import annotations

import uuid

import pytest
from prefect import flow, tags, task

from askshift.flows.backends import LocalTaskRunner
from askshift.tasks.tags import GPU_TAG


@task(name="tagged unit of work", tags=[GPU_TAG, "kept-on-the-task-object"], task_run_name="work {i}")
def _work(i: int) -> int:
    if i < 0:
        raise ValueError(f"no work for {i}")
    return i * 2


@flow(name="local-runner-probe", task_runner=LocalTaskRunner())
def _probe(values: list[int]) -> list[int]:
    return [_work.submit(v).result() for v in values]


@flow(name="local-runner-parent", task_runner=LocalTaskRunner())
def _parent(values: list[int]) -> list[int]:
    return _probe(values) + [_work.submit(1).result()]


def _task_runs(tag: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, TaskRunFilter, TaskRunFilterSubFlowRuns

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
            task_run_filter=TaskRunFilter(subflow_runs=TaskRunFilterSubFlowRuns(exists_=False)))
    return flow_runs, task_runs


def test_task_runs_carry_no_tags_and_are_found_through_the_tagged_flow_runs(prefect_api):
    from askshift.flows.backends import drain_prefect_workers
    from askshift.flows.run_times import task_seconds

    tag = f"askshift-test-{uuid.uuid4().hex[:8]}"
    with tags(tag):
        assert _parent([1, 2, 3]) == [2, 4, 6, 2]
    drain_prefect_workers()
    flow_runs, task_runs = _task_runs(tag)
    assert len(flow_runs) == 2 and all(tag in r.tags for r in flow_runs)  # the parent and its subflow
    assert len(task_runs) == 4
    # Neither the run's tag nor the gpu tag; a tag the task itself declares for its own reasons stays.
    assert all(r.tags == ["kept-on-the-task-object"] for r in task_runs), [r.tags for r in task_runs]
    assert _work.tags == {GPU_TAG, "kept-on-the-task-object"}  # the module's task object is left as it was
    timed = task_seconds(tag)  # a task outside the package is named by its run
    assert sorted(name for name, _ in timed) == ["work 1", "work 1", "work 2", "work 3"]
    assert all(seconds >= 0 for _, seconds in timed)


def test_the_failure_line_names_an_untagged_failed_task(prefect_api):
    from askshift.cli.commands.run import failure_line

    tag = f"askshift-test-{uuid.uuid4().hex[:8]}"
    with tags(tag):
        with pytest.raises(ValueError) as raised:
            _probe([1, -1])
    assert failure_line(raised.value, tag) == "failed: task 'tagged unit of work' (work -1): ValueError: no work for -1"
