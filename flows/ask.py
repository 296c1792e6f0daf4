"""Flow ``ask``: ask your shift, with unlabeled shifted images, whether pre-training is likely to help.

The paper's answer needs no labels for the shifted data: split the shift into the part the reference covers
(in-support) and the part it does not (out-of-support) with the split flow's cross-fitted, calibrated domain
classifier; pre-training raised effective robustness on out-of-support shifts, not on in-support ones.  The
verdict follows from the classifier's AUROC and the out-of-support share (``askshift.lib.support.evidence``); the
report gives the evidence (reliability, the share over ε with an interval, example grids, a nearest-neighbour
second opinion) and, when trained models exist, a label-free ER estimate per part (average thresholded confidence,
the same within the class-proportion bound, and agreement-on-the-line).
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from askshift.flows.backends import on_caller_backend
from askshift.flows.finetune import FinetuneConfig, check_config, pretrained_finetune
from askshift.flows.naming import ask_name, run_name
from askshift.flows.split import SplitConfig, split_one_target
from askshift.lib.data.datasets import dataset_info
from askshift.lib.report.ask import ask_report, estimate_er_per_part, models_with_reference_predictions
from askshift.lib.store import atomic_write_text
from askshift.lib.support.classifier import load_domain_data, position_images
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.prediction import predict_on_spec
from askshift.tasks.reporting import experiment_key, publish_markdown, publish_result, store_words
from askshift.tasks.support import DOMAIN_IMAGES

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
    estimate_er: bool = Field(False, description="when the store holds no trained models for the label-free ER: "
                              "train them first in the ask experiment (the finetune flow with its defaults: "
                              "from-scratch baselines, then cnn:small fine-tuned from its local glyph pre-training)")


def estimate_config(config: AskConfig, shift: str, experiment: str | None = None) -> FinetuneConfig:
    """The finetune flow's config behind ``--estimate-er``: its defaults, on the ask's reference data and store."""
    split = config.split
    return FinetuneConfig(dataset=split.spec.reference.dataset, shift=shift, root=split.spec.reference.root,
                          store=split.store.resolved(), experiment=experiment, device=split.device, seed=split.seed,
                          report=False)


def check_estimate_inputs(config: AskConfig) -> None:
    """What ``--estimate-er`` needs, checked before any compute (raises one line): a reference with labels to train
    on, and a fine-tuning config that validates (the spec file it will read is written when the run starts)."""
    reference = config.split.spec.reference.dataset
    if not dataset_info(reference).labelled:
        raise ValueError(f"--estimate-er trains models on the reference data, and dataset {reference!r} has no labels: "
                         "use a labelled reference (e.g. imagefolder) or drop --estimate-er")
    check_config(estimate_config(config, shift="out_of_support"))  # names, device, recipe: the same checks


def train_models_for_estimate(config: AskConfig, exp, log) -> None:
    """``--estimate-er`` without models: the finetune flow (baselines first, then the pre-trained groups) on the ask
    spec, in the ask experiment; the shifted images are predicted but never scored (they have no labels)."""
    spec_path = exp.root / "ask_spec.json"
    atomic_write_text(spec_path, config.split.spec.model_dump_json(indent=2))
    log("label-free ER: no trained models yet (--estimate-er): training baselines and fine-tuned models on the "
        "reference data")
    on_caller_backend(pretrained_finetune)(estimate_config(config, str(spec_path), exp.name))


def label_free_er(config: AskConfig, exp, log) -> dict[str, Any] | None:
    """Label-free estimates (ATC, ATC within the class bound, ALine-D) of every model of ``models_from`` on the
    shifted images, per part; None without models."""
    store = str(config.split.store.resolved_root())
    source = config.split.store.experiment(config.models_from) if config.models_from else exp
    models = models_with_reference_predictions(source, config.split.eval_reference_split)
    if not models and config.estimate_er and not config.models_from:
        train_models_for_estimate(config, exp, log)
        models = models_with_reference_predictions(source, config.split.eval_reference_split)
    if not models:
        return None
    split = f"{TARGET}_val"
    spec = config.split.setup(TARGET).spec
    predict_on_spec.submit(store, source.name, models, split, spec, str(config.split.store.resolved_cache_dir()),
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
    store = str(split_config.store.resolved_root())
    exp = split_config.store.experiment(split_config.experiment_name())
    setup = split_config.setup(TARGET)
    data = load_domain_data(setup)  # classes, sizes and folds checked before the first model trains
    exp.write_config(config, name="ask_config")
    result = split_one_target(split_config, exp, TARGET, logger.info)
    er = label_free_er(config, exp, logger.info)
    scores = exp.read_table(f"support_scores_{TARGET}")

    def images(positions):
        return position_images(setup, data, positions, cache=DOMAIN_IMAGES, pool=LOADER_POOL)

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


__all__ = ["AskConfig", "TARGET", "ask", "check_estimate_inputs", "estimate_config"]
