"""Flow ``synthetic_shift_baseline``: train from-scratch models on the reference data, predict, fit the line."""
from __future__ import annotations

import itertools
from typing import Annotated, Literal

from prefect import flow
from prefect.futures import as_completed, wait
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from askshift.flows.backends import LocalTaskRunner
from askshift.flows.naming import baseline_name, run_name
from askshift.flows.report import ReportConfig, publish_report_result, report
from askshift.lib.data.specs import get_spec
from askshift.lib.models.training import RunConfig, TrainConfig
from askshift.lib.names import DATASET_SCHEMA, MODEL_SCHEMA, SHIFT_SCHEMA, check_dataset, check_model, check_shift
from askshift.lib.report.markdown import note_markdown
from askshift.lib.store import StoreOptions, store_options_validator
from askshift.tasks.data import write_split
from askshift.tasks.futures import results
from askshift.tasks.prediction import predict_split
from askshift.tasks.reporting import ProgressBar, experiment_key, publish_result, store_words
from askshift.tasks.training import train_one_model


class BaselineConfig(BaseModel):
    """Parameters of the from-scratch baseline: which shift, which models, how long, where results go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field("digits", json_schema_extra=DATASET_SCHEMA,
                         description="dataset name (askshift datasets): digits, cifar10, imagefolder, npz, wilds:NAME, ...")
    shift: str = Field("tint_p=0.5", json_schema_extra=SHIFT_SCHEMA,
                       description="shift preset (askshift shifts), e.g. tint_p=0.5, label_p=0.2, out_of_support, or "
                                   "a YAML/JSON spec file")
    root: str | None = Field(None, description="dataset folder, for datasets that are not bundled")
    store: StoreOptions = Field(StoreOptions(), description="where results (STORE/EXPERIMENT/) and the .beton "
                                                            "cache go")
    experiment: str | None = Field(None, description="experiment folder name; default: the spec's name")
    model: str = Field("cnn:small", json_schema_extra=MODEL_SCHEMA,
                       description="architecture of the baseline models (askshift models), e.g. cnn:small, cnn:tiny")
    widths: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (1.0,), json_schema_extra={"minItems": 1}, description="width multipliers (cnn only) for a wider spread of accuracies")
    # The limits are in the schema (the form refuses 1.5 on Submit); the validator words the CLI's error.
    train_fractions: tuple[float, ...] = Field(
        (1.0, 0.5, 0.25),
        json_schema_extra={"minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        description="fractions of source_train, each more than 0 and at most 1; one model each")
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (0,), json_schema_extra={"minItems": 1}, description="one model per seed (and width and fraction); 0 or more")
    epochs: int = Field(6, ge=1, le=10_000, description="training epochs per model (label_p shifts train twice as long)")
    keep_epochs: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, description="epochs kept as baseline models; default: every epoch")
    lr: float = Field(1e-2, gt=0, description="peak learning rate")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="optimiser")
    schedule: Literal["cosine", "triangle", "constant", "step"] = Field("cosine", description="learning-rate schedule")
    warmup_epochs: float = Field(0.5, ge=0, description="linear warm-up, in epochs")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing, 0 or more and less than 1")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; empty = no clipping")
    batch_size: int = Field(32, ge=1, description="training batch size")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision on CUDA: none, bf16 or fp16")
    translate: int = Field(0, ge=0, description="random translation augmentation in pixels")
    flip: bool = Field(False, description="random horizontal flips of same-size arrays (off: digits are not "
                       "mirror-symmetric); photos always get a random-resized crop and a flip")
    resolution: int | None = Field(None, ge=8, description="image side the models read; default: the model's own "
                                   "(photos; cnn: 64 px) or as stored (same-size arrays such as digits)")
    device: str = Field("auto", json_schema_extra={"pattern": r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"},
                        description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    num_workers: int = Field(1, ge=1, description="loader worker threads per task")
    eval_batch_size: int = Field(512, ge=1, description="batch size of the predictions")
    report: bool = Field(True, description="write metrics, ER tables and the report after predicting")

    _store = store_options_validator()

    @field_validator("train_fractions", "widths", "seeds")
    @classmethod
    def _at_least_one(cls, value: tuple) -> tuple:
        # Not min_length: with a bad item pydantic would also report the tuple as empty.
        if not value:
            raise ValueError("give at least one value")
        return value

    @field_validator("train_fractions")
    @classmethod
    def _fractions_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in value if not 0 < f <= 1]
        if bad:
            raise ValueError(f"train fractions must lie in (0, 1], got {bad}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return check_dataset(value)

    @field_validator("shift")
    @classmethod
    def _shift_name(cls, value: str) -> str:
        return check_shift(value)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return check_model(value)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if value != "auto" and value.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {value!r} is not auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _train_config_is_valid(self) -> "BaselineConfig":
        self.train_config(0)  # keep_epochs / warm-up errors surface here, before any compute
        return self

    def train_config(self, seed: int, epochs_factor: float = 1.0) -> TrainConfig:
        """The TrainConfig of one seed; ``epochs_factor`` (the spec's, 2 for label_p) stretches epochs, the warm-up
        and the kept epochs together (the paper doubles the whole schedule)."""
        epochs = max(1, round(self.epochs * epochs_factor))
        if self.keep_epochs is None:
            keep = tuple(range(1, epochs + 1))
        else:
            keep = tuple(sorted({max(1, round(e * epochs_factor)) for e in self.keep_epochs}))
        return TrainConfig(
            epochs=epochs, lr=self.lr, optimizer=self.optimizer, schedule=self.schedule,
            warmup_epochs=self.warmup_epochs * epochs_factor, weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing, grad_clip=self.grad_clip, batch_size=self.batch_size, amp=self.amp,
            seed=seed, keep_epochs=keep,
        )

    def runs(self, epochs_factor: float = 1.0) -> list[RunConfig]:
        """One training run per (width, train fraction, seed)."""
        vary_width = self.widths != (1.0,)
        return [
            RunConfig(
                dataset=self.dataset, shift=self.shift, root=self.root, architecture=self.model,
                model_options={"width": width} if vary_width else {}, train_fraction=fraction,
                train=self.train_config(seed, epochs_factor), flip=self.flip, translate=self.translate,
                resolution=self.resolution, group="baseline",
            )
            for width, fraction, seed in itertools.product(self.widths, self.train_fractions, self.seeds)
        ]


@flow(name="synthetic-shift-baseline", task_runner=LocalTaskRunner(), log_prints=True,
      flow_run_name=run_name(baseline_name))
def synthetic_shift_baseline(config: BaselineConfig) -> str:
    """Train from-scratch models on the reference distribution, predict every kept checkpoint on the reference
    validation split and every shifted split, then tabulate metrics and the accuracy-on-the-line ER report.

    Returns the experiment folder (``STORE/EXPERIMENT``, absolute).  Re-running recomputes nothing that exists; a
    killed run resumes from the last epoch checkpoints.  The run the user opened gets a progress bar (one step per
    training run) and the result note ``KEY-result`` (``askshift.tasks.reporting``: the key rule).
    """
    spec = get_spec(config.shift, dataset=config.dataset, root=config.root)
    store = str(config.store.resolved_root())
    name = config.experiment or spec.name
    exp = config.store.experiment(name)
    exp.write_config(config, name="baseline")
    cache_dir = str(config.store.resolved_cache_dir())

    # Every split once, up front, so parallel training tasks never race to write the same .beton.
    futures = [write_split.submit(spec, split, cache_dir) for split in spec.splits()]
    wait(futures)
    written = [f.result() for f in futures]
    # Drop the handles: a Dask future that is still referenced is recomputed when its worker dies,
    # and re-checking finished .beton files on a fresh (pre-empted) worker costs tens of seconds.
    del futures
    print(f"experiment {exp.root}: " + ", ".join(f"{w['split']} {w['examples']}" for w in written))

    splits = ["source_val", *spec.target_splits()]
    runs = config.runs(spec.baseline_epochs_factor)
    headline = baseline_name({"config": config})
    progress = ProgressBar(f"{experiment_key(name, store)}-baseline-progress", f"{headline}: training runs, then "
                           "predictions and the report", total=len(runs) + 1 + int(config.report))
    predictions, trainings = [], []
    for run in runs:
        trained = train_one_model.submit(store, name, run, cache_dir, device=config.device,
                                         num_workers=config.num_workers)
        trainings.append(trained)
        # Model ids follow from the run config, so predictions queue behind their training task.
        model_ids = [run.model_id(epoch) for epoch in run.train.kept_epochs()]
        for split in splits:
            predictions.append(predict_split.submit(
                store, name, model_ids, split, config.dataset, config.shift, cache_dir, root=config.root,
                device=config.device, batch_size=config.eval_batch_size, num_workers=config.num_workers,
                amp=config.amp, wait_for=[trained],
            ))
    failed = []
    for finished in as_completed(trainings):  # the progress bar moves as training runs finish
        ok = finished.state.is_completed()
        failed += [] if ok else [finished]
        progress.advance(what="a training run" + ("" if ok else " (failed)"))
    del trainings
    # A failed training's own error, not its predictions' "UnfinishedRun: Run is in PENDING state".
    results([*failed, *predictions])
    progress.advance(what="predictions")
    n_models = sum(len(run.train.kept_epochs()) for run in runs)
    line = f"{len(runs)} training runs, {n_models} baseline models predicted on {', '.join(splits)}"
    print(line)

    if config.report:
        result = report(ReportConfig(store=config.store.resolved(), experiment=name))
        progress.advance(what="report")
        publish_report_result(result, store, name, headline)
    else:
        publish_result(f"{experiment_key(name, store)}-result", note_markdown(headline, line + " (no report asked)", {
            "experiment folder": exp.root, "models": exp.root / "models"}),
            description=f"{headline}: result, experiment {name}, {store_words(store)}")
    return str(exp.root)


__all__ = ["BaselineConfig", "synthetic_shift_baseline"]
