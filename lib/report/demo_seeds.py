"""The demo over several seeds: per shift and group, the mean ER over seeds, its interval and how many seeds agree."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import polars as pl
from scipy import stats

from askshift.lib.store import atomic_write_parquet, atomic_write_text

SEEDS_TABLE = "demo_seeds"  # STORE/demo/tables/demo_seeds.parquet: one row per (shift, part, group) over seeds
JUDGED_GROUPS = ("ft", "lp-ft")

SEEDS_SCHEMA = {
    "shift": pl.String, "support": pl.String, "sub_split": pl.String, "group": pl.String, "n_seeds": pl.Int64,
    "seeds": pl.String, "mean_er": pl.Float64, "er_lower": pl.Float64, "er_upper": pl.Float64, "sd_er": pl.Float64,
    "min_er": pl.Float64, "max_er": pl.Float64, "helped": pl.Int64, "agree": pl.Int64, "expected": pl.String,
}


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ValueError naming what is wrong."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        seeds = tuple(int(t) for t in items)
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. 0,1,2")
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be 0 or more, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def seed_verdict(row: dict) -> str:
    """The verdict a seed's summary line reads: the comparable-baseline view when it exists, else the full line."""
    return row.get("comparable_verdict") or row.get("verdict") or "n/a"


def expected_reading(support: str, sub_split: str, paper_helped: bool | None = None) -> str:
    """What the paper found: pre-training helps out of support, not in support (a split part by its own support;
    ``paper_helped`` overrides for a whole shift, e.g. the paper's strongest-spurious-tint exception)."""
    if sub_split in ("in_support", "out_of_support"):
        return "helped" if sub_split == "out_of_support" else "did not help"
    helped = support == "out" if paper_helped is None else paper_helped
    return "helped" if helped else "did not help"


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, its t interval over seeds (seeds are the unit: the spread between them is the uncertainty) and the
    standard deviation between seeds; the interval and sd are NaN for one seed."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, sd


def seeds_table(tables: dict[int, pl.DataFrame], groups: Sequence[str] = JUDGED_GROUPS,
                paper_helped: dict[str, bool] | None = None) -> pl.DataFrame:
    """One row per (shift, part, group) of the judged groups, over the seeds' demo ER tables; ``paper_helped``
    (shift name -> bool) says what the paper found per shift, else the support decides."""
    rows: dict[tuple, list[tuple[int, dict]]] = {}
    for seed, table in tables.items():
        for r in table.filter(pl.col("group").is_in(list(groups))).to_dicts():
            rows.setdefault((r["shift"], r["support"], r["sub_split"], r["group"]), []).append((seed, r))
    out = []
    for (shift, support, sub_split, group), items in rows.items():
        ers = [r["effective_robustness"] for _, r in items if r["effective_robustness"] is not None]
        if not ers:
            continue
        mean, lo, hi, sd = mean_interval(ers)
        expected = expected_reading(support, sub_split, (paper_helped or {}).get(shift))
        verdicts = [seed_verdict(r) for _, r in items]
        out.append({
            "shift": shift, "support": support, "sub_split": sub_split, "group": group, "n_seeds": len(items),
            "seeds": ",".join(str(s) for s, _ in items), "mean_er": mean, "er_lower": lo, "er_upper": hi,
            "sd_er": sd,
            "min_er": min(ers), "max_er": max(ers), "helped": sum(v == "helped" for v in verdicts),
            "agree": sum((v == "helped") == (expected == "helped") for v in verdicts), "expected": expected,
        })
    return pl.DataFrame(out, schema=SEEDS_SCHEMA)


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def seeds_lines(table: pl.DataFrame) -> list[str]:
    """The multi-seed summary: per shift and part, each judged group's mean ER [interval over seeds] and how many
    seeds read as the paper does."""
    n = int(table["n_seeds"].max()) if table.height else 0
    lines = [f"Over {n} seeds: mean ER of fine-tuned pre-trained models [95% interval over seeds]; "
             f"seeds agreeing with the paper's reading"]
    for (shift, sub_split), part in table.group_by(["shift", "sub_split"], maintain_order=True):
        name = shift if sub_split == "all" else f"{shift} ({sub_split.replace('_', '-')} part)"
        cells = [f"{r['group']} {_pct(r['mean_er'])} [{_pct(r['er_lower'])}, {_pct(r['er_upper'])}] "
                 f"{r['agree']}/{r['n_seeds']} agree" for r in part.to_dicts()]
        lines.append(f"  {name:<34} expected: {part['expected'][0]:<13} " + "; ".join(cells))
    return lines


def seeds_markdown(table: pl.DataFrame, report_paths: dict[int, str]) -> str:
    """The multi-seed report: the summary table and a link to each seed's own report."""
    lines = ["# askshift demo over several seeds", "",
             "Each seed retrains the baselines, the fine-tuning copies and the split; the pre-trained checkpoint is "
             "shared, as a published one would be. The interval is the t interval of the mean over seeds.", "",
             "| shift | part | group | seeds | mean ER | 95% interval over seeds | min .. max | agree with the paper |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dicts():
        lines.append(f"| {r['shift']} | {r['sub_split']} | {r['group']} | {r['seeds']} | {_pct(r['mean_er'])} | "
                     f"[{_pct(r['er_lower'])}, {_pct(r['er_upper'])}] | {_pct(r['min_er'])} .. {_pct(r['max_er'])} | "
                     f"{r['agree']}/{r['n_seeds']} (expected: {r['expected']}) |")
    lines += ["", "Reports of each seed:", ""]
    lines += [f"- seed {seed}: {path}" for seed, path in report_paths.items()]
    return "\n".join(lines) + "\n"


def write_seeds_report(table: pl.DataFrame, report_paths: dict[int, str], folder: str | Path) -> tuple[Path, Path]:
    """``folder/tables/demo_seeds.parquet`` and ``folder/seeds.md``."""
    folder = Path(folder)
    parquet = atomic_write_parquet(folder / "tables" / f"{SEEDS_TABLE}.parquet", table)
    markdown = atomic_write_text(folder / "seeds.md", seeds_markdown(table, report_paths))
    return parquet, markdown


__all__ = ["SEEDS_TABLE", "expected_reading", "mean_interval", "parse_seeds", "seed_verdict", "seeds_lines",
           "seeds_markdown", "seeds_table", "write_seeds_report"]
