"""Prefect task "write or reuse one dataset split" as an FFCV .beton (coarse: one split per task)."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.data.specs import ExperimentSpec
from askshift.tasks.retry import retry_if_transient


# Caching is the .beton cache's own (files named by a hash of their inputs, checked before reuse),
# so Prefect's result cache is off; a retry rewrites a half-written file.
@task(name="write dataset split", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE,
      retry_condition_fn=retry_if_transient,
      task_run_name="write {split} of {spec.name}")
def write_split(spec: ExperimentSpec, split: str, cache_dir: str) -> dict:
    """Write (or reuse) the .beton behind ``split`` of ``spec``; returns its path and sizes."""
    from askshift.lib.data.loaders import split_beton, split_info

    logger = get_run_logger()
    _, beton = split_beton(spec, split, cache_dir)
    info = split_info(spec, split, cache_dir)
    logger.info(f"{split}: {beton.path} ({beton.num_records} records, {info.num_examples} after class rates)")
    return {"split": split, "path": str(beton.path), "records": beton.num_records, "examples": info.num_examples,
            "num_classes": info.num_classes}
