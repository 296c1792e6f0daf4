"""Flow ``split_shift``: divide a shifted split into in-support and out-of-support parts and report ER on each.

Reads like Section 5.2 of the paper: a domain classifier learns to tell reference from shifted
examples (learning rate by held-out AUROC), k-fold cross-fitting scores every example with a
model that never saw it, one temperature calibrates the scores, density ratios r = p/(1-p) ·
n_ref/n_shift follow, and shifted examples with r ≥ 1/ε are out-of-support.  The membership goes
into the experiment store (``subsplits/<split>.parquet``), so every metric and ER function
accepts ``sub_split="in_support" | "out_of_support"``; then ER per part for every model group.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from prefect import flow, get_run_logger
from prefect.futures import wait
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from askshift.flows.naming import run_name, split_name
from askshift.lib.data.specs import ExperimentSpec
from askshift.lib.report.markdown import inline_images, note_markdown
from askshift.lib.report.support import (
    SupportER,
    example_grid,
    pick_examples,
    probability_histogram,
    section_markdown,
    support_er,
)
from askshift.lib.store import ExperimentStore, StoreOptions, atomic_write_text, store_options_validator
from askshift.lib.support.classifier import (
    DomainSetup,
    load_domain_data,
    parity_spec,
    position_images,
    shifted_is_labelled,
)
from askshift.lib.support.ratios import (
    DEFAULT_EPSILON,
    DEFAULT_FOLDS,
    EPSILONS,
    DomainClassifierConfig,
    SupportEstimate,
    assemble_cross_fit,
    check_epsilons,
    choose_lr,
    default_classifier,
    estimate_support,
    fold_plan,
    separation_failure,
)
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.reporting import (
    ProgressBar,
    artifact_key,
    artifact_url,
    experiment_key,
    publish_result,
    store_words,
)
from askshift.tasks.support import DOMAIN_IMAGES, fit_fold, fit_lr_point


class SplitConfig(BaseModel):
    """Parameters of the split flow (validated before any compute)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: ExperimentSpec = Field(description="reference distribution and shifted targets (askshift.lib.data.specs)")
    targets: tuple[str, ...] | None = Field(None, description="targets to split (default: every target of the spec)")
    reference_split: str = Field("source_train", description="split the reference sample is drawn from")
    eval_reference_split: str = Field("source_val", description="reference split of the ER line")
    classifier: DomainClassifierConfig = Field(
        None, description="domain classifier (default: cnn:small on CPU, CLIP ViT-L/14 LAION-2B LP-FT on CUDA)")
    folds: int = Field(DEFAULT_FOLDS, ge=2, description="cross-fitting folds (GroupKFold when the shifted set has groups)")
    epsilons: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field(
        EPSILONS, json_schema_extra={"minItems": 1}, description="ε values whose split sizes are tabulated, each "
                                                                "more than 0 and less than 1")
    epsilon: float = Field(DEFAULT_EPSILON, gt=0, lt=1, description="ε of the stored split, more than 0 and less "
                                                                   "than 1 (0.2: paper; 0.1: released notebook)")
    store: StoreOptions = Field(StoreOptions(), description="where results (STORE/EXPERIMENT/) and the .beton "
                                                            "cache go")
    experiment: str | None = Field(None, description="experiment folder (default: the spec's name)")
    device: str = Field("cpu", json_schema_extra={"pattern": r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"},
                        description="device of the domain classifier: cpu, cuda, cuda:1, ...")
    num_workers: int = Field(1, ge=1, description="FFCV decoding threads per task")
    baseline_group: str = Field("baseline", description="group whose models define the ER line")
    examples_per_row: int = Field(8, ge=0, le=32, description="images per row of the example grid")
    bootstrap_examples: int = Field(0, ge=0, description="per-part ER: also an example-level bootstrap with this many "
                                    "resamples (examples of every split jointly, and baseline models); 0 = off")
    seed: int = Field(0, ge=0, description="seed of the folds, the classifier and the example grid; 0 or more")

    _store = store_options_validator()

    @model_validator(mode="before")
    @classmethod
    def _classifier_for_device(cls, values: Any) -> Any:
        # Without an explicit classifier, the device decides: the paper's CLIP LP-FT on CUDA, a small CNN on CPU.
        if isinstance(values, dict) and values.get("classifier") is None:
            values = {**values, "classifier": default_classifier(str(values.get("device") or "cpu"))}
        return values

    @field_validator("epsilons")
    @classmethod
    def _eps_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return check_epsilons(value)

    @field_validator("epsilon")
    @classmethod
    def _one_eps(cls, value: float) -> float:
        return check_epsilons([value])[0]

    def experiment_name(self) -> str:
        return self.experiment or self.spec.name

    def target_names(self) -> tuple[str, ...]:
        names = self.targets or tuple(self.spec.targets)
        unknown = [t for t in names if t not in self.spec.targets]
        if unknown:
            raise ValueError(f"unknown target(s) {', '.join(unknown)}; the spec has: {', '.join(self.spec.targets)}")
        return names

    def setup(self, target: str) -> DomainSetup:
        # Both sides stored alike, so the classifier cannot tell them apart by file format or size.
        spec = parity_spec(self.spec, self.reference_split, f"{target}_val")
        return DomainSetup(spec=spec, reference_split=self.reference_split, shifted_split=f"{target}_val",
                           cache_dir=str(self.store.resolved_cache_dir()), classifier=self.classifier, folds=self.folds,
                           seed=self.seed)


def _publish(key: str, markdown: str, base: Path, sizes, where: str) -> None:
    """Markdown (with images inlined) and the ε table as Prefect artifacts; never fails the flow."""
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        create_markdown_artifact(key=key, markdown=inline_images(markdown, base), description=f"support split, {where}")
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in sizes.to_dicts()]
        create_table_artifact(key=f"{key}-sizes", table=rows, description=f"split sizes per epsilon, {where}")
    except Exception as exc:  # noqa: BLE001 -- artifacts are a view; the store holds the results
        get_run_logger().warning(f"could not publish artifacts for {key}: {exc}")


def support_key(experiment: str, store: str, target: str) -> str:
    """``EXPERIMENT[-STOREHASH]-support-TARGET`` (askshift.tasks.reporting: the key rule)."""
    return artifact_key(f"{experiment_key(experiment, store)}-support-{target}")


def publish_split_result(headline: str, exp: ExperimentStore, store: str, results: dict[str, dict[str, Any]]) -> None:
    """The result note of a split run: per target the sizes of both parts and the classifier's AUROC, with paths."""
    parts = [f"{r['split']}: {r['in_support']} in-support, {r['out_of_support']} out-of-support (AUROC {r['auroc']:.3f}"
             + ("" if r.get("separated", True) else ", classifier did not separate the sets") + ")"
             for r in results.values()]
    items: dict[str, Any] = {}
    for target, r in results.items():
        key = support_key(exp.name, store, target)
        items[f"{target}: section (artifact [{key}]({artifact_url(key)}))"] = Path(r["section"])
        items[f"{target}: membership table"] = Path(r["subsplit"])
    items["experiment folder"] = exp.root
    publish_result(f"{experiment_key(exp.name, store)}-split-result", note_markdown(headline, "; ".join(parts), items),
                   description=f"{headline}: result, experiment {exp.name}, {store_words(store)}")


def split_one_target(config: SplitConfig, exp: ExperimentStore, target: str, log: Callable[[str], None]) -> dict[str, Any]:
    """tune -> folds -> calibrate -> ratios -> sub-split -> ER per part -> report section."""
    import polars as pl

    setup = config.setup(target)
    split = setup.shifted_split
    data = load_domain_data(setup)
    log(f"{split}: {data.n_reference} reference vs {data.n_shifted} shifted examples, {config.folds} folds"
        + (" (GroupKFold)" if data.grouped else ""))
    store, name = str(config.store.resolved_root()), exp.name

    lrs = config.classifier.lrs
    tuning = None
    if len(lrs) > 1:
        futures = [fit_lr_point.submit(store, name, setup, lr, config.device, config.num_workers) for lr in lrs]
        wait(futures)
        aurocs = [f.result() for f in futures]
        lr = choose_lr(list(zip(lrs, aurocs)))
        tuning = pl.DataFrame({"lr": list(lrs), "auroc": aurocs})
        exp.write_table(f"support_tuning_{target}", tuning, config=setup)
        log(f"{split}: learning rate {lr:g} (held-out AUROC " + ", ".join(f"{a:.3f}" for a in aurocs) + ")")
    else:
        lr = lrs[0]

    plan = fold_plan(data, config.folds, config.seed)
    futures = [fit_fold.submit(store, name, setup, k, lr, config.device, config.num_workers) for k in range(config.folds)]
    wait(futures)
    scores, distances, nearest = [], [], []
    for fold, future in zip(plan, futures):
        out = future.result()
        positions = np.asarray(out["position"], np.int64)
        if not np.array_equal(np.sort(positions), np.sort(fold.heldout)):
            raise RuntimeError(f"fold {fold.fold} scored other examples than its held-out part; "
                               f"delete {exp.root / 'runs'} entries of this split and re-run")
        row = {int(p): j for j, p in enumerate(positions.tolist())}
        order = np.array([row[int(p)] for p in fold.heldout])
        scores.append(np.asarray(out["logit"], np.float64)[order])
        distances.append(np.asarray(out["nn_distance"], np.float64)[order])
        nearest.append(np.asarray(out["nn_position"], np.float64)[order])
    logits = assemble_cross_fit(len(data), plan, scores)
    # Each position's distance to its nearest reference example, in the feature space of the fold model that did not
    # train on it (a second opinion on support: askshift.lib.support.evidence.knn_second_opinion).
    nn_distance = assemble_cross_fit(len(data), plan, distances)
    nn_position = assemble_cross_fit(len(data), plan, nearest).astype(np.int64)
    fold_of = np.empty(len(data), np.int64)
    for fold in plan:
        fold_of[fold.heldout] = fold.fold

    estimate: SupportEstimate = estimate_support(data, logits, fold_of, config.epsilons, config.epsilon)
    exp.write_subsplit(split, estimate.subsplit_table())
    resolved = {"split_config": config, "lr": lr, "alpha": estimate.calibration.alpha, "auroc": estimate.auroc}
    exp.write_table(f"support_scores_{target}", estimate.scores_table().with_columns(
        pl.Series("nn_distance", nn_distance), pl.Series("nn_position", nn_position)), config=resolved)
    sizes = estimate.sweep()
    exp.write_table(f"support_sizes_{target}", sizes, config=resolved)
    failure = separation_failure(estimate.auroc)
    log(f"{split}: AUROC {estimate.auroc:.3f}, alpha {estimate.calibration.alpha:.4g}"
        + (f" -- WARNING: {failure}" if failure else ""))

    if shifted_is_labelled(setup):
        er = support_er(exp, config.eval_reference_split, split, config.baseline_group,
                        bootstrap_examples=config.bootstrap_examples, seed=config.seed)
    else:  # accuracy needs labels: a folder of unlabeled images gets a label-free estimate instead (askshift ask)
        er = SupportER(pl.DataFrame(), pl.DataFrame(), {"all": f"{split} has no labels: no accuracy, no ER"})
    if er.groups.height:
        exp.write_table(f"support_er_{target}", er.groups, config=resolved)
        if er.fits.height:
            exp.write_table(f"support_er_fits_{target}", er.fits, config=resolved)
        exp.write_table(f"support_er_models_{target}", er.models, config=resolved)

    plots = {"calibrated probabilities": probability_histogram(estimate, exp.plot_path(f"support_hist_{target}"),
                                                               title=f"{split}: domain classifier")}
    if config.examples_per_row:
        picked = pick_examples(estimate, None, config.examples_per_row, config.seed)
        rows = [(label, position_images(setup, data, picked[label], cache=DOMAIN_IMAGES, pool=LOADER_POOL))
                for label in ("reference", "in-support", "out-of-support")]
        plots["examples"] = example_grid(rows, exp.plot_path(f"support_examples_{target}"),
                                         title=f"{split} at ε = {config.epsilon:g}")
    markdown = section_markdown(target, split, estimate, lr, tuning, er, plots, exp.root, config.classifier.model)
    section_path = atomic_write_text(exp.root / f"support_{target}.md", markdown)

    _publish(support_key(exp.name, store, target), markdown, exp.root, sizes,
             f"experiment {exp.name}, {store_words(store)}")
    chosen = sizes.filter(pl.col("epsilon") == config.epsilon).row(0, named=True)
    return {"split": split, "lr": lr, "auroc": estimate.auroc, "alpha": estimate.calibration.alpha,
            "separated": failure is None, "in_support": chosen["in_support"], "out_of_support": chosen["out_of_support"],
            "section": str(section_path), "subsplit": str(exp.subsplit_path(split))}


@flow(name="split_shift", log_prints=True, flow_run_name=run_name(split_name))
def split_shift(config: SplitConfig) -> dict[str, dict[str, Any]]:
    """Split every chosen target of ``config.spec`` into in-support and out-of-support parts; the run the user
    opened gets the result note ``KEY-split-result`` and a progress bar (one step per target)."""
    logger = get_run_logger()
    store = str(config.store.resolved_root())
    exp = config.store.experiment(config.experiment_name())
    targets = config.target_names()
    # Every target's input is checked (classes, sizes, folds) before the first model trains.
    for target in targets:
        load_domain_data(config.setup(target))
    exp.write_config(config, name="split_config")
    headline = split_name({"config": config})
    progress = ProgressBar(f"{experiment_key(exp.name, store)}-split-progress", f"{headline}: targets",
                           total=len(targets))
    results = {}
    for t in targets:
        results[t] = split_one_target(config, exp, t, logger.info)
        progress.advance(what=t)
    publish_split_result(headline, exp, store, results)
    return results


__all__ = ["SplitConfig", "split_shift", "split_one_target"]
