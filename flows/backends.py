"""Execution backends: one switch (local | dask | slurm) that yields a Prefect task runner for any flow.

- ``local``: Prefect's thread-pool task runner in this process (default; no cluster).
- ``dask``: a ``distributed.LocalCluster`` on 127.0.0.1 through prefect-dask's ``DaskTaskRunner``.
- ``slurm``: ``dask_jobqueue.SLURMCluster`` workers in SLURM jobs, sized by a cluster profile (``askshift.flows.cluster``).

Workers are other processes: before any cluster starts, ``shared_prefect_api`` makes sure they all reach the
same Prefect API as the flow (otherwise each would start its own temporary server on the same SQLite file).

GPU tasks: tag a task ``"gpu"`` (``askshift.tasks.tags.GPU_TAG``), e.g. ``@task(tags=["gpu"], retries=2)``. On workers that
declare a Dask resource ``GPU`` (profiles with ``gpus > 0``) such a task holds one GPU slot while it runs; untagged
(CPU-only) tasks never wait for or occupy GPU slots. On backends without GPU workers the tag changes nothing, and the
local runner (``LocalTaskRunner``, one task at a time) submits tasks without tags.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator

from prefect.task_runners import ThreadPoolTaskRunner

from askshift.flows.cluster import WORKER_ENV, WORKER_PRELOAD, check_submission, load_profile
from askshift.tasks.tags import GPU_TAG

logger = logging.getLogger("askshift.backends")

BACKENDS = ("local", "dask", "slurm")
# Dask's worker processes are daemonic by default, which forbids children (torch DataLoader workers).
_DASK_ENV = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
UNREACHABLE_API = ("SLURM workers on other nodes cannot reach a temporary Prefect server on 127.0.0.1: start a "
                   "server they can reach (askshift serve --host <login-node address>, or your shared Prefect "
                   "server) and export PREFECT_API_URL=http://<address>:<port>/api before running the flow")


class BackendError(ValueError):
    """A backend choice that cannot work: the message says what to change."""


def check_backend_choice(backend: str, profile: str | None) -> None:
    """Raise ``BackendError`` unless ``backend`` is known and has a cluster profile exactly when it needs one.

    The messages name both spellings: ``--backend``/``--profile`` on the command line, ``execution`` in a deployment.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "slurm" and not profile:
        raise BackendError("backend slurm needs a cluster profile (--profile FILE, or execution.profile in a "
                           "deployment): deployments/slurm-local.yaml for the test cluster, "
                           "deployments/slurm-gpu.yaml as a template for a GPU cluster")
    if profile and backend != "slurm":
        raise BackendError(f"a cluster profile applies to backend slurm only (got backend {backend}): choose "
                           "backend slurm or leave the profile out")


class LocalTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread-pool runner, one worker by default, whose task runs carry neither ``gpu`` nor the run's tags.

    A tagged task run asks Prefect's API for a tag concurrency slot before it starts: measured on the quick demo,
    102 task runs spent 15 s there, 8 of them more than a second, for limits that one worker at a time never
    needs. So the ``gpu`` tag is left off and the surrounding ``tags(...)`` context is not applied to task runs (a
    tag a task declares for its own reasons stays); flow runs keep their tags, and a run's task runs are found
    through them (``askshift.flows.run_times``).
    """

    def __init__(self, max_workers: int | None = 1):
        super().__init__(max_workers=max_workers)
        self._untagged: dict[int, tuple[Any, Any]] = {}  # id(task) -> (task, its copy without the gpu tag)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        from prefect.context import TagsContext

        with TagsContext(current_tags=set()):
            return super().submit(self._without_gpu_tag(task), parameters, wait_for=wait_for,
                                  dependencies=dependencies)

    def _without_gpu_tag(self, task):
        if GPU_TAG not in (task.tags or set()):
            return task
        # One copy per task object. The entry holds the task itself, so its id cannot be reused while it is cached.
        key = id(task)
        if key not in self._untagged:
            self._untagged[key] = (task, task.with_options(tags=set(task.tags) - {GPU_TAG}))
        return self._untagged[key][1]


def _runner_classes():
    """DaskTaskRunner subclass that turns the ``gpu`` tag into a Dask resource request (imported lazily)."""
    import dask
    from prefect_dask import DaskTaskRunner

    class AskshiftDaskTaskRunner(DaskTaskRunner):
        """prefect-dask's runner; tasks tagged ``gpu`` ask for ``resources={"GPU": 1}`` when workers have GPUs."""

        inherited_gpu_slots: bool | None = None  # set on runners that join another runner's cluster

        @property
        def gpu_slots(self) -> bool:
            if self.inherited_gpu_slots is not None:
                return self.inherited_gpu_slots
            kwargs = self.cluster_kwargs or {}
            if "GPU" in (kwargs.get("resources") or {}):  # LocalCluster(resources=...)
                return True
            args = [str(a) for a in kwargs.get("worker_extra_args", [])]
            return any(a == "--resources" for a in args) and any(a.startswith("GPU=") for a in args)

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            # prefect-dask's submit takes no resources argument; Dask merges annotations into every submit.
            if self.gpu_slots and GPU_TAG in (task.tags or set()):
                with dask.annotate(resources={"GPU": 1}):
                    return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    return AskshiftDaskTaskRunner


def dask_task_runner(**kwargs: Any):
    """prefect-dask's ``DaskTaskRunner(**kwargs)`` with the ``gpu`` tag honoured (see the module docstring)."""
    return _runner_classes()(**kwargs)


def make_task_runner(backend: str = "local", profile: str | None = None, *, dask_workers: int | None = None):
    """The Prefect task runner for ``backend``; ``profile`` (a cluster profile YAML) is required for ``slurm``.

    Export the Prefect API to workers first (``shared_prefect_api``); ``backend_task_runner`` does both.
    """
    check_backend_choice(backend, profile)
    if backend == "local":
        # One task at a time: training already uses every core through torch threads.
        return LocalTaskRunner(max_workers=1)
    if backend == "dask":
        import dask

        os.environ.update({k: os.environ.get(k, v) for k, v in {**WORKER_ENV, **_DASK_ENV}.items()})
        # LocalCluster's nannies live in this process, whose Dask config was read at import: set it here too.
        dask.config.set({"distributed.worker.daemon": False})
        workers = dask_workers or max(1, min(4, os.cpu_count() or 1))
        # An explicit preload list replaces Dask's configured one (distributed.worker.preload): keep the site's too.
        preload = [WORKER_PRELOAD, *(dask.config.get("distributed.worker.preload", None) or [])]
        return dask_task_runner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                            "host": "127.0.0.1", "dashboard_address": None, "preload": preload},
        )

    cluster_profile = load_profile(profile)
    return dask_task_runner(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=cluster_profile.cluster_kwargs(extra_env={**_DASK_ENV, **_api_env()}),
        adapt_kwargs=cluster_profile.adapt_kwargs(),
    )


def on_caller_backend(target):
    """``target`` (a flow) to be called as a nested flow whose tasks go where the calling flow's tasks go.

    Prefect gives every flow its own task runner, so a nested flow would run its tasks in the caller's process
    even when the caller runs on Dask or SLURM.  When the caller's runner is a Dask runner, the nested flow gets a
    runner connected to the caller's cluster (started here if no task was submitted yet), with the same GPU-slot
    rule, so no second cluster or set of SLURM jobs is started.  Otherwise ``target`` is returned as is.
    """
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    if not isinstance(runner, DaskTaskRunner):
        return target
    runner.client  # noqa: B018 -- starts the caller's cluster if no task was submitted yet
    # prefect-dask's own duplicate() would start a new cluster from the same settings.
    address = runner._cluster.scheduler_address if runner._cluster is not None else runner.address
    joined = _runner_classes()(address=address)
    joined.inherited_gpu_slots = bool(getattr(runner, "gpu_slots", False))
    return target.with_options(task_runner=joined)


def _api_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        logger.warning("no Prefect API URL is set: SLURM workers may each start a temporary server "
                       "(enter askshift.flows.backends.shared_prefect_api() first)")
        return {}
    return {"PREFECT_API_URL": url}




@contextlib.contextmanager
def shared_prefect_api(loopback_only: bool = True) -> Iterator[str]:
    """Yield the Prefect API URL every process of this run uses, exported in ``os.environ``.

    If the user configured a server (``PREFECT_API_URL``), that one. Otherwise (Prefect's ephemeral mode) start one
    server on 127.0.0.1 for the run, point this process at it and stop it on exit.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = configured
        try:
            yield configured
        finally:
            _restore_env("PREFECT_API_URL", previous)
        return
    if not loopback_only:
        raise RuntimeError(UNREACHABLE_API)
    from prefect.server.api.server import SubprocessASGIServer

    # The same singleton Prefect would start lazily in ephemeral mode, started now so workers get its URL. Already
    # running (this is a subflow of a flow that started it): the outer flow still needs it, leave it running.
    server = SubprocessASGIServer()
    started_here = not server.running
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    logger.info("Prefect API for this run (flow and workers): %s", server.api_url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if started_here:
            drain_prefect_workers()
        _restore_env("PREFECT_API_URL", previous)
        if started_here:
            server.stop()


def drain_prefect_workers() -> None:
    """Send queued logs and events while the server still runs (else the exit hangs retrying a dead server)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=15)
        except Exception as exc:  # shutting down: never mask the flow's own outcome
            logger.debug("could not drain %s: %s", service.__name__, exc)


def stop_temporary_prefect_server() -> None:
    """Stop Prefect's temporary (ephemeral-mode) server now rather than at exit, after sending queued logs and
    events: a command whose output must end with a given line stops it before printing that line (its goodbye log
    line would follow otherwise), and left for exit the queue would be retried against a stopped server for over
    a minute."""
    try:
        from prefect.server.api.server import SubprocessASGIServer

        drain_prefect_workers()
        for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
            server.stop()
    except Exception:  # noqa: BLE001 -- the server still stops at exit
        pass
    sys.stderr.flush()


def _restore_env(key: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = previous


@contextlib.contextmanager
def backend_task_runner(backend: str = "local", profile: str | None = None, *,
                        dask_workers: int | None = None) -> Iterator[Any]:
    """Yield the task runner for ``backend``, with the Prefect API shared with its workers while it is used.

    Everything that can be checked is checked before any cluster starts: the backend/profile combination, the
    profile itself, whether SLURM would accept its worker job (``sbatch --test-only``), and whether workers on
    other nodes can reach the Prefect API. Each problem raises ``BackendError`` or ``ClusterProfileError`` (both
    ``ValueError``) with one line saying what to change.
    """
    check_backend_choice(backend, profile)
    if backend == "local":
        yield make_task_runner("local")
        return
    loopback = True
    if backend == "slurm":
        cluster_profile = load_profile(profile)
        # A job sbatch rejects would fail inside dask-jobqueue's adaptive loop and the flow would hang.
        check_submission(cluster_profile)
        loopback = cluster_profile.interface == "lo" or (cluster_profile.scheduler_host or "").startswith("127.")
    if not loopback:
        from urllib.parse import urlparse

        from prefect.settings import PREFECT_API_URL

        host = urlparse(PREFECT_API_URL.value() or "").hostname or ""
        if not host or host == "localhost" or host.startswith("127."):
            raise BackendError(UNREACHABLE_API)
    with shared_prefect_api(loopback_only=loopback):
        yield make_task_runner(backend, profile, dask_workers=dask_workers)


