"""Flow ``demo``: the paper's experiment in miniature, composed of the real flows (baseline, fine-tune, split, report).

data -> pre-training (cached) -> for each reference distribution: the from-scratch baseline flow, then the
fine-tuning flow (FT, LP-FT, the same-architecture control) -> a mixed natural-like shift: baselines,
fine-tuning, and the split flow -> one combined report (STORE/demo/report.md, Parquet tables, Prefect
artifacts).  Every training run is content-addressed, so a second run of the same seed retrains nothing.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from askshift.flows.backends import LocalTaskRunner, on_caller_backend
from askshift.flows.demo_config import (
    DEMO_EXPERIMENT,
    DemoConfig,
    Progress,
    format_duration,
)
from askshift.flows.demo_report import build_demo_report
from askshift.flows.naming import demo_name, run_name
from askshift.lib.data.datasets import load_dataset
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec, get_spec, load_spec
from askshift.lib.report.markdown import inline_images, note_markdown
from askshift.lib.store import atomic_write_json, write_with
from askshift.lib.support.known_answer import MixtureConfig, build_mixture, palette, tint
from askshift.lib.support.ratios import DomainClassifierConfig
from askshift.tasks.data import write_split
from askshift.tasks.reporting import (
    ProgressBar,
    artifact_url,
    experiment_key,
    publish_markdown,
    publish_result,
    publish_table,
    result_run_id,
    store_words,
)

STAGES = ("data", "pre-training", "shifts", "mixed shift and split", "report")
MIXED_TARGET = "mixed"
REFERENCE_VAL_SPLIT = "refval"


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def ticker(progress: Progress, every: float = 20.0, bar: Any = None) -> Iterator[None]:
    """Print the progress line every ``every`` seconds while the flows below run (they block this thread); with
    ``bar`` (a ``askshift.tasks.reporting.ProgressBar``) also move the UI's progress bar as training runs finish."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            line = progress.line()
            _say(line)
            if bar is not None:
                bar.set(15.0 + 75.0 * progress.done() / progress.planned, line)

    # A copy of this context: the thread talks to the same Prefect API (settings live in context variables).
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), name="demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


# --- sub-flow configs --------------------------------------------------------------------------------------------


def baseline_config(config: DemoConfig, shift: str, experiment: str):
    """The baseline flow's config: epochs x training fractions x widths (the flow gives label_p the paper's 2x epochs)."""
    from askshift.flows.baseline import BaselineConfig

    return BaselineConfig(
        dataset=config.dataset, shift=shift, store=config.store.resolved(), experiment=experiment,
        model=config.baseline_model, widths=config.baseline_widths,
        train_fractions=config.baseline_fractions, seeds=config.baseline_seed_list(), epochs=config.baseline_epochs,
        keep_epochs=config.baseline_keep_epochs, device=config.device, report=False,
    )


def pretrain_config(config: DemoConfig):
    return config.pretrain_config()


def finetune_config(config: DemoConfig, shift: str, experiment: str, pretrained: str | None = None):
    """The fine-tuning flow's config: the miniature recipe with the demo's LR grid, copies and epochs."""
    from askshift.flows.finetune import MINIATURE, FinetuneConfig

    hparams = MINIATURE.model_copy(update={
        "epochs": config.finetune_epochs, "warmup_epochs": min(1.0, config.finetune_epochs / 4),
        "batch_size": config.finetune_batch_size, "lr_grid": config.lr_grid, "copies": config.copies,
        "lp_epochs": config.lp_epochs, "lp_lr": config.lp_lr,
    })
    return FinetuneConfig(
        dataset=config.dataset, shift=shift, store=config.store.resolved(), experiment=experiment,
        models=(config.baseline_model,), strategies=config.strategies,
        same_arch_control=config.control, pretrained={config.baseline_model: pretrained} if pretrained else {},
        hparams=hparams, seed=config.seed, pretrain=pretrain_config(config), device=config.device, report=False,
    )


# --- the mixed natural-like shift ------------------------------------------------------------------------------


@task(name="build the mixed shift", cache_policy=NO_CACHE)
def build_mixed_shift(config: DemoConfig) -> dict[str, str]:
    """Write the mixture (askshift.lib.support.known_answer) plus a reference validation split as one npz, and a spec file for it."""
    exp = config.store.experiment(config.mixed_experiment_name())
    mixture_config = MixtureConfig(seed=config.seed, spurious_p=0.5, out_fraction=config.mixture_out_fraction,
                                   flip_fraction=0.5, copies=1, image_size=32)
    npz_path = exp.root / "mixture.npz"
    spec_path = exp.root / "spec.json"
    if not npz_path.exists():
        mixture = build_mixture(mixture_config)
        # The reference distribution's own validation split: held-out digits, tinted like the reference.
        val = load_dataset("digits", "val", size=mixture_config.image_size)
        images = np.stack([val.image_array(i) for i in range(len(val))])
        rng = np.random.default_rng([config.seed, 3])
        own = rng.random(val.labels.size) < mixture_config.spurious_p
        colour = np.where(own, val.labels, rng.integers(0, 10, val.labels.size))
        refval = tint(images, palette(10, config.seed)[colour])
        arrays = {
            "train_images": mixture.reference_images, "train_labels": mixture.reference_labels,
            f"{REFERENCE_VAL_SPLIT}_images": refval, f"{REFERENCE_VAL_SPLIT}_labels": val.labels.astype(np.int64),
            f"{MIXED_TARGET}_images": mixture.shifted_images, f"{MIXED_TARGET}_labels": mixture.shifted_labels,
            "class_names": np.array([str(i) for i in range(10)]),
            "shifted_out_of_support": mixture.out_of_support, "shifted_kind": mixture.kind.astype(str),
        }

        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a handle keeps numpy from appending ".npz" to the temporary name
                np.savez(fh, **arrays)

        write_with(npz_path, writer)
    root = str(npz_path)
    spec = ExperimentSpec(
        name=config.mixed_experiment_name(),
        description="digits with a spurious palette tint (p = 0.5) vs a mix of palette-tinted (in-support) and "
                    "unseen-colour or flipped (out-of-support) digits",
        reference=DistributionSpec(dataset="npz", root=root, train_split="train", split=REFERENCE_VAL_SPLIT),
        targets={MIXED_TARGET: DistributionSpec(dataset="npz", root=root, split=MIXED_TARGET)},
    )
    atomic_write_json(spec_path, spec)
    return {"npz": str(npz_path), "spec": str(spec_path)}


def split_config(config: DemoConfig, spec_path: str):
    from askshift.flows.split import SplitConfig

    classifier = DomainClassifierConfig(model="cnn:tiny", lrs=config.split_lrs, epochs=config.split_epochs,
                                        batch_size=64, reference_size=None, in_memory=True, seed=config.seed)
    return SplitConfig(spec=load_spec(spec_path), store=config.store.resolved(),
                       experiment=config.mixed_experiment_name(),
                       classifier=classifier, folds=config.split_folds, seed=config.seed,
                       device=config.device, examples_per_row=8)


# --- the flow --------------------------------------------------------------------------------------------------


@flow(name="demo", task_runner=LocalTaskRunner(), flow_run_name=run_name(demo_name))
def demo(config: DemoConfig = DemoConfig()) -> str:
    """The paper's experiment in miniature: does pre-training help under this shift?  Returns the report path.

    Stages: data; pre-training (the local glyph stand-in, cached); per reference distribution the baseline
    flow and the fine-tuning flow; the mixed shift with the split flow; the combined report.  The run the user
    opened gets a progress bar (stages, and training runs as they finish) and the result note ``demo-result``
    (``demo-STOREHASH-result`` for a store other than askshift-store; ``askshift.tasks.reporting``: the key rule).
    """
    from askshift.flows.baseline import synthetic_shift_baseline
    from askshift.flows.finetune import pretrain_path, pretrained_finetune
    from askshift.flows.split import split_shift
    from askshift.tasks.finetune import pretrain_checkpoint

    started = time.monotonic()
    store = config.store.resolved_root()
    presets = config.presets()
    experiments = [config.experiment_name(p) for p in presets] + ([config.mixed_experiment_name()] if config.split else [])
    progress = Progress(store, experiments, config.planned_runs(), STAGES, write=_say,
                        training_stages=("shifts", "mixed shift and split"))
    demo_exp = config.store.experiment(DEMO_EXPERIMENT)
    demo_exp.write_config(config, name="demo_config")
    _say(f"[demo] {config.variant()} variant, seed {config.seed}: {len(config.active_shifts())} shifts in "
         f"{len(presets)} experiments{' + a mixed shift split by the split flow' if config.split else ''}; "
         f"about {config.planned_runs()} training runs; store {store}")
    stem = demo_key(str(store))
    artifact = ProgressBar(f"{stem}-progress", f"askshift demo ({config.variant()}, seed {config.seed}), "
                           f"{store_words(store)}", total=100)

    with ticker(progress, bar=artifact):
        progress.enter("data", "writing .beton files")
        for preset in presets:
            spec = get_spec(preset, dataset=config.dataset)
            for split in spec.splits():
                # Submitted, not called: the flow's runner leaves the run's tags off task runs (LocalTaskRunner).
                write_split.submit(spec, split, str(config.store.resolved_cache_dir())).result()
        mixed_files = build_mixed_shift.submit(config).result() if config.split else None
        _update_progress(artifact, 5.0)

        progress.enter("pre-training", "glyph corpus stand-in for CLIP/AugReg (cached after the first run)")
        probe = finetune_config(config, presets[0], config.experiment_name(presets[0]))
        # Submitted, not called: on a cluster backend the pre-training runs on a (GPU) worker.
        weights = pretrain_checkpoint.submit(pretrain_config(config), str(pretrain_path(probe, config.baseline_model)),
                                             device=config.device).result()
        _update_progress(artifact, 15.0)

        # The report uses exactly the models these flows produced (an experiment folder may also hold models of
        # runs made with other settings, e.g. before an upgrade changed a default).
        models: dict[str, list[str]] = {}
        runs: list[tuple[str, str]] = [(p, config.experiment_name(p)) for p in presets]
        if config.split:
            runs.append((mixed_files["spec"], config.mixed_experiment_name()))
        for i, (shift, experiment) in enumerate(runs):
            mixed = config.split and i == len(runs) - 1
            progress.enter("mixed shift and split" if mixed else "shifts",
                           f"{experiment}: baselines, then fine-tuning")
            baseline = baseline_config(config, shift, experiment)
            on_caller_backend(synthetic_shift_baseline)(baseline)
            _say(progress.line(f"{experiment}: baselines done, fine-tuning"))
            finetuned = on_caller_backend(pretrained_finetune)(
                finetune_config(config, shift, experiment, pretrained=weights))
            factor = get_spec(shift, dataset=config.dataset).baseline_epochs_factor
            models[experiment] = [run.model_id(e) for run in baseline.runs(factor) for e in run.train.kept_epochs()]
            models[experiment] += list(finetuned["models"])
            _update_progress(artifact, 15.0 + 75.0 * (i + 1) / len(runs))
        if config.split:
            _say(progress.line("splitting the mixed shift into in-support and out-of-support parts"))
            split = on_caller_backend(split_shift)
            if split is split_shift:
                # In this process, one fold at a time: parallel folds would share torch's global RNG and threads.
                split = split_shift.with_options(task_runner=LocalTaskRunner())
            split(split_config(config, mixed_files["spec"]))

        progress.enter("report", "ER per shift and group, both fit views, plots")
        result = write_demo_report.submit(config, time.monotonic() - started, models).result()
    publish_demo_artifacts.submit(result, str(store)).result()
    _update_progress(artifact, 100.0)
    _say(progress.line(f"finished in {format_duration(time.monotonic() - started)}"))
    publish_demo_result(config, result, str(store), time.monotonic() - started)
    return result["report"]


def demo_key(store: str) -> str:
    """``demo``, or ``demo-STOREHASH`` for a store other than the demo's default (askshift.tasks.reporting: the key rule)."""
    return experiment_key("demo", store, default_store=DemoConfig.model_fields["store"].default.root)


def _update_progress(bar: Any, value: float) -> None:
    bar.set(value)


def publish_demo_result(config: DemoConfig, result: dict[str, Any], store: str, seconds: float) -> None:
    """The result note on the run the user opened: the verdict lines, a link to the report, absolute paths."""
    stem = demo_key(store)
    report_key = f"{stem}-report"
    table = [line for line in (result.get("summary") or []) if line.strip()]
    # summary_lines: a header, then one line per shift ending in its reading after two spaces.
    readings = [line.rsplit("  ", 1)[-1].strip() for line in table[1:]]
    helped = sum(r.startswith("helped") for r in readings)
    line = (f"pre-training helped on {helped} of {len(readings)} shifts" if readings else "finished") \
        + f" ({format_duration(seconds)})"
    headline = demo_name({"config": config})
    items = {f"report (artifact [{report_key}]({artifact_url(report_key)}))": Path(result["report"]),
             f"ER table (artifact {stem}-er, Parquet)": Path(result["er_table"]), "store": Path(store)}
    markdown = note_markdown(headline, line, items) + ("\n```\n" + "\n".join(table) + "\n```\n" if table else "")
    link = artifact_url(report_key, _report_on_result_run(report_key, result, store))
    publish_result(f"{stem}-result", markdown, description=f"{headline}: result, {store_words(store)}",
                   link=link, link_text="the demo's report")


def _report_on_result_run(key: str, result: dict[str, Any], store: str):
    """The demo report on the run the user opened when that is not the demo's own run (a deployment run); its id."""
    from prefect.artifacts import MarkdownArtifact
    from prefect.context import FlowRunContext

    target = result_run_id()
    if target is None or target == str(FlowRunContext.get().flow_run.id):
        return None
    try:
        report = Path(result["report"])
        return MarkdownArtifact(key=key, markdown=inline_images(report.read_text(), report.parent), flow_run_id=target,
                                description=f"askshift demo report ({report}); {store_words(store)}").create(_sync=True).id
    except Exception as exc:  # noqa: BLE001 -- the demo's own run has the report
        print(f"could not copy the demo report to the run the user opened: {exc}")
        return None


# --- the combined report ------------------------------------------------------------------------------------------


@task(name="demo report", cache_policy=NO_CACHE)
def write_demo_report(config: DemoConfig, seconds: float, models: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return build_demo_report(config, seconds, models)


@task(name="publish demo artifacts", cache_policy=NO_CACHE)
def publish_demo_artifacts(result: dict[str, Any], store: str = "askshift-store") -> None:
    import polars as pl

    stem = demo_key(store)
    publish_markdown.fn(f"{stem}-report", Path(result["report"]).read_text(), base_dir=str(Path(result["report"]).parent),
                        description=f"askshift demo: effective robustness of fine-tuned pre-trained models per shift "
                                    f"({result['report']}); {store_words(store)}")
    publish_table.fn(f"{stem}-er", pl.read_parquet(result["er_table"]),
                     description=f"ER per (shift, group): full-range line and comparable baselines, fit diagnostics "
                                 f"({result['er_table']}); {store_words(store)}")


__all__ = ["demo", "baseline_config", "finetune_config", "split_config", "build_mixed_shift", "STAGES"]
