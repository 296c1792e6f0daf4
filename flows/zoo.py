"""Flow ``zoo_evaluate``: published timm classifiers predicted on a reference and shifted sets, split, ER per part.

Reads like the zoo part of Section 5.2: every model of the zoo (the paper's 78 from-scratch and 55 pre-trained
ImageNet models by default) is predicted on the reference split and on each shifted split, one task per
(model, split), with timm's own evaluation transform of each model; the split flow then divides each shifted split
into in-support and out-of-support parts (or a stored split is reused), and effective robustness is reported on
each part with the from-scratch models as the baseline.  A shifted set that covers only some classes (ImageNet-R)
follows ``askshift.lib.data.class_subset``: the reference is restricted to those classes and predictions on both are masked.
"""
from __future__ import annotations

from typing import Any

import polars as pl
from prefect import flow, get_run_logger
from prefect.futures import wait
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from askshift.flows.naming import run_name, zoo_name
from askshift.flows.split import SplitConfig, split_one_target
from askshift.lib.data.class_subset import restrict_reference, spec_class_subset
from askshift.lib.report.markdown import note_markdown
from askshift.lib.report.support import support_er
from askshift.lib.robustness.er import accuracy_pairs, effective_robustness
from askshift.lib.robustness.lines import ERInputError
from askshift.lib.robustness.metrics import metrics_table
from askshift.lib.robustness.paper_zoo import BASELINE_GROUP, PRETRAINED_GROUP, paper_zoo
from askshift.lib.store import ExperimentStore
from askshift.tasks.reporting import experiment_key, publish_result, store_words
from askshift.tasks.zoo import predict_zoo_model


class ZooConfig(BaseModel):
    """Parameters of ``zoo_evaluate``: which published timm models, on which reference and shifted sets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: SplitConfig = Field(description="the data (spec), store and split settings; its targets are the shifts")
    baseline_models: tuple[str, ...] | None = Field(
        None, description="from-scratch models (timm arch.tag); default the paper's 78 ImageNet models")
    pretrained_models: tuple[str, ...] | None = Field(
        None, description="pre-trained models (timm arch.tag); default the paper's 55")
    weights_dir: str | None = Field(None, description="folder of ARCH.TAG.safetensors|.pth|.pt|.bin weight files "
                                                      "(default: the hub, which needs network access)")
    num_classes: int | None = Field(None, ge=1, description="head size when the weight files are not ImageNet-1k")
    resolution: int | None = Field(
        None, ge=8, validation_alias=AliasChoices("resolution", "input_size"),
        description="image side the loader makes instead of each model's own (cheap CPU checks; None keeps the "
                    "published size); models with a fixed input size (ViTs) still resize to theirs")
    batch_size: int = Field(256, ge=1, description="prediction batch size")
    run_split: bool = Field(True, description="split the shifts (or reuse stored splits) and report ER per part")

    @property
    def input_size(self) -> int | None:
        """The former name of ``resolution`` (still accepted as a parameter)."""
        return self.resolution

    def model_groups(self) -> dict[str, str]:
        baseline = self.baseline_models if self.baseline_models is not None else tuple(paper_zoo(BASELINE_GROUP))
        pretrained = self.pretrained_models if self.pretrained_models is not None else tuple(paper_zoo(PRETRAINED_GROUP))
        both = set(baseline) & set(pretrained)
        if both:
            raise ValueError(f"model(s) listed as both baseline and pre-trained: {', '.join(sorted(both))}")
        return {**{m: BASELINE_GROUP for m in baseline}, **{m: PRETRAINED_GROUP for m in pretrained}}


def whole_split_er(exp: ExperimentStore, reference_split: str, shifted_split: str,
                   baseline_group: str = "baseline") -> tuple[pl.DataFrame, str | None]:
    """ER per group on the whole shifted split (no in/out-of-support parts): (table in the support_er layout, message)."""
    metrics = metrics_table(exp, splits=[reference_split, shifted_split])
    try:
        result = effective_robustness(accuracy_pairs(metrics, reference_split, shifted_split),
                                      baseline_group=baseline_group)
    except ERInputError as exc:
        return pl.DataFrame(), str(exc)
    n = int(metrics.filter(pl.col("split") == shifted_split)["n"].max())
    table = result.groups.select("group", "n_models", "effective_robustness", "er_lower", "er_upper").with_columns(
        pl.lit("all").alias("sub_split"), pl.lit(n).alias("n_examples"))
    return table.select("sub_split", *[c for c in table.columns if c != "sub_split"]), None


@flow(name="zoo_evaluate", log_prints=True, flow_run_name=run_name(zoo_name))
def zoo_evaluate(config: ZooConfig) -> dict[str, Any]:
    """Predict every zoo model on the reference and shifted splits (one task per (model, split)), then the
    split flow's in/out-of-support parts and ER per part (baseline = the from-scratch models)."""
    logger = get_run_logger()
    split_config = config.split
    groups = config.model_groups()
    targets = split_config.target_names()
    cache_dir = str(split_config.store.resolved_cache_dir())
    # ImageNet-R and the like: one convention for reference and shifted set (askshift.lib.data.class_subset).
    classes = spec_class_subset(split_config.spec, cache_dir, targets)
    if classes is not None:
        split_config = split_config.model_copy(update={"spec": restrict_reference(split_config.spec, classes)})
        logger.info(f"the shifted set covers {len(classes)} classes: the reference is restricted to them and "
                    f"predictions on both are taken among them")
    resolved = config.model_copy(update={"split": split_config})
    exp = split_config.store.experiment(split_config.experiment_name())
    splits = [split_config.eval_reference_split, *(f"{t}_val" for t in targets)]
    exp.write_config(resolved, name="zoo_config")
    for model, group in groups.items():
        exp.register_model(model, group, architecture=f"timm-zoo:{model}", source="zoo_evaluate")
    store = str(split_config.store.resolved_root())
    futures = [predict_zoo_model.submit(store, exp.name, model, split, split_config.spec, cache_dir,
                                        config.weights_dir, config.num_classes, split_config.device,
                                        config.batch_size, split_config.num_workers, config.resolution, targets)
               for model in groups for split in splits]
    wait(futures)
    failed = [f for f in futures if f.state.is_failed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} zoo predictions failed; first: "
                           f"{failed[0].result(raise_on_failure=False)}")
    logger.info(f"predicted {len(groups)} models on {', '.join(splits)}")
    out: dict[str, Any] = {}
    for target in targets:
        split = f"{target}_val"
        if config.run_split:
            summary = split_one_target(split_config, exp, target, logger.info)  # writes support_er_<target>
            er = support_er(exp, split_config.eval_reference_split, split, split_config.baseline_group)
            out[target] = {**summary, "er": er.groups.to_dicts(), "messages": er.messages}
        elif exp.subsplit_path(split).exists():
            er = support_er(exp, split_config.eval_reference_split, split, split_config.baseline_group)
            exp.write_table(f"support_er_{target}", er.groups, config=resolved)
            out[target] = {"split": split, "er": er.groups.to_dicts(), "messages": er.messages}
        else:
            table, message = whole_split_er(exp, split_config.eval_reference_split, split, split_config.baseline_group)
            if table.height:
                exp.write_table(f"zoo_er_{target}", table, config=resolved)
            out[target] = {"split": split, "er": table.to_dicts(), "messages": {"all": message} if message else {}}
    publish_zoo_result(config, exp, store, groups, out)
    return out


def publish_zoo_result(config: ZooConfig, exp: ExperimentStore, store: str, groups: dict[str, str],
                       out: dict[str, Any]) -> None:
    """The result note: ER per part and group for every shifted split, and where the tables are."""
    headline = zoo_name({"config": config})
    parts = []
    for target, result in out.items():
        cells = [f"{r['group']} {r.get('sub_split', 'all')} ER {100 * r['effective_robustness']:+.2f}%"
                 for r in result.get("er", []) if r.get("group") != config.split.baseline_group
                 and isinstance(r.get("effective_robustness"), float)]
        parts.append(f"{result['split']}: " + (", ".join(cells) or "no ER"))
    items = {"experiment folder": exp.root, "tables": exp.root / "tables"}
    publish_result(f"{experiment_key(exp.name, store)}-zoo-result", note_markdown(
        headline, f"{len(groups)} models; " + "; ".join(parts), items),
        description=f"{headline}: result, experiment {exp.name}, {store_words(store)}")


__all__ = ["ZooConfig", "whole_split_er", "zoo_evaluate"]
