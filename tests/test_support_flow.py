"""The split flow end to end on the known-answer digits mixture (`askshift split-check`), and its bad-input lines."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from askshift.cli.main import main as cli_main

SEED = 7


@pytest.fixture(scope="module")
def split_check_run(prefect_api, askshift_path, tmp_path_factory):
    """One `askshift split-check` run shared by the tests of this module (its store is inspected after)."""
    store = tmp_path_factory.mktemp("split-check-store")
    proc = subprocess.run([askshift_path, "split-check", "--seed", str(SEED), "--store", str(store)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from askshift.lib.store import Store

    return proc, Store(store).experiment(f"split-check-seed{SEED}")


@pytest.fixture(scope="module")
def askshift_path():
    from conftest import askshift_exe

    return askshift_exe()


@pytest.mark.slow
def test_split_check_output_ends_with_an_auroc_line_far_above_chance(split_check_run):
    proc, _ = split_check_run
    last = proc.stdout.rstrip("\n").splitlines()[-1]
    match = re.fullmatch(r"auroc: (\d\.\d{3})", last)
    assert match, f"last line is {last!r}"
    assert float(match.group(1)) >= 0.9
    assert "epsilon" in proc.stdout and "recall" in proc.stdout  # the sizes/recovery table was printed


@pytest.mark.slow
def test_stored_split_recovers_the_true_membership_and_sizes_move_with_epsilon(split_check_run):
    from askshift.lib.support.known_answer import read_truth

    _, exp = split_check_run
    truth, kind = read_truth(exp.root / "mixture.npz")
    sub = exp.read_subsplit("shifted_val")
    assert sub["index"].to_list() == list(range(truth.size))
    predicted_out = (sub["support"] == "out").to_numpy()
    assert (predicted_out == truth).mean() >= 0.9  # at the default epsilon 0.2
    sizes = exp.read_table("support_sizes_shifted").sort("epsilon")
    out = sizes["out_of_support"].to_list()
    assert all(a <= b for a, b in zip(out, out[1:]))
    assert out[0] < out[-1]
    # the sweep is kept beside the split: one membership column per epsilon
    assert sub["out_eps=0.0001"].sum() <= sub["out_eps=0.5"].sum()


@pytest.mark.slow
def test_every_example_is_scored_by_the_fold_model_that_never_trained_on_it(split_check_run):
    from askshift.flows.split import SplitConfig
    from askshift.lib.support.classifier import load_domain_data
    from askshift.lib.support.ratios import fold_plan

    _, exp = split_check_run
    config = SplitConfig.model_validate(exp.read_config("split_config"))
    setup = config.setup("shifted")
    data = load_domain_data(setup)
    plan = fold_plan(data, config.folds, config.seed)
    scores = exp.read_table("support_scores_shifted")
    assert scores.height == len(data)
    for fold in plan:
        run = exp.run_dir(setup.run_id("fold", fold=fold.fold, lr=_chosen_lr(exp)))
        scored = pl.read_parquet(run / "scores.parquet")["position"].to_numpy()
        assert np.array_equal(np.sort(scored), np.sort(fold.heldout))
        assert np.intersect1d(scored, fold.train).size == 0
        assert (scores["fold"].to_numpy()[fold.heldout] == fold.fold).all()


def _chosen_lr(exp) -> float:
    import json

    return json.loads((exp.table_path("support_scores_shifted").with_suffix(".config.json")).read_text())["lr"]


@pytest.mark.slow
def test_report_section_has_the_sizes_table_histogram_and_example_grid(split_check_run):
    _, exp = split_check_run
    section = (exp.root / "support_shifted.md").read_text()
    assert "Split sizes per ε" in section and "**(chosen)**" in section
    for name in ("support_hist_shifted", "support_examples_shifted"):
        assert exp.plot_path(name).stat().st_size > 1000
        assert f"plots/{name}.png" in section


@pytest.mark.slow
def test_metrics_and_er_accept_the_stored_sub_splits(split_check_run):
    """Models registered in the experiment get metrics and ER on each part (fake predictions, real tables)."""
    from askshift.lib.report.support import support_er
    from askshift.lib.robustness.metrics import metrics_table

    _, exp = split_check_run
    sub = exp.read_subsplit("shifted_val")
    rng = np.random.default_rng(0)
    n_ref, n_shift = 200, sub.height
    ref_labels = rng.integers(0, 10, n_ref)
    shift_labels = rng.integers(0, 10, n_shift)
    out = (sub.sort("index")["support"] == "out").to_numpy()
    for i, (group, acc_ref, acc_in, acc_out) in enumerate([
        ("baseline", 0.6, 0.55, 0.3), ("baseline", 0.7, 0.65, 0.4), ("baseline", 0.8, 0.75, 0.5),
        ("baseline", 0.9, 0.85, 0.6), ("pretrained", 0.8, 0.75, 0.8),
    ]):
        model = f"{group}-{i}"
        exp.register_model(model, group)
        exp.write_predictions(model, "source_val", _logits(ref_labels, np.full(n_ref, acc_ref), rng), ref_labels)
        acc = np.where(out, acc_out, acc_in)
        exp.write_predictions(model, "shifted_val", _logits(shift_labels, acc, rng), shift_labels)
    in_metrics = metrics_table(exp, splits=["shifted_val"], sub_split="in_support")
    assert set(in_metrics["n"].to_list()) == {int((~out).sum())}
    er = support_er(exp, "source_val", "shifted_val")
    assert set(er.groups["sub_split"].to_list()) == {"all", "in_support", "out_of_support"}
    pre = er.groups.filter(pl.col("group") == "pretrained").sort("sub_split")
    er_by_part = dict(zip(pre["sub_split"].to_list(), pre["effective_robustness"].to_list()))
    # the pre-trained model is robust only on the out-of-support part, as built
    assert er_by_part["out_of_support"] > er_by_part["in_support"] + 0.1


def _logits(labels, accuracy, rng):
    """Logits whose argmax is the label with the given per-example probability."""
    n = labels.size
    correct = rng.random(n) < accuracy
    predicted = np.where(correct, labels, (labels + rng.integers(1, 10, n)) % 10)
    logits = rng.normal(0, 0.1, (n, 10)).astype(np.float32)
    logits[np.arange(n), predicted] += 5
    return logits


# --- bad input: one clear line, before any training ------------------------------------------------------

def _npz(path, n, classes):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), labels=np.arange(n) % classes)
    return str(path)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split-bad-input")
    return {"ref": _npz(folder / "ref.npz", 40, 4), "more_classes": _npz(folder / "more.npz", 20, 6),
            "tiny": _npz(folder / "tiny.npz", 5, 4), "store": str(folder / "store")}


def _run_split(sets, shifted, *extra):
    return cli_main(["run", "split", "--reference", "npz", "--reference-root", sets["ref"], "--shifted", "npz",
                     "--shifted-root", sets[shifted], "--store", sets["store"], *extra])


@pytest.mark.parametrize("epsilon", ["0", "1", "1.5", "-0.2"])
def test_epsilon_outside_unit_interval_is_one_clear_line(small_sets, capsys, epsilon):
    assert _run_split(small_sets, "ref", "--epsilon", epsilon) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside (0, 1)" in err


def test_shifted_classes_missing_from_the_reference_are_one_clear_line(small_sets, capsys):
    assert _run_split(small_sets, "more_classes", "--folds", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "class(es) the reference set lacks (4, 5)" in err
    assert not list(Path(small_sets["store"]).glob("*/runs"))  # nothing was trained


def test_fewer_shifted_examples_than_folds_is_one_clear_line(small_sets, capsys):
    assert _run_split(small_sets, "tiny", "--folds", "10") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "5 example(s), fewer than the 10 folds" in err and "--folds 5" in err


def test_unknown_domain_classifier_is_one_clear_line(small_sets, capsys):
    assert _run_split(small_sets, "ref", "--classifier", "cnn:huge") == 2
    assert "unknown cnn size 'huge'" in capsys.readouterr().err


def test_gpu_default_classifier_is_the_papers_clip_lp_ft_by_name():
    from askshift.lib.support.ratios import default_classifier

    gpu, cpu = default_classifier("cuda"), default_classifier("cpu")
    assert gpu.model == "clip:ViT-L-14:laion2b_s32b_b82k" and gpu.linear_probe_epochs > 0 and len(gpu.lrs) == 8
    assert cpu.model.startswith("cnn:") and cpu.linear_probe_epochs == 0


@pytest.mark.slow
def test_rerunning_the_split_flow_retrains_nothing_and_gives_the_same_split(split_check_run):
    from askshift.flows.split import SplitConfig, split_shift

    _, exp = split_check_run
    config = SplitConfig.model_validate(exp.read_config("split_config"))
    done = {p: p.stat().st_mtime_ns for p in (exp.root / "runs").glob("*/done")}
    checkpoints = {p: p.stat().st_mtime_ns for p in (exp.root / "runs").rglob("*.pt")}
    before = exp.read_subsplit("shifted_val")
    split_shift(config)
    assert done and done == {p: p.stat().st_mtime_ns for p in (exp.root / "runs").glob("*/done")}
    assert checkpoints == {p: p.stat().st_mtime_ns for p in (exp.root / "runs").rglob("*.pt")}
    after = exp.read_subsplit("shifted_val")
    assert after.select("index", "support", "ratio").equals(before.select("index", "support", "ratio"))
