"""Prefect tasks of the split flow: "fit/score one learning-rate grid point", "fit one fold and score its held-out part".

Both are content-addressed runs in the experiment store (``runs/support-<kind>-<hash>/``): the
scores land in ``scores.parquet`` and a ``done`` marker, so a relaunched flow skips finished
folds and a killed one resumes from its newest epoch checkpoint.
"""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.store import ExperimentStore, Store, atomic_write_parquet
from askshift.lib.support.classifier import (
    DomainImageCache,
    DomainSetup,
    domain_images,
    fit_and_score,
    load_domain_data,
)
from askshift.lib.support.ratios import auroc, fold_plan, tuning_fold
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.owned import ProcessOwned
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.tags import GPU_TAG


class TaskImageCache(ProcessOwned, DomainImageCache):
    """The split tasks' image cache: it travels to a Dask worker as that worker's own (``askshift.tasks.owned``)."""

    _global = (__name__, "DOMAIN_IMAGES")


# The folds and learning-rate points of a split, run as threads of one process, read the in-memory domain-classifier
# images once; the two most recent sets are kept (the split flow's example grid reads them too).
DOMAIN_IMAGES = TaskImageCache(max_entries=2)


NEIGHBOUR_COLUMNS = ("nn_distance", "nn_position")


def _scores_done(exp: ExperimentStore, run_id: str, columns: tuple[str, ...] = ()):
    """The stored scores of a finished run, None when the run is not done or lacks ``columns`` (a fold scored before
    the nearest-neighbour columns existed: refitting resumes from its last checkpoint, so it only re-scores)."""
    import polars as pl

    if exp.is_done(run_id):
        scores = pl.read_parquet(exp.run_dir(run_id) / "scores.parquet")
        if all(c in scores.columns for c in columns):
            return scores
    return None


def _fit(exp: ExperimentStore, setup: DomainSetup, run_id: str, data, train, heldout, lr: float, device: str,
         num_workers: int, log, neighbours: bool = False):
    """Train, score the held-out positions (and, with ``neighbours``, their nearest reference positions), store the
    scores and mark the run done; returns the scores table."""
    import polars as pl

    images = domain_images(setup, data, num_workers, cache=DOMAIN_IMAGES, pool=LOADER_POOL)
    out = fit_and_score(setup, data, images, train, heldout, lr, exp.run_dir(run_id) / "checkpoints", device, log,
                        neighbours=neighbours)
    logits, *near = out if neighbours else (out,)
    scores = pl.DataFrame({"position": heldout, "domain": data.domain[heldout], "logit": logits,
                           **dict(zip(NEIGHBOUR_COLUMNS, near))})
    atomic_write_parquet(exp.run_dir(run_id) / "scores.parquet", scores)
    exp.mark_done(run_id, {"positions": int(heldout.size), "lr": lr})
    return scores


@task(name="domain classifier: one learning rate", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name="tune {setup.shifted_split}: lr={lr:g}")
def fit_lr_point(store: str, experiment: str, setup: DomainSetup, lr: float, device: str = "cpu",
                 num_workers: int = 1) -> float:
    """Train on the tuning split at ``lr`` and return the held-out AUROC (reference vs shifted)."""
    logger = get_run_logger()
    exp = Store(store).experiment(experiment)
    run_id = setup.run_id("tune", lr=lr)
    with exp.run_lock(run_id):  # an identical fit running elsewhere on this store is waited for, then reused
        done = _scores_done(exp, run_id)
        if done is None:
            data = load_domain_data(setup)
            fold = tuning_fold(data, setup.folds, setup.seed)
            done = _fit(exp, setup, run_id, data, fold.train, fold.heldout, lr, device, num_workers, logger.info)
    value = auroc(done["domain"].to_numpy(), done["logit"].to_numpy())
    logger.info(f"lr={lr:g}: held-out AUROC {value:.3f}")
    return value


@task(name="domain classifier: one fold", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name="fold {fold} of {setup.shifted_split}")
def fit_fold(store: str, experiment: str, setup: DomainSetup, fold: int, lr: float, device: str = "cpu",
             num_workers: int = 1) -> dict[str, list]:
    """Train on every fold but ``fold`` and score ``fold``'s examples: their positions, domain logits, and distance
    to (and position of) the nearest reference example in this fold model's feature space."""
    logger = get_run_logger()
    exp = Store(store).experiment(experiment)
    run_id = setup.run_id("fold", fold=fold, lr=lr)
    with exp.run_lock(run_id):
        done = _scores_done(exp, run_id, NEIGHBOUR_COLUMNS)
        if done is None:
            data = load_domain_data(setup)
            plan = fold_plan(data, setup.folds, setup.seed)[fold]
            done = _fit(exp, setup, run_id, data, plan.train, plan.heldout, lr, device, num_workers, logger.info,
                        neighbours=True)
    logger.info(f"fold {fold}: scored {done.height} held-out examples")
    return {c: done[c].to_list() for c in ("position", "logit", *NEIGHBOUR_COLUMNS)}
