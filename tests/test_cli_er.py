"""`askshift er TABLE ...` as a user runs it: output columns, formats, options, and one-line errors."""
from __future__ import annotations

import csv
import io
import json
import subprocess

import numpy as np
import polars as pl
import pytest

from askshift.lib.robustness.er import effective_robustness

COLUMNS = ["model", "group", "reference_accuracy", "shifted_accuracy", "predicted_shifted_accuracy",
           "effective_robustness", "er_lower", "er_upper"]
GUARDRAILS = ["extrapolated", "weak_line", "inverse_line", "caution"]  # added after the contract columns


def run_er(askshift, *args):
    return subprocess.run([askshift, "er", *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def accuracies() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 0.9, 10)
    shift = np.clip(ref - 0.2 + rng.normal(0, 0.02, 10), 0, 1)
    shift[7:] += 0.08
    return pl.DataFrame({"model": [f"m{i}" for i in range(10)], "group": ["baseline"] * 7 + ["clip-ft"] * 3,
                         "reference_accuracy": ref, "shifted_accuracy": shift,
                         "reference_n": [10_000] * 10, "shifted_n": [2_000] * 10})


def test_csv_output_has_the_contract_columns_in_order_and_the_engine_values(askshift, accuracies, tmp_path):
    path = tmp_path / "acc.csv"
    accuracies.write_csv(path)
    proc = run_er(askshift, path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == COLUMNS + GUARDRAILS
    assert [r[0] for r in rows[1:]] == accuracies["model"].to_list()
    expected = effective_robustness(accuracies).output_table()
    got = pl.read_csv(io.StringIO(proc.stdout))
    np.testing.assert_allclose(got["effective_robustness"], expected["effective_robustness"], rtol=1e-12)
    np.testing.assert_allclose(got["er_lower"], expected["er_lower"], rtol=1e-12)


def test_json_output_adds_a_summary_per_group_and_fit_diagnostics(askshift, accuracies, tmp_path):
    path = tmp_path / "acc.csv"
    accuracies.write_csv(path)
    proc = run_er(askshift, path, "--format", "json", "--scale", "logit")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data["models"][0]) == COLUMNS + GUARDRAILS and len(data["models"]) == 10
    groups = {g["group"]: g for g in data["groups"]}
    assert groups["clip-ft"]["n_models"] == 3
    assert groups["clip-ft"]["er_lower"] < groups["clip-ft"]["effective_robustness"] < groups["clip-ft"]["er_upper"]
    # one interval: the group mean's, under both names; its parts are given
    assert (groups["clip-ft"]["er_lower_total"], groups["clip-ft"]["er_upper_total"]) == \
        (groups["clip-ft"]["er_lower"], groups["clip-ft"]["er_upper"])
    assert {"er_se", "line_se", "spread_se", "extrapolated", "weak_line", "inverse_line", "caution"} <= set(groups["clip-ft"])
    assert data["fit"]["scale"] == "logit" and data["fit"]["n_baselines"] == 7
    assert {"r", "residual_sd", "reference_min", "reference_max"} <= set(data["fit"])


def test_parquet_input_with_fit_range_bootstrap_and_out_file(askshift, accuracies, tmp_path):
    path = tmp_path / "acc.parquet"
    accuracies.with_columns(group=pl.col("group").replace("baseline", "scratch")).write_parquet(path)
    out = tmp_path / "er.csv"
    proc = run_er(askshift, path, "--baseline-group", "scratch", "--fit-range", "0.5:0.95", "--bootstrap", "200",
                  "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and str(out) in proc.stderr
    got = pl.read_csv(out)
    assert got.columns == COLUMNS + GUARDRAILS and got.height == 10
    assert (got["er_lower"] <= got["effective_robustness"]).all() and (got["effective_robustness"] <= got["er_upper"]).all()
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file behind


def test_csv_and_json_show_the_same_interval_and_say_when_a_model_is_extrapolated(askshift, accuracies, tmp_path):
    # One judged model far beyond the baselines' reference accuracy: flagged in the column and in words.
    table = accuracies.with_columns(
        reference_accuracy=pl.when(pl.col("model") == "m9").then(0.995).otherwise(pl.col("reference_accuracy")))
    path = tmp_path / "acc.csv"
    table.write_csv(path)
    csv_rows = pl.read_csv(io.StringIO(run_er(askshift, path, "--binomial").stdout))
    data = json.loads(run_er(askshift, path, "--binomial", "--format", "json").stdout)
    m9 = csv_rows.filter(pl.col("model") == "m9").row(0, named=True)
    assert m9["extrapolated"] is True and "extrapolated" in m9["caution"]
    assert [r["er_lower"] for r in data["models"]] == pytest.approx(csv_rows["er_lower"].to_list())
    engine = effective_robustness(table, binomial=True).group("clip-ft")
    group = {g["group"]: g for g in data["groups"]}["clip-ft"]
    assert group["er_lower"] == pytest.approx(engine["er_lower"]) and "extrapolated (1 of 3 models)" in group["caution"]


def _bad_tables(tmp_path, accuracies):
    def write(name, df):
        path = tmp_path / name
        df.write_csv(path)
        return path

    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    wrong_row = accuracies.with_columns(
        pl.when(pl.col("model") == "m3").then(1.2).otherwise(pl.col("shifted_accuracy")).alias("shifted_accuracy"))
    return [
        ([write("nocol.csv", accuracies.drop("shifted_accuracy"))], "missing column 'shifted_accuracy'"),
        ([write("row.csv", wrong_row)], "row 4 (model 'm3'): shifted_accuracy = 1.2 is outside [0, 1]"),
        ([write("pct.csv", accuracies.with_columns(pl.col("reference_accuracy", "shifted_accuracy") * 100))],
         "look like percentages: divide by 100"),
        ([write("few.csv", accuracies), "--baseline-group", "scratch"], "need at least 3 baseline models"),
        ([write("ok.csv", accuracies), "--scale", "probitt"], "unknown scale 'probitt'"),
        ([tmp_path / "missing.csv"], "no such file"),
        ([garbage], "cannot read"),
    ]


def test_every_bad_input_exits_nonzero_with_one_clear_line(askshift, accuracies, tmp_path):
    for args, message in _bad_tables(tmp_path, accuracies):
        proc = run_er(askshift, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, (args, proc.stdout)
        assert len(lines) == 1, (args, proc.stderr)
        assert message in lines[0], (args, lines[0])
        assert proc.stdout == ""
