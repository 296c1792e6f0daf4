"""Prefect task "predict checkpoints on one split": logits into the store, skipped where they exist."""
from __future__ import annotations

from typing import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.data.specs import ExperimentSpec, get_spec
from askshift.lib.store import Store
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.tags import GPU_TAG


def _run_name() -> str:
    from prefect.runtime import task_run

    params = task_run.parameters
    ids = params.get("model_ids") or ["?"]
    return f"predict {params.get('split')}: {ids[0]}" + (f" +{len(ids) - 1}" if len(ids) > 1 else "")


# One task per (training run, split) rather than per checkpoint: the checkpoints of a run share one FFCV
# Loader, whose construction (pipeline compilation, seconds) dwarfs a pass over a small split.
@task(name="predict checkpoints on one split", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name=_run_name)
def predict_split(
    store: str,
    experiment: str,
    model_ids: list[str],
    split: str,
    dataset: str,
    shift: str,
    cache_dir: str,
    root: str | None = None,
    device: str = "auto",
    batch_size: int = 512,
    num_workers: int = 1,
    amp: str = "none",
) -> list[str]:
    """Predict the registered ``model_ids`` on ``split`` of the (dataset, shift) spec; returns Parquet paths."""
    return _predict_missing(store, experiment, model_ids, split, lambda: get_spec(shift, dataset=dataset, root=root),
                            cache_dir, device=device, batch_size=batch_size, num_workers=num_workers, amp=amp)


@task(name="predict models on another experiment's split", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE,
      tags=[GPU_TAG], retry_condition_fn=retry_if_transient, task_run_name="predict {experiment} on {split}")
def predict_on_spec(store: str, experiment: str, model_ids: list[str], split: str, spec: ExperimentSpec,
                    cache_dir: str, device: str = "auto") -> list[str]:
    """Predict registered models on a split of a spec that is not their own experiment's (``askshift ask``: the
    shifted images); the logits stay in the models' experiment, skipped where present."""
    return _predict_missing(store, experiment, model_ids, split, lambda: spec, cache_dir, device=device)


def _predict_missing(store: str, experiment: str, model_ids: list[str], split: str,
                     make_spec: Callable[[], ExperimentSpec], cache_dir: str, **options) -> list[str]:
    """Logits of the models that have none on ``split`` yet, into the store; the Parquet paths of all of them."""
    from askshift.lib.models.evaluation import predict_to_store

    exp = Store(store).experiment(experiment)
    todo = [m for m in model_ids if not exp.has_predictions(m, split)]
    if todo:
        predict_to_store(exp, todo, split, make_spec(), cache_dir, pool=LOADER_POOL, **options)
        get_run_logger().info(f"predicted {len(todo)} model(s) on {split}")
    return [str(exp.predictions_path(m, split)) for m in model_ids]
