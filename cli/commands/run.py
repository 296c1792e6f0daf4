"""``askshift run FLOW ...``: run one flow with a chosen execution backend (local, dask, slurm)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import uuid
from typing import Any, Iterator

from askshift.cli.main import CliError, error_line
from askshift.flows.registry import FLOWS, cli_module


@contextlib.contextmanager
def task_runner_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """``backend_task_runner`` for ``--backend`` / ``--profile``; a backend that cannot work is a ``CliError``."""
    from askshift.flows.backends import BackendError, backend_task_runner
    from askshift.flows.cluster import ClusterProfileError

    with contextlib.ExitStack() as stack:
        try:
            runner = stack.enter_context(backend_task_runner(getattr(args, "backend", "local") or "local",
                                                             getattr(args, "profile", None)))
        except (BackendError, ClusterProfileError) as exc:
            raise CliError(str(exc)) from exc
        yield runner  # errors of the flow itself pass through unchanged


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["local", "dask", "slurm"], default="local",
                        help="where tasks run: local (default, in this process), dask (a local Dask cluster), "
                             "slurm (Dask workers in SLURM jobs via dask-jobqueue; needs --profile)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="cluster profile YAML (see deployments/slurm-gpu.yaml, deployments/slurm-local.yaml)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run a flow (baseline, finetune, split, ...)",
                            description="Run one askshift flow. Every flow accepts --backend and --profile.")
    flows_sub = parser.add_subparsers(dest="flow", metavar="FLOW")
    flows_sub.required = True
    for name in FLOWS.names():  # one registry of flows (askshift.flows.registry)
        entry = FLOWS.get(name)
        if not entry.cli:
            continue
        module = importlib.import_module(cli_module(name))
        flow_parser = flows_sub.add_parser(name, help=entry.help, description=entry.help)
        module.add_arguments(flow_parser)
        add_backend_arguments(flow_parser)
        flow_parser.set_defaults(func=_runner(module))


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        from prefect import tags as prefect_tags

        # Lines a command wants printed after everything else, the temporary server's goodbye included.
        args.closing_lines = []
        # Bad input is one line before anything starts: the config is built (and checked) before the server.
        build = getattr(module, "build_config", None)
        args.prepared = build(args) if build is not None else None
        # Every flow and task run of this command carries this tag, so a failure can be looked up afterwards.
        run_tag = f"askshift-cli-{uuid.uuid4().hex[:8]}"
        failure = None
        with task_runner_from_args(args) as task_runner, prefect_tags(run_tag):
            try:
                status = module.execute(args, task_runner)
            except Exception as exc:  # noqa: BLE001 -- only a flow's failure is handled here; the rest is re-raised
                if isinstance(exc, CliError) or not _raised_by_flow(exc):
                    raise
                # Looked up while the run's Prefect API is still up (a dask/slurm run stops its server on exit).
                failure = (exc, failure_line(exc, run_tag))
        if failure is not None:
            from askshift.flows.backends import stop_temporary_prefect_server

            stop_temporary_prefect_server()  # its goodbye line must not follow the cause
            sys.stdout.flush()
            print(failure[1], file=sys.stderr, flush=True)
            if getattr(args, "debug", False):
                raise failure[0]
            return 1
        if args.closing_lines:
            from askshift.flows.backends import stop_temporary_prefect_server

            stop_temporary_prefect_server()  # its goodbye line on stderr must not follow the closing lines
            for line in args.closing_lines:
                print(line, flush=True)
        return status

    return run


# --- a failed run's last line -----------------------------------------------------------------------------------

_TASK_FAILED_PREFIX = "Task run encountered an exception "


def _raised_by_flow(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a Prefect flow run (its traceback passes Prefect's flow engine)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("prefect/flow_engine.py"):
            return True
        tb = tb.tb_next
    return False


def _root_exception(exc: BaseException) -> BaseException | None:
    """The first exception along ``exc``'s cause/context chain that is not one of Prefect's wrappers
    (``UnfinishedRun``, ``FailedRun``...): the task's or flow's own error, where this process has it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if not type(exc).__module__.startswith("prefect"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {error_line(exc)}"


def _task_names() -> dict[str, str]:
    """task_key -> task name of every Prefect task defined at module level in this process (the API keeps only the
    key: function name and a hash of its source)."""
    from prefect import Task

    names = {}
    for module in list(sys.modules.values()):
        try:  # read without attribute hooks: a lazy module or a deprecation proxy must not run code here
            values = list(object.__getattribute__(module, "__dict__").values())
        except (AttributeError, TypeError):
            continue
        for value in values:
            if issubclass(type(value), Task):
                names[value.task_key] = value.name
    return names


def _failed_runs(run_tag: str, wait_s: float = 5.0):
    """(failed task runs, failed flow runs) of the flow runs tagged ``run_tag``, first failure first.

    Task run states reach the API as events, a moment after the task failed: queued events are sent first and the
    API is asked again for up to ``wait_s`` seconds until a failed task run shows up.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
        TaskRunFilterSubFlowRuns,
    )
    from prefect.client.schemas.objects import StateType

    from askshift.flows.backends import drain_prefect_workers

    drain_prefect_workers()
    failed = [StateType.FAILED, StateType.CRASHED]
    task_filter = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=failed)),
        subflow_runs=TaskRunFilterSubFlowRuns(exists_=False),  # a failed subflow's stand-in task run
    )
    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag]))  # task runs are found through their flow runs
    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag]),
                                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=failed)))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(flow_run_filter=tagged, task_run_filter=task_filter)
            if task_runs or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        flow_runs = client.read_flow_runs(flow_run_filter=flow_filter)

    def first(run) -> tuple[float, float]:
        def seconds(t) -> float:
            return t.timestamp() if t is not None else float("inf")

        return seconds(run.end_time), seconds(run.expected_start_time)

    return sorted(task_runs, key=first), sorted(flow_runs, key=first)


def _state_reason(state, local: BaseException | None) -> str:
    """The failed state's reason; this process's own exception object when it is the same error (its message is
    complete, pydantic errors get one part per field)."""
    message = (getattr(state, "message", None) or getattr(state, "name", None) or "no message").strip()
    message = message.removeprefix(_TASK_FAILED_PREFIX)
    if local is not None and message.startswith(type(local).__name__ + ":"):
        return _described(local)
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def failure_line(exc: BaseException, run_tag: str) -> str:
    """One line naming the failed task (or flow) of a run and why it failed: ``failed: task 'NAME' (RUN NAME):
    TYPE: MESSAGE``.  Prefect's wrappers (``UnfinishedRun: Run is in PENDING state``, which a flow raises when it
    reads a task that never ran because its upstream task failed) are replaced by the failed task run's cause."""
    local = _root_exception(exc)
    try:
        task_runs, flow_runs = _failed_runs(run_tag)
    except Exception:  # noqa: BLE001 -- the API is gone: say what this process knows
        task_runs, flow_runs = [], []
    if task_runs:
        run = task_runs[0]
        task = _task_names().get(run.task_key) or run.task_key.rsplit("-", 1)[0]
        label = f"task {task!r}" + (f" ({run.name})" if run.name and run.name != task else "")
        more = f"; {len(task_runs) - 1} more task run(s) failed" if len(task_runs) > 1 else ""
        return f"failed: {label}: {_state_reason(run.state, local)}{more}"
    where = f"flow run {flow_runs[0].name!r}: " if flow_runs else ""
    if local is not None:
        return f"failed: {where}{_described(local)}"
    if flow_runs:
        return f"failed: {where}{_state_reason(flow_runs[0].state, None)}"
    return f"failed: {_described(exc)}"
