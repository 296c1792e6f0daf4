"""Prefect task "train one model": a content-addressed, resumable training run of askshift.lib.models.training."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.models.training import RunConfig, train_run
from askshift.lib.store import Store
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.tags import GPU_TAG


def _run_name() -> str:
    from prefect.runtime import task_run

    run = task_run.parameters.get("run")
    return f"train {run.model_label()} on {run.shift}" if isinstance(run, RunConfig) else "train one model"


# Retries resume from the newest epoch checkpoint, so a killed or failed attempt loses at most one epoch.
# Caching is ours (run folders named by the config hash, a `done` marker), not Prefect's.
# The gpu tag makes a cluster with GPU workers give each training task one GPU slot.
@task(name="train one model", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name=_run_name)
def train_one_model(
    store: str,
    experiment: str,
    run: RunConfig,
    cache_dir: str,
    device: str = "auto",
    num_workers: int = 1,
) -> list[str]:
    """Train one model (or resume it, or skip it when done); returns the ids of its kept checkpoints."""
    logger = get_run_logger()
    exp = Store(store).experiment(experiment)
    return train_run(exp, run, cache_dir, device=device, num_workers=num_workers, log=logger.info, pool=LOADER_POOL)
