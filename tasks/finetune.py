"""Prefect tasks of the fine-tuning flow: build the local pre-trained checkpoint, fine-tune one run, DFR one model."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.data.specs import get_spec
from askshift.lib.models.dfr import dfr_registered_model
from askshift.lib.models.finetune import FinetuneRun, finetune_run
from askshift.lib.models.pretrain import PretrainConfig, pretrain
from askshift.lib.store import Store
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.tags import GPU_TAG


@task(name="pretrain on glyphs", retries=1, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient, task_run_name="pretrain {config.model} on glyphs")
def pretrain_checkpoint(config: PretrainConfig, out: str, device: str = "cpu") -> str:
    """Build (or reuse, when ``out`` was made with the same config) the local stand-in pre-trained checkpoint."""
    logger = get_run_logger()
    return str(pretrain(config, out, device=device, progress=logger.info).path)


# Retries resume from the newest epoch checkpoint; caching is ours (run folder named by the config hash + `done`).
@task(name="fine-tune one run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name="{run.strategy} {run.model} lr={run.train.lr} seed={run.train.seed}")
def finetune_one(
    store: str,
    experiment: str,
    run: FinetuneRun,
    cache_dir: str,
    device: str = "auto",
    num_workers: int = 1,
    eval_batch_size: int = 512,
) -> dict:
    """Train one fine-tuning run (or skip it when done); returns its id, model id and reference-val accuracy."""
    logger = get_run_logger()
    exp = Store(store).experiment(experiment)
    outcome = finetune_run(exp, run, cache_dir, device=device, num_workers=num_workers, log=logger.info,
                           eval_batch_size=eval_batch_size, pool=LOADER_POOL)
    return {"run_id": outcome.run_id, "model_id": outcome.model_id, "val_accuracy": outcome.val_accuracy,
            "num_classes": outcome.num_classes, "lr": run.train.lr, "seed": run.train.seed}


@task(name="DFR one model", retries=1, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient, task_run_name="DFR {model_id} on {split}")
def dfr_one(
    store: str,
    experiment: str,
    model_id: str,
    split: str,
    dataset: str,
    shift: str,
    cache_dir: str,
    root: str | None = None,
    group_suffix: str = "+dfr",
    device: str = "auto",
    num_workers: int = 1,
) -> str:
    """Refit the last layer of a registered model on ``split`` with group-balanced weights; registers the result."""
    exp = Store(store).experiment(experiment)
    spec = get_spec(shift, dataset=dataset, root=root)
    return dfr_registered_model(exp, model_id, spec, split, cache_dir, group_suffix=group_suffix, device=device,
                                num_workers=num_workers, log=get_run_logger().info, pool=LOADER_POOL)
