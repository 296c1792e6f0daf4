"""Execution backends: Dask workers share the flow's Prefect API; tasks tagged "gpu" hold one GPU slot each."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest
from prefect import flow, task

from askshift.flows.backends import dask_task_runner, make_task_runner


@task
def where_am_i() -> dict:
    return {"pid": os.getpid(), "api": os.environ.get("PREFECT_API_URL"),
            "start_method": multiprocessing.get_start_method()}


@flow
def probe_workers(n: int) -> list[dict]:
    return [f.result() for f in [where_am_i.submit() for _ in range(n)]]


def test_dask_backend_runs_tasks_in_worker_processes_that_use_the_flows_api(prefect_api, monkeypatch):
    monkeypatch.setenv("ASKSHIFT_WORKER_WARM_IMPORTS", "")  # these no-op tasks need no torch
    runner = make_task_runner("dask", dask_workers=1)
    seen = probe_workers.with_options(task_runner=runner)(2)
    assert {s["pid"] for s in seen} and os.getpid() not in {s["pid"] for s in seen}
    assert {s["api"] for s in seen} == {prefect_api}
    # askshift.flows.worker_setup restored fork, which FFCV's dataset writer relies on.
    assert {s["start_method"] for s in seen} == {"fork"}


@task
def scheduler_of_my_worker() -> dict:
    from distributed import get_worker

    return {"pid": os.getpid(), "scheduler": get_worker().scheduler.address}


@flow
def nested_probe() -> dict:
    return scheduler_of_my_worker.submit().result()


@flow
def caller_with_a_nested_flow() -> dict:
    from askshift.flows.backends import on_caller_backend

    nested = on_caller_backend(nested_probe)()  # before the caller submitted anything itself
    return {"nested": nested, "caller": scheduler_of_my_worker.submit().result()}


def test_a_nested_flow_runs_its_tasks_on_the_callers_dask_cluster(prefect_api, monkeypatch):
    from askshift.flows.backends import on_caller_backend

    monkeypatch.setenv("ASKSHIFT_WORKER_WARM_IMPORTS", "")
    seen = caller_with_a_nested_flow.with_options(task_runner=make_task_runner("dask", dask_workers=1))()
    assert os.getpid() not in {seen["nested"]["pid"], seen["caller"]["pid"]}
    assert seen["nested"]["scheduler"] == seen["caller"]["scheduler"], "the nested flow started a second cluster"
    # Outside a Dask-run caller the flow is returned unchanged (its own default runner).
    assert on_caller_backend(nested_probe) is nested_probe


@task(tags=["gpu"])
def gpu_step(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


@task
def cpu_step(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


@flow
def gpu_and_cpu_steps(seconds: float) -> dict[str, list[tuple[float, float]]]:
    gpu = [gpu_step.submit(seconds) for _ in range(2)]
    gpu_spans = [f.result() for f in gpu]
    cpu = [cpu_step.submit(seconds) for _ in range(2)]
    return {"gpu": gpu_spans, "cpu": [f.result() for f in cpu]}


def _overlap(spans: list[tuple[float, float]]) -> bool:
    (a0, a1), (b0, b1) = sorted(spans)
    return b0 < a1


@pytest.mark.parametrize("worker_gpus", [1, 0])
def test_gpu_tagged_tasks_hold_one_gpu_slot_and_cpu_tasks_do_not(prefect_api, worker_gpus):
    # One worker with two threads: without resources two tasks run at once; with GPU=1 the tagged ones queue.
    cluster_kwargs = {"n_workers": 1, "threads_per_worker": 2, "processes": False,
                      "dashboard_address": None}
    if worker_gpus:
        cluster_kwargs["resources"] = {"GPU": worker_gpus}
    runner = dask_task_runner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)
    assert runner.gpu_slots is bool(worker_gpus)
    spans = gpu_and_cpu_steps.with_options(task_runner=runner)(1.5)
    assert _overlap(spans["cpu"]), "CPU-only tasks must not wait for GPU slots"
    # With a GPU slot per worker the tagged tasks run one after the other; on GPU-less workers the tag is ignored
    # (no task would ever be scheduled otherwise).
    assert _overlap(spans["gpu"]) is (not worker_gpus)
