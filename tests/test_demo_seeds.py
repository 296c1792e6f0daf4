"""The demo over several seeds: the mean ER, its t interval over seeds and the count of seeds that read as the paper."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from askshift.lib.report.demo_seeds import mean_interval, parse_seeds, seeds_lines, seeds_table


def _table(seed: int, er: dict[tuple[str, str, str], tuple[float, str]]) -> pl.DataFrame:
    rows = [{"shift": shift, "support": support, "sub_split": "all", "group": group, "effective_robustness": value,
             "verdict": verdict, "comparable_verdict": None, "seed": seed}
            for (shift, support, group), (value, verdict) in er.items()]
    rows.append({"shift": "vflip", "support": "out", "sub_split": "all", "group": "baseline",
                 "effective_robustness": 0.0, "verdict": "no effect", "comparable_verdict": None, "seed": seed})
    return pl.DataFrame(rows)


def test_seeds_table_gives_mean_t_interval_and_agreement_per_shift_and_group():
    values = {0: 0.10, 1: 0.04, 2: 0.16, 7: -0.01}
    tables = {s: _table(s, {("vflip", "out", "ft"): (v, "helped" if v > 0.03 else "no effect"),
                            ("tint_p=0.5", "in", "ft"): (v / 10, "no effect")}) for s, v in values.items()}
    out = seeds_table(tables)
    assert set(out["group"]) == {"ft"}  # baselines are not judged
    vflip = out.filter(pl.col("shift") == "vflip").row(0, named=True)
    x = np.array(list(values.values()))
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert vflip["mean_er"] == pytest.approx(x.mean())
    assert (vflip["er_lower"], vflip["er_upper"]) == pytest.approx((x.mean() - half, x.mean() + half))
    assert (vflip["helped"], vflip["agree"], vflip["expected"], vflip["seeds"]) == (3, 3, "helped", "0,1,2,7")
    tint = out.filter(pl.col("shift") == "tint_p=0.5").row(0, named=True)
    assert (tint["helped"], tint["agree"], tint["expected"]) == (0, 4, "did not help")
    lines = seeds_lines(out)
    assert lines[0].startswith("Over 4 seeds") and any("vflip" in l and "3/4 agree" in l for l in lines)


def test_split_parts_are_judged_by_their_own_support():
    tables = {s: pl.DataFrame([
        {"shift": "mixed", "support": "out", "sub_split": part, "group": "lp-ft", "effective_robustness": 0.05,
         "verdict": "helped", "comparable_verdict": None} for part in ("in_support", "out_of_support")])
        for s in (0, 1)}
    out = seeds_table(tables).sort("sub_split")
    assert out["expected"].to_list() == ["did not help", "helped"]
    assert out["agree"].to_list() == [0, 2]


def test_a_single_seed_has_no_interval_over_seeds():
    mean, lo, hi, sd = mean_interval([0.2])
    assert mean == 0.2 and math.isnan(lo) and math.isnan(hi) and math.isnan(sd)


@pytest.mark.parametrize("text, words", [("0,x", "integers"), ("", "at least one"), ("1,-2", "0 or more"),
                                         ("1,1", "twice")])
def test_bad_seed_lists_are_refused_with_the_rule(text, words):
    with pytest.raises(ValueError, match=words):
        parse_seeds(text)


def test_demo_seeds_flag_errors_are_one_line_before_anything_runs(tmp_path, capsys):
    from askshift.cli.main import main

    assert main(["demo", "--seeds", "0,-1", "--store", str(tmp_path / "s")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["demo", "--seed", "3", "--seeds", "0,1", "--store", str(tmp_path / "s")]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_papers_strong_tint_exception_is_expected_to_help():
    from askshift.flows.demo_config import DEFAULT_SHIFTS

    paper = {s.name: s.paper_helped for s in DEFAULT_SHIFTS}
    assert paper == {"unseen_tint": True, "vflip": True, "tint_p=0.5": False, "label_p=0.2": False, "tint_p=0.9": True}
    tables = {0: pl.DataFrame([{"shift": "tint_p=0.9", "support": "in", "sub_split": "all", "group": "ft",
                                "effective_robustness": 0.2, "verdict": "helped", "comparable_verdict": None}])}
    row = seeds_table(tables, paper_helped=paper).row(0, named=True)
    assert (row["expected"], row["agree"]) == ("helped", 1)
