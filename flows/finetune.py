"""Flows ``pretrained_finetune`` and ``hparam_ablation``: fine-tune pre-trained models, pick the LR, train copies, ER."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable

from prefect import flow
from prefect.futures import as_completed, wait
from pydantic import BaseModel, ConfigDict, Field, field_validator

from askshift.flows.backends import LocalTaskRunner, on_caller_backend
from askshift.flows.baseline import BaselineConfig, synthetic_shift_baseline
from askshift.flows.naming import ablation_name, finetune_name, run_name
from askshift.flows.report import ReportConfig, publish_report_result, report
from askshift.lib.data.datasets import imagenet_class_names
from askshift.lib.data.loaders import split_info
from askshift.lib.data.specs import get_spec
from askshift.lib.models.families import HUB, model_family
from askshift.lib.models.finetune import (
    FinetuneRun,
    RunOutcome,
    check_weights,
    final_checkpoint,
    plan_run,
    register_run,
    select_best_lr,
    validate_finetune,
)
from askshift.lib.models.pretrain import PretrainConfig
from askshift.lib.models.strategies import (
    MINIATURE,
    PRESETS,
    STRATEGIES,
    FinetuneHparams,
    default_recipe,
    default_strategy,
)
from askshift.lib.names import (
    DATASET_SCHEMA,
    MODEL_SCHEMA,
    SHIFT_SCHEMA,
    FinetunePreset,
    Strategy,
    check_dataset,
    check_model,
    check_shift,
)
from askshift.lib.report.markdown import note_markdown
from askshift.lib.store import StoreOptions, content_hash, safe_name, store_options_validator, to_jsonable
from askshift.tasks.finetune import dfr_one, finetune_one, pretrain_checkpoint
from askshift.tasks.prediction import predict_split
from askshift.tasks.reporting import ProgressBar, experiment_key, publish_result, store_words


class FinetuneConfig(BaseModel):
    """Parameters of the fine-tuning experiment (Prefect renders them as a form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field("digits", json_schema_extra=DATASET_SCHEMA,
                         description="dataset name (askshift datasets): digits, cifar10, imagefolder, npz, wilds:NAME, ...")
    shift: str = Field("out_of_support", json_schema_extra=SHIFT_SCHEMA,
                       description="shift preset (askshift shifts), e.g. out_of_support, tint_p=0.5, or a spec file")
    root: str | None = Field(None, description="dataset folder, for datasets that are not bundled")
    store: StoreOptions = Field(StoreOptions(), description="where results (STORE/EXPERIMENT/), the .beton files "
                                                            "and the pre-trained checkpoints go")
    experiment: str | None = Field(None, description="experiment folder; default: the spec's name (the baseline's)")
    preset: FinetunePreset | None = Field(None, description="paper preset (openai_clip, augreg_in21k): sets models, "
                                                           "strategies, recipe")
    models: tuple[Annotated[str, Field(json_schema_extra=MODEL_SCHEMA)], ...] = Field(
        ("cnn:small",), json_schema_extra={"minItems": 1},
        description="pre-trained models (askshift models), e.g. cnn:small, timm:vit_base_patch16_224, clip:ViT-B-32")
    strategies: tuple[Strategy, ...] = Field(("ft", "lp-ft"), json_schema_extra={"minItems": 1},
                                             description="fine-tuning strategies (askshift models): ft, lp-ft, zs-ft, lp")
    same_arch_control: bool = Field(True, description="also train each architecture from scratch (group scratch-same-arch)")
    pretrained: dict[str, str] = Field(default_factory=dict, description="weights per model: model name, then a "
                                       "weights file (or 'hub'); cnn: models without one use the cached local glyph "
                                       "checkpoint (askshift pretrain)")
    model_options: dict[str, dict[str, float | int | str | bool]] = Field(
        default_factory=dict, description="build options per model: model name, then option names and values")
    hparams: FinetuneHparams | None = Field(None, description="recipe; default: the preset's, the miniature for cnn: models, else the paper's")
    seed: int = Field(0, ge=0, description="seed of the sweep, 0 or more; copies use seed, seed+1, ...")
    pretrain: PretrainConfig | None = Field(None, description="settings of the local glyph checkpoint (default PretrainConfig)")
    baseline: dict[str, Any] = Field(default_factory=dict, description="BaselineConfig overrides if the baseline must be trained first")
    dfr_split: str | None = Field(None, description="also refit each copy's last layer by DFR on this split (needs group labels)")
    resolution: int | None = Field(None, ge=8, description="image side the models read; default: each model's own "
                                   "(timm pretrained_cfg, open_clip preprocess); same-size arrays stay as stored")
    device: str = Field("auto", json_schema_extra={"pattern": r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"},
                        description="auto, cpu, cuda, cuda:N")
    num_workers: int = Field(1, ge=1, description="loader worker threads per task")
    eval_batch_size: int = Field(512, ge=1, description="batch size of the predictions")
    report: bool = Field(True, description="write metrics, ER tables and the report after predicting")

    _store = store_options_validator()

    @field_validator("strategies", "models", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            value = tuple(v.strip() if isinstance(v, str) else v for v in value)
            value = tuple(v for v in value if v != "")
            if not value:
                raise ValueError("give at least one value")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return check_dataset(value)

    @field_validator("shift")
    @classmethod
    def _shift_name(cls, value: str) -> str:
        return check_shift(value)

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            check_model(name)
        return value

    def resolved(self) -> "FinetuneConfig":
        """Preset and default recipe applied; the preset's model replaces the default model."""
        update: dict[str, Any] = {}
        if self.preset:
            p = PRESETS.get(self.preset)
            if self.models == ("cnn:small",):
                update["models"] = (p.model,)
            if self.strategies == ("ft", "lp-ft"):
                update["strategies"] = p.strategies
            update["hparams"] = self.hparams or p.hparams
        elif self.hparams is None:
            update["hparams"] = default_recipe(self.models)
        return self.model_copy(update=update)

    def group_name(self, strategy: str, model: str) -> str:
        group = STRATEGIES.get(strategy).group
        return group if len(self.models) == 1 else f"{group} {model}"


def check_config(config: FinetuneConfig) -> FinetuneConfig:
    """Resolve and validate everything that can be checked before training (raises one-line errors)."""
    config = config.resolved()
    validate_finetune(config.models, config.strategies, config.hparams, preset=config.preset, class_names_needed=False)
    return config


def pretrain_path(config: FinetuneConfig, model: str) -> Path:
    """Where the cached local glyph checkpoint of ``model`` lives (STORE/_cache/pretrained/...)."""
    pre = (config.pretrain or PretrainConfig()).model_copy(update={"model": model})
    return config.store.resolved_cache_dir() / "pretrained" / f"glyphs-{safe_name(model)}-{content_hash(pre)}.pt"


@flow(name="pretrained-finetune", task_runner=LocalTaskRunner(), log_prints=True,
      flow_run_name=run_name(finetune_name))
def pretrained_finetune(config: FinetuneConfig) -> dict:
    """Fine-tune pre-trained models on the reference distribution and measure their effective robustness.

    1. make sure the experiment has its from-scratch baseline (run the baseline flow if not);
    2. sweep the learning rates, one task per (model, strategy, lr) -- LP-FT's probe stage is shared;
    3. pick each (model, strategy)'s LR by reference-validation accuracy and train ``copies`` seeds at it;
    4. predict every copy on every split; 5. report ER with copies aggregated, per group.

    The run the user opened gets a progress bar (one step per training run) and the result note ``KEY-result``.
    """
    config = check_config(config)
    hp = config.hparams
    spec = get_spec(config.shift, dataset=config.dataset, root=config.root)
    store = str(config.store.resolved_root())
    name = config.experiment or spec.name
    exp = config.store.experiment(name)
    cache_dir = str(config.store.resolved_cache_dir())

    ensure_baseline(config, name)
    warn_if_mixing(exp, config)
    exp.write_config(config, name="finetune")
    info = split_info(spec, "source_train", cache_dir)
    class_names = zero_shot_class_names(config.dataset, info.class_names)

    validate_finetune(config.models, config.strategies, hp, preset=config.preset, class_names=class_names)

    weights = resolve_pretrained(config)
    strategies = list(config.strategies) + (["scratch"] if config.same_arch_control and "scratch" not in config.strategies else [])
    common = dict(dataset=config.dataset, shift=config.shift, root=config.root, class_names=class_names)
    submit = dict(device=config.device, num_workers=config.num_workers, eval_batch_size=config.eval_batch_size)

    def plan(model: str, strategy: str, lr: float, seed: int, **overrides: Any) -> FinetuneRun:
        return plan_run(strategy, model, hp, lr, seed, pretrained=weights.get(model), model_options=config.model_options.get(model),
                        train_overrides=overrides or None, resolution=config.resolution, **common)

    # 2. The sweep: every (model, strategy, lr) fans out at once; a probe stage shared by several LP-FT
    # runs is submitted once and they wait for it.
    lr_grid = {s: hp.lr_grid for s in strategies}
    run_future = make_submitter(store, name, cache_dir, submit)
    sweep = {}
    for model in config.models:
        for strategy in strategies:
            for lr in lr_grid[strategy]:
                run = plan(model, strategy, lr, config.seed)
                sweep[(model, strategy, lr)] = (run, run_future(run))
    print(f"sweep: {len(sweep)} runs ({len(config.models)} models x {len(strategies)} strategies x LR grid)")
    headline = finetune_name({"config": config})
    n_copies = len(config.models) * len(strategies) * (hp.copies - 1)
    progress = ProgressBar(f"{experiment_key(name, store)}-finetune-progress", f"{headline}: LR sweep, copies, "
                           "predictions and the report", total=len(sweep) + n_copies + 1 + int(config.report))
    for finished in as_completed([future for _, future in sweep.values()]):
        progress.advance(what="a sweep run" + ("" if finished.state.is_completed() else " (failed)"))

    # 3. Selection and copies.
    selected: dict[tuple[str, str], float] = {}
    copies: list[tuple[str, str, FinetuneRun, Any]] = []
    for model in config.models:
        for strategy in strategies:
            results = [(lr, sweep[(model, strategy, lr)][1].result()["val_accuracy"]) for lr in lr_grid[strategy]]
            best = select_best_lr(results)
            selected[(model, strategy)] = best
            table = ", ".join(f"{lr:g}: {acc:.4f}" for lr, acc in results)
            print(f"{strategy} {model}: source_val accuracy by lr {{{table}}} -> lr {best:g}")
            run0, future0 = sweep[(model, strategy, best)]
            copies.append((model, strategy, run0, future0))
            for k in range(1, hp.copies):
                run = plan(model, strategy, best, config.seed + k)
                copies.append((model, strategy, run, run_future(run)))

    copy_futures = [future for *_, future in copies if all(future is not f for _, f in sweep.values())]
    for finished in as_completed(copy_futures):
        progress.advance(what="a copy" + ("" if finished.state.is_completed() else " (failed)"))
    model_ids = register_and_predict(config, store, name, cache_dir, spec, copies)
    progress.advance(what="predictions")
    print(f"{len(model_ids)} fine-tuned models registered in {exp.root}")

    summary = []
    if config.report:
        result = report(ReportConfig(store=config.store.resolved(), experiment=name))
        progress.advance(what="report")
        summary = result.summary.to_dicts() if result.summary.height else []
        print(format_er_table(summary))
        publish_report_result(result, store, name, headline)
    else:
        publish_result(f"{experiment_key(name, store)}-result", note_markdown(
            headline, f"{len(model_ids)} fine-tuned models registered (no report asked)",
            {"experiment folder": exp.root}), description=f"{headline}: result, experiment {name}, {store_words(store)}")
    return {
        "experiment": str(exp.root),
        "selected": [{"model": m, "strategy": s, "lr": lr} for (m, s), lr in selected.items()],
        "models": model_ids,
        "report": str(exp.report_path) if config.report else None,
    }


# Settings that do not change what a group's models are (which groups run, how many copies, where, how fast).
_RUN_ONLY_FIELDS = {"device", "num_workers", "eval_batch_size", "report", "store", "models", "strategies",
                    "same_arch_control", "dfr_split", "baseline",
                    "cache_dir"}  # a top-level key of finetune.json written before StoreOptions


def warn_if_mixing(exp, config: FinetuneConfig) -> None:
    """Models of every run share their strategy's group: say so when this experiment was fine-tuned differently before."""
    path = exp.root / "finetune.json"
    if not path.exists():
        return
    def core(d: dict) -> dict:
        out = {k: v for k, v in d.items() if k not in _RUN_ONLY_FIELDS}
        if isinstance(out.get("hparams"), dict):
            out["hparams"] = {k: v for k, v in out["hparams"].items() if k != "copies"}
        return out

    before, now = core(exp.read_config("finetune")), core(to_jsonable(config))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        print(f"WARNING: experiment {exp.name!r} already holds models fine-tuned with other settings ({', '.join(changed)} "
              "differ); their groups are shared, so the ER report pools them. Use --experiment NAME for a separate experiment.")


def zero_shot_class_names(dataset: str, names: list[str] | None) -> list[str]:
    """Class names for zero-shot heads: CLIP's curated ImageNet names for ImageNet-1k, the dataset's otherwise."""
    names = list(names or [])
    if dataset.lower().startswith("imagenet") and len(names) == 1000:
        return list(imagenet_class_names())
    return names


def make_submitter(store: str, name: str, cache_dir: str, submit: dict) -> Callable[[FinetuneRun], Any]:
    """``run -> future``: submits each distinct run once (by its hash), after the run it starts from."""
    futures: dict[str, Any] = {}

    def run_future(run: FinetuneRun):
        run_id = run.run_id()
        if run_id not in futures:
            wait_for = [run_future(run.init)] if run.init is not None else []
            futures[run_id] = finetune_one.submit(store, name, run, cache_dir, wait_for=wait_for, **submit)
        return futures[run_id]

    return run_future


def ensure_baseline(config: FinetuneConfig, name: str) -> None:
    """Run (or reuse) the baseline flow when the experiment has no baseline models: ER needs the line."""
    exp = config.store.experiment(name)
    models = exp.models()
    if (models["group"] == "baseline").sum() >= 3:
        return

    values = {"dataset": config.dataset, "shift": config.shift, "root": config.root, "store": config.store.resolved(),
              "experiment": name, "device": config.device, "num_workers": config.num_workers, "report": False,
              "resolution": config.resolution, **config.baseline}
    print(f"experiment {name!r} has no baseline models yet: running the baseline flow first")

    on_caller_backend(synthetic_shift_baseline)(BaselineConfig(**values))


def resolve_pretrained(config: FinetuneConfig) -> dict[str, str | None]:
    """model -> weights.  Families with local pre-training (cnn:) without --pretrained get the cached glyph checkpoint
    (built if needed); clip: names carry their weights (a tag or a file); every other family asks the hub, which
    fails fast offline -- never a silent random initialisation."""
    weights: dict[str, str | None] = {}
    for model in config.models:
        family = model_family(model)
        if model in config.pretrained:
            path = config.pretrained[model]
            if path != "hub" and not Path(path).exists():
                raise FileNotFoundError(f"pre-trained weights {path!r} for {model} do not exist")
            weights[model] = path
        elif family.local_pretraining:
            out = pretrain_path(config, model)
            pre = (config.pretrain or PretrainConfig()).model_copy(update={"model": model})
            print(f"{model}: no --pretrained given; using the local glyph checkpoint {out} "
                  f"({'cached' if out.exists() else 'building it now: a stand-in for CLIP/AugReg pre-training'})")
            weights[model] = pretrain_checkpoint.submit(pre, str(out), device=config.device).result()
        elif family.text_tower:
            weights[model] = None  # clip: the tag or file in the name
        else:
            weights[model] = HUB
        check_weights(model, weights[model])  # no hub reachable: one clear line now, not a failed task later
    return weights


def register_and_predict(config: FinetuneConfig, store: str, name: str, cache_dir: str, spec: Any,
                         copies: list[tuple[str, str, FinetuneRun, Any]], group_of=None) -> list[str]:
    """Register each finished copy under its group, DFR it if asked, and predict it on every split."""
    exp = config.store.experiment(name)
    splits = ["source_val"] + spec.target_splits()
    model_ids, predictions = [], []
    for model, strategy, run, future in copies:
        out = future.result()
        outcome = RunOutcome(out["run_id"], out["model_id"], _final_checkpoint(exp, run), out["val_accuracy"], out["num_classes"])
        group = group_of(model, strategy) if group_of else config.group_name(strategy, model)
        ids = [register_run(exp, run, outcome, group=group, base_model=model)]
        if config.dfr_split:
            ids.append(dfr_one.submit(store, name, ids[0], config.dfr_split, config.dataset, config.shift, cache_dir,
                                      root=config.root, device=config.device, num_workers=config.num_workers).result())
        model_ids.extend(ids)
    # One prediction task per split for all the models: one FFCV loader serves them all.
    for split in splits:
        predictions.append(predict_split.submit(
            store, name, model_ids, split, config.dataset, config.shift, cache_dir, root=config.root,
            device=config.device, batch_size=config.eval_batch_size, num_workers=config.num_workers))
    wait(predictions)
    failed = [f for f in predictions if f.state.is_failed() or f.state.is_crashed()]
    if failed:
        failed[0].result()
    return model_ids


def _final_checkpoint(exp, run: FinetuneRun) -> Path:
    return final_checkpoint(exp, run)


def er_report(store: StoreOptions, experiment: str) -> list[dict]:
    """The report flow (metrics, ER tables, plots, report.md, artifacts); returns the per-group summary rows."""
    result = report(ReportConfig(store=store, experiment=experiment))
    return result.summary.to_dicts() if result.summary.height else []


def format_er_table(summary: list[dict], view: str = "full") -> str:
    """Terminal table: one line per (shift, group), ER mean with its 95% interval, copies aggregated."""
    rows = [r for r in summary if r.get("view") == view and r.get("sub_split", "all") == "all" and r.get("group") != "baseline"]
    if not rows:
        return "no ER rows (no shifted split with baseline and fine-tuned predictions)"
    lines = [f"{'shift':<16} {'group':<28} {'n':>2}  {'ER':>7}  {'95% interval':<19} verdict"]
    for r in sorted(rows, key=lambda r: (r["shift"], r["group"])):
        # The interval the verdict is based on: copies' spread and the line's uncertainty when the report has it.
        lo, hi = r.get("er_lower_total", r["er_lower"]), r.get("er_upper_total", r["er_upper"])
        lines.append(f"{r['shift']:<16} {r['group']:<28} {r['n_models']:>2}  {r['effective_robustness']:>+7.3f}  "
                     f"[{lo:+.3f}, {hi:+.3f}]  {r['verdict']}")
    return "\n".join(lines)


# --- hyper-parameter ablation -------------------------------------------------------------------------
class AblationConfig(BaseModel):
    """Vary one hyper-parameter at a time around the selected fine-tuning config and report ER per value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="the base experiment (its selection is reused)")
    model: str | None = Field(None, json_schema_extra=MODEL_SCHEMA,
                              description="model to ablate; default: the first of finetune.models")
    strategy: Strategy | None = Field(None, description="strategy to ablate; default: zs-ft for clip: models, else ft")
    epochs: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, description="epochs to try; default: 1/4, 1/2, 2x the recipe's epochs; an empty list leaves epochs out")
    lrs: tuple[Annotated[float, Field(gt=0)], ...] | None = Field(None, description="learning rates to try; default: "
                                                                                   "the recipe's LR grid")
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, description="batch sizes to try; default: 1/4, 1/2, 2x the recipe's batch size")
    weight_decays: tuple[Annotated[float, Field(ge=0)], ...] | None = Field(
        None, description="weight decays to try; default: 0, 0.01, 0.1, 0.3")
    copies: int | None = Field(None, ge=1, description="seeds per value; default: the recipe's copies")

    def grids(self, hp: FinetuneHparams) -> dict[str, tuple]:
        """Values per hyper-parameter (an empty tuple leaves that hyper-parameter out)."""
        pick = lambda given, default: default if given is None else given  # noqa: E731
        return {
            "epochs": pick(self.epochs, tuple(sorted({max(1, hp.epochs // 4), max(1, hp.epochs // 2), hp.epochs, hp.epochs * 2}))),
            "lr": pick(self.lrs, hp.lr_grid),
            "batch_size": pick(self.batch_sizes, tuple(sorted({max(1, hp.batch_size // 4), max(1, hp.batch_size // 2), hp.batch_size, hp.batch_size * 2}))),
            "weight_decay": pick(self.weight_decays, tuple(sorted({0.0, 0.01, 0.1, 0.3, hp.weight_decay}))),
        }


@flow(name="hparam-ablation", task_runner=LocalTaskRunner(), log_prints=True,
      flow_run_name=run_name(ablation_name))
def hparam_ablation(config: AblationConfig) -> dict:
    """Run (or reuse) the fine-tuning experiment for one (model, strategy), then retrain it with one
    hyper-parameter changed at a time (epochs, lr, batch size, weight decay), ``copies`` seeds per value,
    and tabulate ER per value (``tables/hparam_ablation.parquet``)."""
    base = check_config(config.finetune)
    model = config.model or base.models[0]
    strategy = config.strategy or default_strategy(model)
    base = base.model_copy(update={"models": (model,), "strategies": (strategy,)})
    hp = base.hparams

    result = on_caller_backend(pretrained_finetune)(base)
    lr = next(s["lr"] for s in result["selected"] if s["strategy"] == strategy)
    store, spec = str(base.store.resolved_root()), get_spec(base.shift, dataset=base.dataset, root=base.root)
    name = Path(result["experiment"]).name
    cache_dir = str(base.store.resolved_cache_dir())

    class_names = zero_shot_class_names(base.dataset, split_info(spec, "source_train", cache_dir).class_names)
    weights = resolve_pretrained(base)
    group = base.group_name(strategy, model)
    selected = {"epochs": hp.epochs, "lr": lr, "batch_size": hp.batch_size, "weight_decay": hp.weight_decay}
    submit = dict(device=base.device, num_workers=base.num_workers, eval_batch_size=base.eval_batch_size)
    copies, labels = [], {}
    run_future = make_submitter(store, name, cache_dir, submit)
    for hparam, values in config.grids(hp).items():
        for value in values:
            if value == selected[hparam]:
                continue  # the selected config itself is the experiment's own group
            label = f"{group} {hparam}={value:g}"
            labels[label] = (hparam, value)
            for k in range(config.copies or hp.copies):
                overrides = {} if hparam == "lr" else {hparam: value}
                run = plan_run(strategy, model, hp, value if hparam == "lr" else lr, base.seed + k, dataset=base.dataset,
                               shift=base.shift, root=base.root, pretrained=weights.get(model), class_names=class_names,
                               model_options=base.model_options.get(model), train_overrides=overrides or None,
                               resolution=base.resolution)
                copies.append((model, label, run, run_future(run)))
    register_and_predict(base, store, name, cache_dir, spec, copies, group_of=lambda _m, label: label)
    summary = er_report(base.store.resolved(), name)
    table = ablation_table(summary, group, selected, labels)
    exp = base.store.experiment(name)
    exp.write_table("hparam_ablation", table, config=config)
    print(format_ablation(table))

    headline = ablation_name({"config": config})
    publish_result(f"{experiment_key(name, store)}-ablation-result", note_markdown(
        headline, f"{table.height} (shift, hyper-parameter, value) rows of ER for {group}",
        {"table (Parquet)": exp.table_path("hparam_ablation"), "report": exp.report_path}),
        description=f"{headline}: result, experiment {name}, {store_words(store)}")
    return {"experiment": str(exp.root), "table": str(exp.table_path("hparam_ablation"))}


def ablation_table(summary: list[dict], group: str, selected: dict[str, float], labels: dict[str, tuple[str, float]]):
    """One row per (shift, hyper-parameter, value): ER and interval (full-range fit), the selected value marked."""
    import polars as pl

    rows = []
    for r in summary:
        if r.get("view") != "full" or r.get("sub_split", "all") != "all":
            continue
        if r["group"] == group:
            entries = [(h, v, True) for h, v in selected.items()]
        elif r["group"] in labels:
            entries = [(*labels[r["group"]], False)]
        else:
            continue
        for hparam, value, is_selected in entries:
            rows.append({"shift": r["shift"], "hparam": hparam, "value": float(value), "selected": is_selected,
                         "group": r["group"], "n_models": r["n_models"], "reference_accuracy": r.get("reference_accuracy"),
                         "shifted_accuracy": r.get("shifted_accuracy"), "effective_robustness": r["effective_robustness"],
                         "er_lower": r["er_lower"], "er_upper": r["er_upper"],
                         # with the line's uncertainty (what the report's verdicts use), when the report has it
                         "er_lower_total": r.get("er_lower_total", r["er_lower"]),
                         "er_upper_total": r.get("er_upper_total", r["er_upper"])})
    schema = {"shift": pl.String, "hparam": pl.String, "value": pl.Float64, "selected": pl.Boolean, "group": pl.String,
              "n_models": pl.Int64, "reference_accuracy": pl.Float64, "shifted_accuracy": pl.Float64,
              "effective_robustness": pl.Float64, "er_lower": pl.Float64, "er_upper": pl.Float64,
              "er_lower_total": pl.Float64, "er_upper_total": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("shift", "hparam", "value")


def format_ablation(table) -> str:
    lines = [f"{'shift':<16} {'hparam':<13} {'value':>9}  {'ER':>7}  95% interval"]
    for r in table.iter_rows(named=True):
        mark = " (selected)" if r["selected"] else ""
        lines.append(f"{r['shift']:<16} {r['hparam']:<13} {r['value']:>9g}  {r['effective_robustness']:>+7.3f}  "
                     f"[{r['er_lower_total']:+.3f}, {r['er_upper_total']:+.3f}]{mark}")
    return "\n".join(lines)


__all__ = ["FinetuneConfig", "AblationConfig", "MINIATURE", "pretrained_finetune", "hparam_ablation", "check_config",
           "format_er_table", "ablation_table", "pretrain_path"]
