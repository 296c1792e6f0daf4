"""The fine-tuning flow end to end on digits (tiny), its CLI, and the local pre-training stand-in."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from askshift.lib.models.pretrain import CHARACTERS, PretrainConfig, make_corpus, pretrain
from askshift.lib.models.strategies import FinetuneHparams
from askshift.lib.store import read_json

# Two threads on a busy 2-core machine are slower than one (thread contention); subprocesses get the same.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY_PRETRAIN = PretrainConfig(steps=30, batch_size=32, val_batches=1)
TINY_RECIPE = FinetuneHparams(epochs=1, warmup_epochs=0.5, batch_size=128, weight_decay=0.05, lr_grid=(3e-3, 1e-4),
                              copies=2, lp_epochs=1, lp_lr=1e-2)


def test_glyph_corpus_is_deterministic_colourful_and_has_no_digits():
    corpus, fonts = make_corpus(TINY_PRETRAIN)
    assert not set("0123456789") & set(CHARACTERS) and len(fonts) >= 1
    x1, y1 = corpus.batch(3, 64)
    x2, y2 = corpus.batch(3, 64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (64, 3, 32, 32) and 0 <= x1.min() and x1.max() <= 1
    mean_colour = x1.mean((2, 3))  # per-image colour: spread over the whole RGB cube, not one tint
    assert mean_colour.std(0).min() > 0.1
    assert not torch.equal(corpus.batch(4, 64)[0], x1)


def test_pretrain_writes_a_checkpoint_cnn_models_load_and_reuses_it(tmp_path):
    from askshift.lib.models.families import build_model

    messages: list[str] = []
    first = pretrain(TINY_PRETRAIN, tmp_path / "pre.pt", progress=messages.append)
    assert first.path.exists() and not first.cached and 0 <= first.val_accuracy <= 1
    assert any("stand-in" in m for m in messages)
    again = pretrain(TINY_PRETRAIN, tmp_path / "pre.pt", progress=messages.append)
    assert again.cached
    model = build_model("cnn:small", 10, pretrained=str(first.path))
    reference = build_model("cnn:small", 36)
    from askshift.lib.store import load_torch

    reference.load_state_dict(load_torch(first.path)["model"])
    model.eval(), reference.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.features(x), reference.features(x))


@pytest.fixture(scope="module")
def finetuned(prefect_api, tmp_path_factory):
    from askshift.flows.finetune import FinetuneConfig, pretrained_finetune

    store = tmp_path_factory.mktemp("store")
    config = FinetuneConfig(
        dataset="digits", shift="out_of_support", store=str(store), models=("cnn:small",), strategies=("ft", "lp-ft"),
        hparams=TINY_RECIPE, pretrain=TINY_PRETRAIN, device="cpu",
        baseline={"epochs": 2, "train_fractions": [1.0, 0.5], "batch_size": 128},
    )
    started = time.time()
    result = pretrained_finetune(config)
    return config, result, time.time() - started


@pytest.mark.slow
def test_finetune_flow_selects_lrs_trains_copies_predicts_and_reports_er(finetuned):
    config, result, _ = finetuned
    exp = config.store.experiment(Path(result["experiment"]).name)
    models = exp.models()
    counts = dict(models.group_by("group").len().iter_rows())
    assert counts == {"baseline": 4, "ft": 2, "lp-ft": 2, "scratch-same-arch": 2}, counts

    # The selected LR is the sweep's best reference-validation accuracy, for every strategy.
    infos = [json.loads(i) for i in models["info"]]
    for chosen in result["selected"]:
        sweep = {}
        for run_dir in (exp.root / "runs").iterdir():
            cfg_path, done = run_dir / "config.json", run_dir / "done"
            if cfg_path.exists() and done.exists():
                cfg = read_json(cfg_path)
                if cfg.get("strategy") == chosen["strategy"] and cfg["train"]["seed"] == 0:
                    sweep[cfg["train"]["lr"]] = read_json(done)["val_accuracy"]
        assert set(sweep) == set(TINY_RECIPE.lr_grid)
        assert chosen["lr"] == max(sweep, key=lambda lr: (sweep[lr], lr))
        copies = [i for i in infos if i.get("strategy") == chosen["strategy"]]
        assert {i["lr"] for i in copies} == {chosen["lr"]} and {i["seed"] for i in copies} == {0, 1}

    # Fine-tuning started from the local glyph checkpoint, built once in the store's cache.
    assert any("pretrained" in str(p) for p in config.store.resolved_cache_dir().rglob("glyphs-*.pt"))
    assert {i["pretrained"] for i in infos if i.get("strategy") in ("ft", "lp-ft")} != {None}
    assert {i["pretrained"] for i in infos if i.get("strategy") == "scratch"} == {None}

    for model_id in result["models"]:
        for split in ("source_val", "tint_val", "vflip_val"):
            assert exp.has_predictions(model_id, split)

    summary = exp.read_table("er_summary").filter((pl.col("view") == "full") & (pl.col("sub_split") == "all"))
    for shift in ("tint_val", "vflip_val"):
        rows = summary.filter(pl.col("shift") == shift)
        assert {"ft", "lp-ft", "scratch-same-arch"} <= set(rows["group"].to_list())
        for row in rows.filter(pl.col("group") != "baseline").iter_rows(named=True):
            assert row["n_models"] == 2
            assert row["er_lower"] <= row["effective_robustness"] <= row["er_upper"]
    assert exp.report_path.exists()


@pytest.mark.slow
def test_a_finished_finetune_run_is_not_trained_again(finetuned):
    from askshift.lib.models.finetune import finetune_run, plan_run

    config, result, _ = finetuned
    exp = config.store.experiment(Path(result["experiment"]).name)
    info = json.loads(exp.models().filter(pl.col("group") == "ft")["info"][0])
    run = plan_run("ft", "cnn:small", TINY_RECIPE, info["lr"], info["seed"], dataset="digits", shift="out_of_support",
                   pretrained=info["pretrained"], class_names=[str(i) for i in range(10)])
    started = time.time()
    outcome = finetune_run(exp, run, str(config.store.resolved_cache_dir()), device="cpu", log=lambda m: pytest.fail(f"retrained: {m}"))
    assert outcome.val_accuracy == info["val_accuracy"] and time.time() - started < 5


@pytest.mark.slow
def test_cli_run_finetune_as_written_reuses_finished_runs_and_prints_the_experiment(finetuned, askshift):
    config, result, _ = finetuned
    info = json.loads(config.store.experiment(Path(result["experiment"]).name).models()
                      .filter(pl.col("group") == "ft")["info"][0])
    cmd = [askshift, "run", "finetune", "--dataset", "digits", "--shift", "out_of_support", "--models", "cnn:small",
           "--strategies", "ft", "--store", config.store.root, "--pretrained", info["pretrained"],
           "--no-control", "--epochs", "1", "--batch-size", "128", "--weight-decay", "0.05", "--lr-grid", "3e-3,1e-4",
           "--copies", "1", "--device", "cpu"]
    # The same FT recipe as the flow above: every run is found done, only predictions/report are refreshed.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == result["experiment"]
    assert "effective" in (Path(result["experiment"]) / "report.md").read_text().lower()


@pytest.mark.slow
def test_hparam_ablation_reports_er_per_value_around_the_selected_config(finetuned):
    from askshift.flows.finetune import AblationConfig, hparam_ablation

    config, result, _ = finetuned
    base = config.model_copy(update={"strategies": ("ft",)})
    out = hparam_ablation(AblationConfig(finetune=base, epochs=(2,), lrs=(), batch_sizes=(), weight_decays=(0.0,), copies=1))
    table = pl.read_parquet(out["table"])
    selected_lr = next(s["lr"] for s in result["selected"] if s["strategy"] == "ft")
    for shift in ("tint_val", "vflip_val"):
        rows = table.filter(pl.col("shift") == shift)
        got = {(r["hparam"], r["value"], r["selected"]) for r in rows.iter_rows(named=True)}
        assert {("epochs", 2.0, False), ("weight_decay", 0.0, False), ("epochs", 1.0, True), ("lr", selected_lr, True),
                ("weight_decay", 0.05, True)} <= got, got
        assert rows["effective_robustness"].is_finite().all()


@pytest.mark.parametrize("extra,message", [
    (["--preset", "openai_clip", "--models", "cnn:small"], "preset 'openai_clip' is for clip: models"),
    (["--strategies", "zs-ft"], "needs a CLIP model"),
    (["--lr-grid", "1e-3,-1e-4"], "positive learning rates"),
    (["--copies", "0"], "at least 1"),
    (["--models", "cnn:smal"], "Did you mean 'small'"),
])
def test_cli_bad_inputs_fail_with_one_line_before_training(tmp_path, capsys, extra, message):
    from askshift.cli.main import main

    assert main(["run", "finetune", "--store", str(tmp_path / "store"), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "store").exists()  # nothing ran, nothing was written


def test_cli_models_lists_families_presets_and_strategies(askshift):
    out = subprocess.run([askshift, "models"], capture_output=True, text=True, timeout=120, check=True, env=ONE_THREAD_ENV).stdout
    for word in ("cnn", "timm", "clip", "openai_clip", "augreg_in21k", "lp-ft", "zs-ft", "scratch"):
        assert word in out


def test_cli_pretrain_says_it_is_a_stand_in_and_writes_the_file(askshift, tmp_path):
    help_text = subprocess.run([askshift, "pretrain", "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "STAND-IN for CLIP / AugReg" in " ".join(help_text.split())
    out = tmp_path / "pre.pt"
    proc = subprocess.run([askshift, "pretrain", "--out", str(out), "--steps", "3", "--batch-size", "16"],
                          capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out) and out.exists()
