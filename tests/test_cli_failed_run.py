"""A failed run ends with one line naming the failed task and its cause, exit 1; errors no retry can fix are not retried."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import time
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

import pytest
from prefect import flow, tags, task
from pydantic import BaseModel, Field, ValidationError

from askshift.lib.data.datasets import DatasetLayoutError
from askshift.lib.registry import UnknownNameError
from askshift.tasks.retry import is_transient_error, retry_if_transient


def _validation_error() -> ValidationError:
    class Settings(BaseModel):
        seeds: int = Field(ge=0)

    try:
        Settings(seeds=-1)
    except ValidationError as exc:
        return exc
    raise AssertionError("no ValidationError")


def _wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def _dask_errors() -> tuple[list, list]:
    from distributed.comm.core import CommClosedError, FatalCommClosedError
    from distributed.scheduler import KilledWorker

    return ([CommClosedError("in <TCP (closed)>: Stream is closed"), KilledWorker("train-1", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)],
            [FatalCommClosedError("TLS handshake failed")])


def _torch_oom() -> BaseException:
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


_DASK_TRANSIENT, _DASK_PERMANENT = _dask_errors()

PERMANENT = [
    ValueError("train fractions must lie in (0, 1]"),
    TypeError("unsupported operand"),
    KeyError("label"),
    UnknownNameError("unknown model family 'cnnx': choose one of cnn, resnet"),
    _validation_error(),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/cifar10/data_batch_1"),
    DatasetLayoutError("ImageFolder root /data/photos has no val/ folder"),
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "/store/file/x"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "/store/x"),
    FileExistsError(errno.EEXIST, "File exists", "/store/runs/abc"),
    PermissionError(errno.EACCES, "Permission denied", "/store"),
    OSError(errno.EROFS, "Read-only file system"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError("image file is truncated (3 bytes not processed)"),  # PIL: no errno, the file stays truncated
    pickle.UnpicklingError("invalid load key, '\\x00'."),
    EOFError("Ran out of input"),
    AttributeError("'NoneType' object has no attribute 'shape'"),
    RuntimeError("Error(s) in loading state_dict for CNN: size mismatch"),  # unknown: not known to be transient
    *_DASK_PERMANENT,
    _wrapped(ValueError("bad config"), OSError(errno.EIO, "Input/output error")),  # the raised error decides
]

TRANSIENT = [
    MemoryError(),
    _torch_oom(),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly"),
    TimeoutError("timed out"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    BrokenProcessPool("A process in the process pool was terminated abruptly"),
    OSError(errno.EIO, "Input/output error"),
    OSError(errno.ESTALE, "Stale file handle"),
    *_DASK_TRANSIENT,
    _wrapped(RuntimeError("batch could not be read"), OSError(errno.EIO, "Input/output error")),  # judged by cause
]


def _id(exc: BaseException) -> str:
    text = f"{type(exc).__name__}({exc})"
    return text[:60]


@pytest.mark.parametrize("exc", PERMANENT, ids=[_id(e) for e in PERMANENT])
def test_errors_no_retry_can_fix_are_not_retried(exc):
    assert is_transient_error(exc) is False


@pytest.mark.parametrize("exc", TRANSIENT, ids=[_id(e) for e in TRANSIENT])
def test_transient_errors_are_retried(exc):
    assert is_transient_error(exc) is True


def test_retry_condition_reads_the_exception_from_prefects_failed_state():
    from prefect.states import Failed

    assert retry_if_transient(None, None, Failed(data=OSError(errno.EIO, "Input/output error"))) is True
    assert retry_if_transient(None, None, Failed(data=ValueError("bad"))) is False
    assert retry_if_transient(None, None, Failed(message="no exception attached")) is False


def test_every_task_with_retries_retries_only_transient_errors():
    import importlib
    import pkgutil

    from prefect import Task

    import askshift.flows
    import askshift.tasks

    found = []
    for package in (askshift.tasks, askshift.flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            found += [v for v in vars(module).values() if isinstance(v, Task) and v.retries]
    assert found, "no task with retries found"
    wrong = sorted({t.name for t in found if t.retry_condition_fn is not retry_if_transient})
    assert not wrong, f"tasks with retries but without retry_condition_fn=retry_if_transient: {wrong}"


def test_prefect_runs_a_permanent_failure_once_and_retries_a_transient_one(prefect_api):
    attempts = {"permanent": 0, "transient": 0}

    @task(retries=2, retry_condition_fn=retry_if_transient)
    def fails_with(kind: str) -> str:
        attempts[kind] += 1
        if kind == "permanent":
            raise ValueError("seeds must be 0 or more")
        if attempts[kind] == 1:
            raise OSError(errno.EIO, "Input/output error")
        return "ok"

    @flow
    def both() -> tuple:
        return (fails_with("permanent", return_state=True), fails_with("transient", return_state=True))

    permanent, transient = both()
    assert permanent.is_failed() and attempts["permanent"] == 1
    assert transient.is_completed() and attempts["transient"] == 2


# --- the last line: the failed task run, looked up in the Prefect API ---------------------------------------------


@task(name="load one split", retries=2, retry_condition_fn=retry_if_transient, task_run_name="load {split}")
def _load(split: str) -> str:
    raise ValueError(f"split {split!r} has no examples\nleft after class rates")


@task(name="predict one split")
def _predict(split: str) -> str:
    return split


@flow(name="load-then-predict")
def _load_then_predict() -> None:
    from prefect.futures import wait

    loaded = _load.submit("val")
    predicted = _predict.submit("val", wait_for=[loaded])
    wait([predicted])
    predicted.result()  # never ran: Prefect raises UnfinishedRun (PENDING), which says nothing of the cause


def test_failure_line_names_the_failed_task_not_its_downstreams_unfinished_run(prefect_api):
    from askshift.cli.commands.run import failure_line

    tag = "askshift-cli-test-upstream"
    with tags(tag):
        with pytest.raises(Exception) as raised:
            _load_then_predict()
    assert type(raised.value).__name__ == "UnfinishedRun"
    assert failure_line(raised.value, tag) == (
        "failed: task 'load one split' (load val): ValueError: split 'val' has no examples left after class rates")


def test_failure_line_of_a_flow_that_fails_outside_any_task_names_the_flow_run(prefect_api):
    from askshift.cli.commands.run import failure_line

    @flow(name="no-tasks", flow_run_name="no tasks here")
    def no_tasks() -> None:
        raise KeyError("label")

    tag = "askshift-cli-test-flow-only"
    with tags(tag):
        with pytest.raises(KeyError) as raised:
            no_tasks()
    assert failure_line(raised.value, tag) == "failed: flow run 'no tasks here': KeyError: 'label'"


# --- end to end: the CLI -----------------------------------------------------------------------------------------

BASELINE_ARGS = ["--dataset", "digits", "--epochs", "1", "--train-fractions", "1", "--seeds", "0", "--device", "cpu"]


def _block_run_folder(store) -> tuple[str, str]:
    """Put a regular file where the baseline's one training run keeps its folder: the CLI's checks pass (the store
    is a writable folder), the .beton files are written, and "train one model" fails with FileExistsError, which no
    retry can fix.  Returns (the file, the training task run's name)."""
    from askshift.flows.baseline import BaselineConfig
    from askshift.lib.data.specs import get_spec

    config = BaselineConfig(dataset="digits", store=str(store), epochs=1, train_fractions=(1.0,), seeds=(0,),
                            device="cpu")
    spec = get_spec(config.shift, dataset=config.dataset, root=config.root)
    (run,) = config.runs(spec.baseline_epochs_factor)
    folder = config.store.experiment(config.experiment or spec.name).run_dir(run.run_id())
    folder.parent.mkdir(parents=True)
    folder.write_text("not a run folder\n")
    return str(folder), f"train {run.model_label()} on {run.shift}"


def _task_runs_named(name: str, since: float):
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    after = datetime.fromtimestamp(since, tz=timezone.utc)
    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=[name]), start_time=TaskRunFilterStartTime(after_=after)))


@pytest.mark.slow
def test_failed_run_ends_with_the_failed_task_and_its_cause_and_is_not_retried(prefect_api, askshift, tmp_path):
    store = tmp_path / "store"
    blocker, train_run_name = _block_run_folder(store)
    started = time.time()
    proc = subprocess.run([askshift, "run", "baseline", *BASELINE_ARGS, "--store", str(store)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"})
    output = proc.stdout
    lines = [line for line in output.splitlines() if line.strip()]
    assert proc.returncode == 1, output[-3000:]
    last = lines[-1]
    assert last == (f"failed: task 'train one model' ({train_run_name}): FileExistsError: "
                    f"[Errno 17] File exists: '{blocker}'"), output[-3000:]
    assert "UnfinishedRun" not in output and "PENDING state" not in output, output[-3000:]
    assert "Retry 1/" not in output, output[-3000:]  # Prefect logs each retry it starts

    deadline = time.monotonic() + 10  # task run states reach the API as events, a moment later
    while not (runs := _task_runs_named(train_run_name, started)) or runs[0].state_type is None \
            or not runs[0].state.is_final():
        assert time.monotonic() < deadline, f"no finished task run {train_run_name!r} in the API: {runs}"
        time.sleep(0.5)
    (run,) = runs
    assert run.state.is_failed() and run.run_count == 1
