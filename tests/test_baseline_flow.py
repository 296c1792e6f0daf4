"""The from-scratch baseline flow end to end on digits, and the `askshift run baseline` CLI contract."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import polars as pl
import pytest

from askshift.cli.main import main as cli_main


@pytest.fixture(scope="module")
def beton_cache(tmp_path_factory):
    """One .beton cache for this module: the flow and the CLI test read the same digits files."""
    return str(tmp_path_factory.mktemp("beton-cache"))


def tiny_config(store, cache_dir, **overrides):
    from askshift.flows.baseline import BaselineConfig

    settings = dict(dataset="digits", shift="tint_p=0.5", store=str(store), cache_dir=cache_dir, model="cnn:tiny",
                    epochs=2, train_fractions=(1.0, 0.5), batch_size=64, device="cpu")
    return BaselineConfig(**{**settings, **overrides})


def mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_baseline_flow_trains_predicts_and_reports_then_reruns_without_recomputing(prefect_api, tmp_path, beton_cache):
    from askshift.flows.baseline import synthetic_shift_baseline

    config = tiny_config(tmp_path / "store", beton_cache)
    exp_dir = synthetic_shift_baseline(config)
    assert exp_dir.endswith("digits-tint_p=0.5")
    from askshift.lib.store import Store

    exp = Store(tmp_path / "store").experiment("digits-tint_p=0.5")
    models = exp.models()
    assert models.height == 4  # 2 training fractions x 2 kept epochs
    assert set(models["group"]) == {"baseline"}
    info = [json.loads(i) for i in models["info"]]
    assert sorted((i["train_fraction"], i["epoch"]) for i in info) == [(0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]

    metrics = exp.read_table("metrics").filter(pl.col("sub_split") == "all")
    assert metrics.height == 4 * 2  # one row per (model, split)
    assert set(metrics["split"]) == {"source_val", "tint_val"}
    assert metrics.select("model", "split").is_unique().all()
    assert metrics["accuracy"].is_between(0, 1).all()
    # The reference accuracies spread (epochs x fractions), which is what the line is fitted on.
    reference = metrics.filter(pl.col("split") == "source_val")["accuracy"]
    assert reference.max() - reference.min() > 0.02
    er = exp.read_table("er")
    assert "effective_robustness" in er.columns and er.height > 0
    assert exp.report_path.exists()

    before = mtimes(exp.root / "runs") | mtimes(exp.root / "predictions")
    synthetic_shift_baseline(config)
    assert mtimes(exp.root / "runs") | mtimes(exp.root / "predictions") == before  # nothing recomputed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "epochs"),
        (["--shift", "tint_q=0.5"], "tint_q=0.5"),
        (["--model", "resnet"], "family prefix"),
        (["--train-fractions", "1.5"], "train fractions"),
        (["--keep-epochs", "9", "--epochs", "3"], "keep_epochs"),
        (["--device", "tpu"], "device"),
        (["--dataset", "cifar10"], "--root"),
        (["--dataset", "cifar10", "--root", "/nonexistent/cifar"], "does not exist"),
    ],
)
def test_invalid_baseline_settings_fail_with_one_line_before_any_compute(tmp_path, capsys, argv, message):
    store = tmp_path / "store"
    rc = cli_main(["run", "baseline", "--dataset", "digits", "--store", str(store), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not store.exists()


def test_config_file_is_read_and_flags_override_it(tmp_path):
    from askshift.cli.commands.run_baseline import build_config
    from askshift.cli.main import build_parser

    config_file = tmp_path / "baseline.yaml"
    config_file.write_text("epochs: 9\ntrain_fractions: [1.0, 0.3]\nmodel: cnn:tiny\nlr: 0.01\n")
    args = build_parser().parse_args(["run", "baseline", "--config", str(config_file), "--epochs", "3",
                                      "--store", str(tmp_path / "s")])
    config = build_config(args)
    assert (config.epochs, config.train_fractions, config.model, config.lr) == (3, (1.0, 0.3), "cnn:tiny", 0.01)


def test_config_file_with_unknown_setting_is_rejected(tmp_path, capsys):
    config_file = tmp_path / "baseline.json"
    config_file.write_text(json.dumps({"epochs": 2, "learning_rate": 0.1}))
    rc = cli_main(["run", "baseline", "--config", str(config_file), "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "learning_rate" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_run_baseline_prints_store_path_and_writes_metrics_and_er_tables(prefect_api, askshift, tmp_path, beton_cache):
    config_file = tmp_path / "tiny.yaml"
    # The smallest run that still fits a line: 3 one-epoch models.
    config_file.write_text(f"model: cnn:tiny\ntrain_fractions: [1.0, 0.5, 0.25]\ncache_dir: {beton_cache}\ndevice: cpu\n")
    store = tmp_path / "store"
    proc = subprocess.run(
        [askshift, "run", "baseline", "--dataset", "digits", "--shift", "tint_p=0.5", "--store", str(store),
         "--epochs", "1", "--config", str(config_file)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    assert printed.startswith(str(store.resolve()))
    metrics = pl.read_parquet(f"{printed}/tables/metrics.parquet")
    assert {"model", "group", "split", "accuracy"} <= set(metrics.columns)
    assert metrics.filter(pl.col("sub_split") == "all").select("model", "split").is_unique().all()
    assert "effective_robustness" in pl.read_parquet(f"{printed}/tables/er.parquet").columns


def test_baseline_runs_cover_widths_fractions_and_seeds_with_unique_model_ids(tmp_path):
    config = tiny_config(tmp_path, None, widths=(0.5, 1.0), train_fractions=(1.0, 0.25), seeds=(0, 1), epochs=3)
    runs = config.runs()
    assert len(runs) == 8
    assert {(r.model_options["width"], r.train_fraction, r.train.seed) for r in runs} == {
        (w, f, s) for w in (0.5, 1.0) for f in (1.0, 0.25) for s in (0, 1)}
    ids = [r.model_id(e) for r in runs for e in r.train.kept_epochs()]
    assert len(ids) == len(set(ids)) == 8 * 3  # every epoch kept by default
    # Another learning rate is another run: its models never overwrite these predictions.
    other = tiny_config(tmp_path, None, widths=(0.5, 1.0), train_fractions=(1.0, 0.25), seeds=(0, 1), epochs=3, lr=0.1)
    assert not set(ids) & {r.model_id(e) for r in other.runs() for e in r.train.kept_epochs()}


def test_label_shift_presets_double_baseline_epochs_and_kept_epochs(tmp_path):
    from askshift.lib.data.specs import get_spec

    factor = get_spec("label_p=0.2").baseline_epochs_factor
    assert factor == 2
    (run,) = tiny_config(tmp_path, None, epochs=3, keep_epochs=(2, 3), train_fractions=(1.0,)).runs(factor)
    assert run.train.epochs == 6 and run.train.kept_epochs() == (4, 6)


def test_train_fraction_subsets_are_seeded_sorted_and_in_range():
    from askshift.lib.models.training import subset_indices

    a = subset_indices(1000, 0.25, seed=0)
    assert len(a) == 250 and (a == subset_indices(1000, 0.25, seed=0)).all()
    assert (a == sorted(set(a.tolist()))).all() and a.min() >= 0 and a.max() < 1000
    assert not (a == subset_indices(1000, 0.25, seed=1)).all()
    assert subset_indices(1000, 1.0, seed=0) is None
    # Under label_p the reference keeps only some examples: the fraction is drawn from those.
    kept = np.arange(0, 3000, 3)
    b = subset_indices(kept, 0.5, seed=0)
    assert len(b) == 500 and set(b.tolist()) <= set(kept.tolist())


@pytest.mark.slow
def test_train_task_retry_resumes_from_the_last_epoch_checkpoint(prefect_api, tmp_path, beton_cache, monkeypatch):
    from prefect import flow

    import askshift.lib.data.loaders
    from askshift.lib.models.training import RunConfig, TrainConfig, checkpoint_path
    from askshift.lib.store import Store
    from askshift.tasks.training import train_one_model

    run = RunConfig(shift="tint_p=0.5", architecture="cnn:tiny", train_fraction=0.25,
                    train=TrainConfig(epochs=2, batch_size=64, lr=1e-2))
    exp = Store(tmp_path / "store").experiment("retry")
    first_checkpoint = checkpoint_path(exp.checkpoint_dir(run.run_id()), 1)
    seen = {}
    original_iter = askshift.lib.data.loaders.SplitLoader.__iter__

    def failing_iter(self):
        # The first attempt dies in epoch 2, after epoch 1's checkpoint was written.
        if self.split == "source_train" and self.loader.next_epoch == 1 and "failed" not in seen:
            seen["failed"] = first_checkpoint.stat().st_mtime_ns
            raise ConnectionResetError("worker lost")  # transient: the kind a retry can fix
        return original_iter(self)

    monkeypatch.setattr(askshift.lib.data.loaders.SplitLoader, "__iter__", failing_iter)

    @flow
    def one_training():
        return train_one_model(str(exp.root.parent), "retry", run, beton_cache, device="cpu")

    (model_id,) = one_training()
    assert "failed" in seen and exp.is_done(run.run_id())
    assert first_checkpoint.stat().st_mtime_ns == seen["failed"]  # epoch 1 was not trained again
    assert model_id == run.model_id(2) and exp.models()["model"].to_list() == [model_id]
