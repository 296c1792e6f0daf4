"""`askshift demo` (the README's first command, `make demo`): the quick variant end to end, and its pieces."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from askshift.flows.demo_config import (
    DEFAULT_SHIFTS,
    DemoConfig,
    Progress,
    er_table,
    format_duration,
    shift_reading,
    summary_lines,
)

QUICK_SHIFTS = {"unseen_tint": "out", "vflip": "out", "tint_p=0.5": "in", "label_p=0.2": "in",
                "mixed/in_support": "in", "mixed/out_of_support": "out"}
GROUPS = {"baseline", "ft", "lp-ft"}  # --quick leaves out the same-architecture control


def read_artifacts(keys: list[str]) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a for a in found}


def test_makefile_demo_target_runs_the_demo_command_with_seed_and_store():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert ".venv/bin/askshift demo --seed $(SEED) --store $(STORE)" in makefile
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first_command = next(line for line in readme.splitlines() if line.startswith("make "))
    assert first_command.split()[:2] == ["make", "demo"]


SEED = 3


def run_quick_demo(askshift: str, prefect_api: str, store: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    started = time.monotonic()
    proc = subprocess.run([askshift, "demo", "--quick", "--store", str(store), "--seed", str(SEED)],
                          capture_output=True, text=True, env=env, timeout=1750)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, time.monotonic() - started


@pytest.fixture(scope="module")
def quick_demo(prefect_api, tmp_path_factory):
    """`askshift demo --quick --seed 3` once, in a clean store (the README's first command, quick variant)."""
    from conftest import askshift_exe

    askshift = askshift_exe()
    store = tmp_path_factory.mktemp("demo") / "store"
    proc, seconds = run_quick_demo(askshift, prefect_api, store)
    print(f"quick demo: {seconds:.0f} s")
    return {"store": store, "proc": proc, "seconds": seconds, "askshift": askshift, "api": prefect_api}


def snapshot(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2.5 minutes on an idle 2-core machine; leave room for a loaded CI runner
def test_quick_demo_end_to_end_writes_report_tables_artifacts_and_ends_with_the_report_path(quick_demo):
    store, proc = quick_demo["store"], quick_demo["proc"]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]

    # The last line printed is the report's path; the report embeds plots that exist.
    report = Path(lines[-1])
    assert report == (store / "demo" / "report.md").resolve()
    text = report.read_text()
    for link in [part.split(")")[0] for part in text.split("](")[1:] if part.split(")")[0].endswith(".png")]:
        assert (report.parent / link).exists(), link
    assert "comparable baselines" in text and "r = " in text and "Reading:" in text
    assert "in-support and out-of-support parts" in text

    # Progress was visible throughout (stage, models done, ETA), and a five-line summary precedes the path.
    assert any("stage 3/5" in line and "models trained" in line and "ETA" in line for line in lines)
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("Summary:"))
    summary = lines[summary_at + 1: summary_at + 6]
    assert summary[0].startswith("shift") and [s.split()[0] for s in summary[1:]] == list(QUICK_SHIFTS)[:4]

    # The ER table: every shift x group once, support in/out, intervals around the estimate.
    table = pl.read_parquet(store / "demo" / "tables" / "demo_er.parquet")
    assert {"shift", "support", "group", "effective_robustness", "er_lower", "er_upper"} <= set(table.columns)
    assert {(s, g) for s, g in table.select("shift", "group").iter_rows()} == {(s, g) for s in QUICK_SHIFTS for g in GROUPS}
    assert table.height == len(QUICK_SHIFTS) * len(GROUPS)
    assert dict(table.select("shift", "support").unique().iter_rows()) == QUICK_SHIFTS
    assert (table["er_lower"] <= table["effective_robustness"]).all()
    assert (table["effective_robustness"] <= table["er_upper"]).all()
    assert table.filter(pl.col("group") == "ft")["n_models"].to_list() == [2] * len(QUICK_SHIFTS)  # quick: 2 copies
    assert (store / "demo" / "tables" / "demo_models.parquet").exists()

    # Keys: demo-report, demo-er, demo-result; a store other than ./askshift-store adds its hash (demo-3f9a1c-...).
    from askshift.flows.demo import demo_key

    stem = demo_key(str(store))
    assert stem != "demo" and stem.startswith("demo-")
    artifacts = read_artifacts([f"{stem}-report", f"{stem}-er", f"{stem}-result", f"{stem}-progress"])
    report_artifact = artifacts[f"{stem}-report"]
    assert report_artifact.type == "markdown" and "data:image/png;base64," in report_artifact.data
    rows = json.loads(artifacts[f"{stem}-er"].data)
    assert {(r["shift"], r["group"]) for r in rows} == {(s, g) for s in QUICK_SHIFTS for g in GROUPS}
    # The run the user started (here the CLI's demo run) carries the result note and a full progress bar.
    note = artifacts[f"{stem}-result"].data
    assert note.startswith("**demo quick digits seed 3**: pre-training helped on ") and str(report) in note
    assert float(artifacts[f"{stem}-progress"].data) == 100.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerun_with_the_same_seed_and_store_retrains_nothing_and_rebuilds_only_the_report(quick_demo):
    store = quick_demo["store"]
    # Trained and predicted things: checkpoints, fold scores of the domain classifier, registrations, predictions,
    # .beton files, the pre-trained checkpoint.  Tables, plots and reports are rebuilt from them.
    kept = ("/runs/", "/predictions/", "/models/", "/_cache/")
    trained = {p: t for p, t in snapshot(store).items() if any(k in str(p) for k in kept) and p.suffix != ".lock"}
    assert len(trained) > 100
    report = store / "demo" / "report.md"
    report_written = report.stat().st_mtime_ns
    table = pl.read_parquet(store / "demo" / "tables" / "demo_er.parquet")
    proc, seconds = run_quick_demo(quick_demo["askshift"], quick_demo["api"], store)
    print(f"quick demo, everything cached but the report: {seconds:.0f} s")
    assert proc.stdout.strip().splitlines()[-1] == str(report.resolve())
    after = {p: t for p, t in snapshot(store).items() if p in trained}
    assert after == trained, "a cached run, prediction or .beton was rewritten"
    assert report.stat().st_mtime_ns > report_written
    assert pl.read_parquet(store / "demo" / "tables" / "demo_er.parquet").equals(table)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_same_seed_in_a_fresh_store_gives_the_same_tables(quick_demo, tmp_path):
    """Deterministic with --seed: every model retrained from scratch (only the digits .beton files are copied,
    they are checked against their manifest) gives the same ER table and per-model table, bit for bit."""
    store = tmp_path / "store"
    shutil.copytree(quick_demo["store"] / "_cache" / "digits", store / "_cache" / "digits")
    run_quick_demo(quick_demo["askshift"], quick_demo["api"], store)
    # Model ids end in a hash of the run's config, which names the mixed shift's data file by its path in the
    # store: the same model in another store has another suffix.
    unhashed = pl.col("model").str.replace(r"-[0-9a-f]{6}$", "")
    for name in ("demo_er", "demo_models"):
        first = pl.read_parquet(quick_demo["store"] / "demo" / "tables" / f"{name}.parquet")
        again = pl.read_parquet(store / "demo" / "tables" / f"{name}.parquet")
        if "model" in first.columns:
            first, again = first.with_columns(unhashed), again.with_columns(unhashed)
        assert again.columns == first.columns and again.height == first.height
        differing = [c for c in first.columns if not again[c].equals(first[c])]
        assert not differing, f"{name}: columns {differing} differ between two runs of seed {SEED}"


# --- pieces (fast) ------------------------------------------------------------------------------------------------


def test_quick_variant_drops_the_extra_shift_and_full_variant_keeps_it():
    quick, full = DemoConfig.make(quick=True), DemoConfig.make()
    assert [s.name for s in quick.active_shifts()] == list(QUICK_SHIFTS)[:4]
    assert [s.name for s in full.active_shifts()] == [s.name for s in DEFAULT_SHIFTS]
    assert full.copies == 4 and set(full.strategies) == {"ft", "lp-ft"} and full.control  # the paper's 4 copies
    assert quick.planned_runs() < full.planned_runs()


def test_the_full_demo_fine_tunes_with_a_converged_probe_and_the_miniature_grid():
    """What keeps the corpus's flip invariance through fine-tuning (README: how the fine-tuning keeps what the
    corpus taught): the values reach the fine-tuning flow's recipe, not only the demo's config."""
    from askshift.flows.demo import finetune_config

    hparams = finetune_config(DemoConfig.make(), "out_of_support", "probe").hparams
    assert hparams.lr_grid == (3e-3, 1e-3, 3e-4) and hparams.copies == 4
    assert hparams.lp_epochs == 10 and hparams.lp_lr == 3e-2 and hparams.epochs == 4
    quick = finetune_config(DemoConfig.make(quick=True), "out_of_support", "probe").hparams
    assert quick.lp_epochs == 1 and quick.lp_lr == 1e-2 and quick.lr_grid == (3e-3,)


def test_quick_is_the_quick_demo_whichever_way_the_config_is_built():
    """The UI's form builds the config from the deployment's parameters with `quick` toggled, not through make():
    every variant setting left empty (absent or null, as a form sends it) takes the quick demo's value."""
    import yaml

    from askshift.flows.demo_config import FULL_VALUES, QUICK_OVERRIDES
    from askshift.flows.deployments import PREFECT_YAML

    quick = DemoConfig.make(quick=True)
    deployment = next(d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"] if d["name"] == "demo")
    from_form = {**deployment["parameters"]["config"], "quick": True}
    assert DemoConfig(**from_form) == quick
    assert DemoConfig(**{**from_form, **{k: None for k in QUICK_OVERRIDES}}) == quick
    assert DemoConfig.model_validate_json('{"quick": true, "copies": null}') == quick
    assert DemoConfig(**{**from_form, "quick": False}) == DemoConfig.make()
    # What the user did set wins over the variant; the form shows both variants' values for what they left empty.
    assert DemoConfig(quick=True, copies=5).copies == 5 and DemoConfig(copies=5).finetune_epochs == FULL_VALUES["finetune_epochs"]
    schema = DemoConfig.model_json_schema()["properties"]
    for name in QUICK_OVERRIDES:
        assert schema[name]["default"] is None and "with quick" in schema[name]["description"], name
    assert set(QUICK_OVERRIDES) == set(FULL_VALUES)


def test_experiment_folders_are_named_by_variant_and_seed_so_runs_never_mix():
    a, b = DemoConfig.make(seed=1), DemoConfig.make(seed=2)
    assert a.experiment_name("out_of_support") == "demo-full-s1-out_of_support"
    assert a.experiment_name("out_of_support") != b.experiment_name("out_of_support")
    assert DemoConfig.make(quick=True, seed=1).experiment_name("tint_p=0.5") == "demo-quick-s1-tint_p=0.5"
    custom = DemoConfig.make(seed=1, copies=5)
    assert custom.experiment_name("out_of_support").startswith("demo-full-s1-") and custom.experiment_name(
        "out_of_support") != a.experiment_name("out_of_support")
    assert DemoConfig.make(seed=1, store="/elsewhere").experiment_name("x") == a.experiment_name("x")


def _row(shift, group, er, lo, hi, cer=None, clo=None, chi=None, verdict=None, cverdict=None, disagree=False):
    return {"shift": shift, "support": "out", "group": group, "n_models": 3, "effective_robustness": er,
            "er_lower": lo, "er_upper": hi, "er_lower_total": lo, "er_upper_total": hi, "verdict": verdict, "comparable_effective_robustness": cer,
            "comparable_er_lower": clo, "comparable_er_upper": chi, "comparable_er_lower_total": clo,
            "comparable_er_upper_total": chi, "comparable_verdict": cverdict,
            "views_disagree": disagree, "fit_n": 18, "fit_r": 0.95, "fit_residual_sd": 0.1, "fit_reference_min": 0.3,
            "fit_reference_max": 0.9, "comparable_fit_n": 8, "comparable_fit_r": 0.9, "comparable_fit_range_lo": 0.8,
            "comparable_fit_range_hi": 0.95, "title": shift, "experiment": "e", "split": "tint_val", "sub_split": "all",
            "extra": False, "seed": 0, "variant": "full"}


def test_reading_says_helped_on_out_of_support_and_names_disagreeing_views():
    unseen = DEFAULT_SHIFTS[0]
    rows = [_row("unseen_tint", "ft", 0.3, 0.2, 0.4, 0.25, 0.1, 0.4, "helped", "helped")]
    assert shift_reading(rows, unseen).startswith("Pre-training helped here")
    assert "as the paper finds for out-of-support" in shift_reading(rows, unseen)
    spurious = DEFAULT_SHIFTS[2]
    rows = [_row("tint_p=0.5", "ft", 0.16, 0.05, 0.3, 0.05, -0.01, 0.11, "helped", "no clear effect", True)]
    text = shift_reading(rows, spurious)
    assert text.startswith("Pre-training did not help here") and "views disagree for ft" in text


def test_summary_has_a_header_and_one_line_per_main_shift():
    rows = [_row(s.name, g, 0.1, 0.0, 0.2, 0.05, -0.05, 0.15, "helped", "no clear effect")
            for s in DEFAULT_SHIFTS for g in ("baseline", "ft", "lp-ft")]
    lines = summary_lines(er_table(rows), DEFAULT_SHIFTS)
    assert len(lines) == 5
    assert [line.split()[0] for line in lines[1:]] == ["unseen_tint", "vflip", "tint_p=0.5", "label_p=0.2"]
    assert "+0.100 / +0.050" in lines[1] and lines[1].rstrip().endswith("did not help")


def test_progress_eta_grows_from_finished_runs_and_counts_done_markers(tmp_path):
    clock = [0.0]
    progress = Progress(tmp_path, ["exp"], planned_runs=4, stages=["a", "b"], write=lambda _: None,
                        clock=lambda: clock[0], report_seconds=0.0, training_stages=["b"])
    assert progress.eta() is None and "ETA ?" in progress.enter("a")
    clock[0] = 30.0  # time before the training stage does not count towards the rate
    progress.enter("b")
    for k in range(2):
        (tmp_path / "exp" / "runs" / f"r{k}").mkdir(parents=True)
        (tmp_path / "exp" / "runs" / f"r{k}" / "done").write_text("{}")
    clock[0] = 90.0
    assert progress.done() == 2 and progress.eta() == pytest.approx(60.0)
    assert "stage 2/2 b: 2/4 models trained, 1m30s elapsed, ETA 1m00s" in progress.line()
    assert format_duration(3725) == "1h02m"


@pytest.mark.slow
def test_mixed_shift_is_a_function_of_the_seed_and_keeps_a_reference_validation_split(tmp_path):
    import numpy as np

    from askshift.flows.demo import build_mixed_shift
    from askshift.lib.data.specs import load_spec

    def arrays(store, seed):
        files = build_mixed_shift.fn(DemoConfig.make(quick=True, seed=seed, store=str(store)))
        with np.load(files["npz"]) as data:
            return {k: data[k] for k in data.files}, load_spec(files["spec"])

    a, spec = arrays(tmp_path / "a", 5)
    b, _ = arrays(tmp_path / "b", 5)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert spec.splits() == ["source_train", "source_val", "mixed_val"]
    assert len(a["refval_labels"]) == len(a["mixed_labels"]) and a["shifted_out_of_support"].any()
    assert a["train_images"].shape[1:] == (32, 32, 3)


@pytest.mark.slow
def test_label_free_er_gets_the_sign_and_size_of_the_true_er_on_the_demo_shifts(quick_demo):
    """Each model's accuracy on the shifted split estimated without its labels, by ATC (confidences), ATC within the
    class bound (what its predicted classes allow) and ALine-D (agreement); the ask report's lead should get the sign
    and the size of the true ER: ATC on the in-support spurious tint p=0.5, the class bound on the unseen tint, where
    the models are confidently wrong and pile their predictions on a few classes."""
    from askshift.flows.demo_config import DemoConfig
    from askshift.lib.report.ask import METHODS, estimate_er_per_part, models_with_reference_predictions
    from askshift.lib.robustness.er import accuracy_pairs, effective_robustness
    from askshift.lib.robustness.metrics import metrics_table
    from askshift.lib.store import Store

    config = DemoConfig.make(quick=True, seed=3, store=str(quick_demo["store"]))
    found, lines, leads = {}, {}, {}
    for preset, split, support in (("out_of_support", "tint_val", "out"), ("tint_p=0.5", "tint_val", "in")):
        exp = Store(quick_demo["store"]).experiment(config.experiment_name(preset))
        models = models_with_reference_predictions(exp, "source_val")
        membership = pl.DataFrame({"index": exp.read_predictions(models[0], split)["index"], "support": support})
        er = estimate_er_per_part(exp, membership, models, "source_val", split)
        estimate, lines[preset], leads[preset] = (er["table"].filter(pl.col("part") == "all"), er["lines"]["all"],
                                                  er["headline"]["all"][0])
        truth = effective_robustness(accuracy_pairs(metrics_table(exp, splits=["source_val", split]), "source_val",
                                                    split)).groups
        for group in ("ft", "lp-ft"):
            true = truth.filter(pl.col("group") == group)["effective_robustness"][0]
            for method in METHODS:
                est = estimate.filter((pl.col("method") == method) & (pl.col("group") == group))
                found[preset, group, method] = (est["effective_robustness"][0], true)
    print({k: (round(e, 3), round(t, 3)) for k, (e, t) in found.items()}, leads,
          {k: round(v["r"], 2) for k, v in lines.items()})
    assert leads == {"out_of_support": "atc_bounded", "tint_p=0.5": "atc"}, leads
    # In-support (the models' confidence stays calibrated): ATC follows the truth.
    for group in ("ft", "lp-ft"):
        est, true = found["tint_p=0.5", group, "atc"]
        assert abs(est - true) < 0.06 and est < 0.03, (group, est, true)
    # Out-of-support (unseen tint): ATC overstates every model's accuracy and gets the sign wrong; the class bound
    # brings the estimate to the truth's side and within a few points (seeds 3, 0, 773: within 0.6 to 8.6 points).
    for group in ("ft", "lp-ft"):
        plain, true = found["out_of_support", group, "atc"]
        bounded, _ = found["out_of_support", group, "atc_bounded"]
        assert plain > true + 0.1 and bounded <= 0.02 and abs(bounded - true) < abs(plain - true) / 2, (
            group, plain, bounded, true)
    # ALine-D: the unseen tint weakens the agreement line (r 0.36 to 0.66 on seeds 3, 0, 773), which the report
    # flags; on tint p=0.5 it is strong (r >= 0.91).
    assert lines["out_of_support"]["weak"] and not lines["tint_p=0.5"]["weak"], lines
