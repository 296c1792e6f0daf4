"""ER reports: files written by build_report, plot artists, markdown readings, inlined images, atomic store writes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from report_data import make_experiment

from askshift.lib.report.markdown import build_report, ensure_metrics, inline_images, reading
from askshift.lib.report.plots import accuracy_on_the_line, er_by_group
from askshift.lib.robustness.comparison import compare_fits
from askshift.lib.store import ExperimentStore, atomic_write_parquet


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("store") / "tint")
    return exp, build_report(exp)


def test_build_report_writes_metrics_er_tables_plots_and_markdown(built):
    exp, result = built
    for path in (result.report_path, result.metrics_path, result.er_path, result.summary_path, *result.plots):
        assert path.exists() and path.stat().st_size > 0, path
    er = pl.read_parquet(result.er_path)
    assert {"shift", "sub_split", "view", "model", "group", "effective_robustness", "er_lower", "er_upper",
            "fit_r", "fit_residual_sd", "fit_n", "fit_reference_min", "fit_reference_max"} <= set(er.columns)
    assert set(er["sub_split"]) == {"all", "in_support", "out_of_support"}
    assert set(er["shift"]) == {"tint_val"}
    metrics = pl.read_parquet(result.metrics_path)
    assert metrics.filter(pl.col("sub_split") == "all").height == 2 * 11  # 11 models x 2 splits
    # the synthetic "ft" models sit 0.10 above the baseline line on the whole split
    ft = result.summary.filter((pl.col("group") == "ft") & (pl.col("view") == "full") & (pl.col("sub_split") == "all"))
    assert ft["effective_robustness"][0] == pytest.approx(0.10, abs=0.02)
    assert ft["verdict"][0] == "helped"


def test_report_markdown_links_every_plot_by_relative_path_and_gives_a_reading(built):
    exp, result = built
    text = result.report_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(links) == len(result.plots) == 6
    assert all(not os.path.isabs(link) and (exp.root / link).exists() for link in links)
    assert "Pre-training helped on this shift" in text
    assert "r = " in text and "residual sd" in text and "reference accuracy" in text  # fit diagnostics shown
    assert "in-support part" in text and "out-of-support part" in text


def test_metrics_are_reused_until_predictions_change(built):
    exp, _ = built
    before = exp.table_path("metrics").stat().st_mtime_ns
    ensure_metrics(exp)
    assert exp.table_path("metrics").stat().st_mtime_ns == before
    time.sleep(0.01)
    labels = np.zeros(10, int)
    exp.register_model("late", "ft")
    exp.write_predictions("late", "source_val", np.eye(4, dtype=np.float32)[labels], labels)
    assert "late" in ensure_metrics(exp)["model"].to_list()


def _comparison():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 0.9, 12)
    shift = np.clip(ref - 0.2 + rng.normal(0, 0.02, 12), 0, 1)
    shift[9:] += 0.1
    df = pl.DataFrame({"model": [f"m{i}" for i in range(12)], "group": ["baseline"] * 9 + ["ft"] * 3,
                       "reference_accuracy": ref, "shifted_accuracy": shift})
    return compare_fits(df, fit_range=(0.6, 0.95))


def test_accuracy_on_the_line_plot_has_points_line_band_reference_and_accuracy_ticks(tmp_path):
    comparison = _comparison()
    fig = accuracy_on_the_line(comparison.full, comparison.window, path=tmp_path / "aotl.png")
    ax = fig.axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == 2 and sorted(len(c.get_offsets()) for c in points) == [3, 9]
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # confidence band
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("baseline fit") for label in labels)
    assert any(label.startswith("comparable baselines") for label in labels)
    assert "y = x" in labels
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks and all(t.endswith("%") for t in ticks)
    assert (tmp_path / "aotl.png").read_bytes()[:4] == b"\x89PNG"


def test_er_plot_has_an_interval_per_group_and_view():
    comparison = _comparison()
    fig = er_by_group(comparison.full, comparison.window)
    ax = fig.axes[0]
    assert len(ax.containers) == 4  # errorbar per (group, view): 2 groups x 2 views
    assert ax.get_xticklabels()[0].get_text() == "baseline"


def test_reading_says_helped_or_not_helped():
    comparison = _comparison()
    assert reading(comparison).startswith("Pre-training helped")
    flat = comparison.full.table.with_columns(
        shifted_accuracy=pl.when(pl.col("group") == "ft").then(pl.col("predicted_shifted_accuracy"))
        .otherwise(pl.col("shifted_accuracy")))
    assert reading(compare_fits(flat.select("model", "group", "reference_accuracy", "shifted_accuracy"))).startswith(
        "Pre-training did not help")


def test_inline_images_embeds_linked_pngs_as_base64_data_uris(built):
    exp, result = built
    inlined = inline_images(result.markdown, exp.root)
    assert "](plots/" not in inlined
    assert inlined.count("](data:image/png;base64,") == len(result.plots)


def test_store_write_interrupted_before_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "tables" / "er.parquet"
    atomic_write_parquet(path, pl.DataFrame({"x": [1, 2, 3]}))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before rename")

    monkeypatch.setattr("askshift.lib.store.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_parquet(path, pl.DataFrame({"x": [9]}))
    monkeypatch.undo()
    assert pl.read_parquet(path)["x"].to_list() == [1, 2, 3]
    assert [p.name for p in path.parent.iterdir()] == ["er.parquet"]  # the temporary file was removed


def test_store_write_of_a_process_killed_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("previous report\n")
    script = (
        "import sys, time\n"
        "from askshift.lib.store import atomic_path\n"
        f"with atomic_path({str(path)!r}) as tmp:\n"
        "    tmp.write_text('half a report')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()  # SIGKILL: no cleanup, no rename
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_text() == "previous report\n"


def test_metrics_written_without_sub_splits_are_recomputed_once_sub_splits_exist(tmp_path):
    from askshift.lib.robustness.metrics import metrics_table

    exp = make_experiment(tmp_path / "exp", n_baselines=3, n_pretrained=1)
    exp.write_table("metrics", metrics_table(exp).drop("sub_split"))  # as a flow might write it
    metrics = ensure_metrics(exp)
    assert {"all", "in_support", "out_of_support"} == set(metrics["sub_split"])


def test_every_surface_shows_the_same_group_interval(built):
    """The report's summary, its ER section, the split report's per-part table and `askshift er` on the same
    accuracies give one interval per group (the group mean's)."""
    from askshift.lib.report.support import er_markdown, support_er
    from askshift.lib.robustness.er import accuracy_pairs, effective_robustness

    exp, result = built
    parts = support_er(exp, "source_val", "tint_val")
    for sub in ("all", "in_support", "out_of_support"):
        summary = result.summary.filter((pl.col("view") == "full") & (pl.col("group") == "ft") & (pl.col("sub_split") == sub))
        row = summary.row(0, named=True)
        part = parts.groups.filter((pl.col("sub_split") == sub) & (pl.col("group") == "ft")).row(0, named=True)
        reference = result.metrics.filter((pl.col("split") == "source_val") & (pl.col("sub_split") == "all"))
        shifted = result.metrics.filter((pl.col("split") == "tint_val") & (pl.col("sub_split") == sub))
        cli = effective_robustness(accuracy_pairs(pl.concat([reference, shifted]), "source_val", "tint_val")).group("ft")
        for other in (part, cli):
            assert other["er_lower"] == pytest.approx(row["er_lower"]) and other["er_upper"] == pytest.approx(row["er_upper"])
        assert (row["er_lower_total"], row["er_upper_total"]) == (row["er_lower"], row["er_upper"])
    assert parts.fits.height == 3 and {"fit_r", "fit_n", "fit_weak_line", "describe"} <= set(parts.fits.columns)
    assert "Line per part" in er_markdown(parts)


def test_example_bootstrap_adds_percentile_intervals_to_tables_and_report(tmp_path):
    exp = make_experiment(tmp_path / "exp", n_baselines=6, n_pretrained=3)
    result = build_report(exp, bootstrap_examples=60, seed=3)
    for table in (result.er_table, result.summary):
        assert {"er_lower_example_bootstrap", "er_upper_example_bootstrap"} <= set(table.columns)
    ft = result.summary.filter((pl.col("view") == "full") & (pl.col("group") == "ft") & (pl.col("sub_split") == "all"))
    lo, hi = ft["er_lower_example_bootstrap"][0], ft["er_upper_example_bootstrap"][0]
    assert lo < ft["effective_robustness"][0] < hi
    assert "example bootstrap" in result.markdown
    again = build_report(exp, bootstrap_examples=60, seed=3).summary
    assert again["er_lower_example_bootstrap"].to_list() == result.summary["er_lower_example_bootstrap"].to_list()
    with pytest.raises(Exception, match="needs --metric accuracy"):
        build_report(exp, bootstrap_examples=10, metric="macro_f1")


def test_stored_correctness_aligns_examples_by_index_across_models(tmp_path):
    from askshift.lib.report.markdown import stored_correctness

    exp = ExperimentStore(tmp_path / "exp")
    labels = np.array([0, 1, 2, 3])
    logits = np.eye(4, dtype=np.float32)
    exp.write_predictions("a", "s_val", logits, labels, indices=np.array([10, 11, 12, 13]))
    wrong = np.roll(np.eye(4, dtype=np.float32), 1, axis=1)[:3]
    exp.write_predictions("b", "s_val", wrong, labels[:3], indices=np.array([12, 10, 11]))
    matrix = stored_correctness(exp, ["a", "b"], "s_val")
    assert matrix.shape == (2, 4)
    assert matrix[0].tolist() == [1, 1, 1, 1]
    assert matrix[1, :3].tolist() == [0, 0, 0] and np.isnan(matrix[1, 3])


def test_report_says_extrapolated_next_to_the_number(tmp_path):
    # A comparable window of baselines at 0.55-0.70 judges fine-tuned models at 0.75-0.85: its line is extrapolated.
    exp = make_experiment(tmp_path / "exp", n_baselines=6, n_pretrained=3, subsplit=False)
    text = build_report(exp, fit_range=(0.5, 0.7)).markdown
    assert "extrapolated" in text
