"""Prefect task "predict checkpoints on one split": logits into the store, skipped where they exist."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.data.specs import get_spec
from askshift.lib.store import Store
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
    from askshift.lib.models.evaluation import predict_to_store

    exp = Store(store).experiment(experiment)
    todo = [m for m in model_ids if not exp.has_predictions(m, split)]
    if todo:
        spec = get_spec(shift, dataset=dataset, root=root)
        predict_to_store(exp, todo, split, spec, cache_dir, device=device, batch_size=batch_size,
                         num_workers=num_workers, amp=amp)
        get_run_logger().info(f"predicted {len(todo)} model(s) on {split}")
    return [str(exp.predictions_path(m, split)) for m in model_ids]
