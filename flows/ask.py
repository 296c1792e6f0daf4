"""Flow ``ask``: ask your shift, with unlabeled shifted images, whether pre-training is likely to help.

The paper's answer needs no labels for the shifted data: split the shift into the part the reference covers
(in-support) and the part it does not (out-of-support) with the split flow's cross-fitted, calibrated domain
classifier; pre-training raised effective robustness on out-of-support shifts, not on in-support ones.  The
verdict follows from the classifier's AUROC and the out-of-support share (``askshift.lib.support.evidence``); the
report gives the evidence (reliability, the share over ε with an interval, example grids, a nearest-neighbour
second opinion) and, when trained models exist, a label-free ER estimate per part (average thresholded confidence).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from askshift.flows.naming import ask_name, run_name
from askshift.flows.split import SplitConfig, split_one_target
from askshift.lib.models.evaluation import predict_to_store
from askshift.lib.report.ask import ask_report, estimate_er_per_part, models_with_reference_predictions
from askshift.lib.store import Store, atomic_write_text
from askshift.lib.support.classifier import load_domain_data, position_images
from askshift.tasks.reporting import experiment_key, publish_markdown, publish_result, store_words
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.support import DOMAIN_IMAGES
from askshift.tasks.tags import GPU_TAG

TARGET = "shifted"


class AskConfig(BaseModel):
    """Parameters of the ask flow (validated before any compute)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: SplitConfig = Field(description="the reference data, the shifted images (target 'shifted'), the domain "
                                           "classifier, epsilon and the store")
    models_from: str | None = Field(None, description="experiment folder of the store whose trained models (groups "
                                    "baseline and pre-trained ones) give a label-free ER estimate on the shifted "
                                    "images; empty: the ask experiment's own models, if any")
    resamples: int = Field(2000, ge=100, description="bootstrap resamples of the shifted examples for the "
                                                     "out-of-support share's interval")
    knn_quantile: float = Field(0.99, gt=0.5, lt=1, description="second opinion: a shifted example is far when its "
                                "nearest reference neighbour is farther than this quantile of the reference's own")
    examples: int = Field(8, ge=1, le=32, description="images per row of the example grids")


@task(name="predict models on the shifted images", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE,
      tags=[GPU_TAG], retry_condition_fn=retry_if_transient, task_run_name="predict {experiment} on {split}")
def predict_models(store: str, experiment: str, model_ids: list[str], split: str, spec: Any, cache_dir: str,
                   device: str = "auto") -> list[str]:
    """Logits of registered models on one split of ``spec`` (stored in their own experiment; skipped where present)."""
    exp = Store(store).experiment(experiment)
    todo = [m for m in model_ids if not exp.has_predictions(m, split)]
    if todo:
        predict_to_store(exp, todo, split, spec, cache_dir, device=device)
    return [str(exp.predictions_path(m, split)) for m in model_ids]


def label_free_er(config: AskConfig, exp, log) -> dict[str, Any] | None:
    """ATC estimates of every model of ``models_from`` on the shifted images, per part; None without models."""
    store = str(Store(config.split.store).root)
    source = Store(store).experiment(config.models_from) if config.models_from else exp
    models = models_with_reference_predictions(source, config.split.eval_reference_split)
    if not models:
        return None
    split = f"{TARGET}_val"
    spec = config.split.setup(TARGET).spec
    predict_models.submit(store, source.name, models, split, spec, config.split.resolved_cache_dir(),
                          config.split.device).result()
    log(f"label-free ER: {len(models)} models of {source.name} predicted on the shifted images")
    return estimate_er_per_part(source, exp.read_subsplit(split), models, config.split.eval_reference_split, split,
                                config.split.baseline_group)


@flow(name="ask", log_prints=True, flow_run_name=run_name(ask_name))
def ask(config: AskConfig) -> dict[str, Any]:
    """Split the shifted images against the reference, then the verdict, its evidence and (with models) a label-free
    ER estimate; writes ``ask.md`` in the experiment folder and publishes it (``KEY-ask``) with the result note."""
    logger = get_run_logger()
    split_config = config.split
    store = str(Store(split_config.store).root)
    exp = Store(store).experiment(split_config.experiment_name())
    setup = split_config.setup(TARGET)
    data = load_domain_data(setup)  # classes, sizes and folds checked before the first model trains
    exp.write_config(config, name="ask_config")
    result = split_one_target(split_config, exp, TARGET, logger.info)
    er = label_free_er(config, exp, logger.info)
    scores = exp.read_table(f"support_scores_{TARGET}")

    def images(positions):
        return position_images(setup, data, positions, cache=DOMAIN_IMAGES)

    report = ask_report(exp, scores, images, epsilon=split_config.epsilon, epsilons=split_config.epsilons,
                        auroc_value=result["auroc"], resamples=config.resamples, quantile=config.knn_quantile,
                        examples=config.examples, seed=split_config.seed, er=er, classifier=split_config.classifier.model)
    path = atomic_write_text(exp.root / "ask.md", report.markdown)
    stem = experiment_key(exp.name, store)
    where = f"experiment {exp.name}, {store_words(store)}"
    try:
        key = publish_markdown(f"{stem}-ask", report.markdown, base_dir=str(exp.root),
                               description=f"ask: will pre-training help? ({path}); {where}")
        publish_result(f"{stem}-ask-result", f"**{report.verdict}**: {report.headline}\n\nReport: `{path}`",
                       description=f"ask {exp.name}: the verdict; {where}")
    except Exception as exc:  # noqa: BLE001 -- artifacts are a view; the store holds the report
        logger.warning(f"could not publish the ask artifacts: {exc}")
        key = None
    print(f"report: {path}")
    return {**report.summary, "report": str(path), "artifact": key, "split": result["split"]}


def ask_report_path(config: AskConfig) -> Path:
    return Store(config.split.store).experiment(config.split.experiment_name()).root / "ask.md"


__all__ = ["AskConfig", "TARGET", "ask", "predict_models"]
