"""Label-free ER against the truth on a quick-demo store: true ER, ATC's estimate and ALine-D's, per shift and group.

Make the store first (`askshift demo --quick --seed S --store DIR`, a few minutes on CPU), then
`python benchmarks/label_free_er.py --store DIR --seed S`.  The estimates come from
``askshift.lib.report.ask.estimate_er_per_part`` (what `askshift ask` reports), with every shifted image in one
part, marked in or out of support as the demo knows the shift to be (so "lead" is what the report would lead with);
the truth is the ER of the same models with the shifted labels.  `--mixed` adds the demo's mixed shift split
by the split flow into in-support and out-of-support parts (the ask report's setting), each part against its truth.
ER in points; "lead" is the method the ask report leads with; r is the agreement line's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The demo's main shifts (unseen tint, vertical flip, spurious tint p=0.5, class proportions p=0.2): PRESET/SPLIT.
SHIFTS = ("out_of_support/tint_val", "out_of_support/vflip_val", "tint_p=0.5/tint_val", "label_p=0.2/label_val")


def true_er(exp, reference_split: str, split: str, sub_split: str | None) -> dict[str, float]:
    import polars as pl

    from askshift.lib.robustness.er import accuracy_pairs, effective_robustness
    from askshift.lib.robustness.metrics import metrics_table

    ref = metrics_table(exp, splits=[reference_split])
    shifted = metrics_table(exp, splits=[split], sub_split=sub_split)  # the reference split has no parts
    pairs = accuracy_pairs(pl.concat([ref, shifted]), reference_split, split)
    return dict(effective_robustness(pairs).groups.select("group", "effective_robustness").iter_rows())


def kind(part: str, membership) -> str:
    """in / out for a part of one support, mixed for the whole of a mixed shift."""
    if part != "all":
        return part.split("_")[0]
    values = set(membership["support"].to_list())
    return values.pop() if len(values) == 1 else "mixed"


def rows_for(exp, split: str, membership, parts: dict[str, str | None], label: str) -> list[dict]:
    import polars as pl

    from askshift.lib.report.ask import estimate_er_per_part, models_with_reference_predictions

    models = models_with_reference_predictions(exp, "source_val")
    estimate = estimate_er_per_part(exp, membership, models, "source_val", split)
    rows = []
    for part, sub_split in parts.items():
        truth = true_er(exp, "source_val", split, sub_split)
        line = estimate["lines"].get(part, {})
        for group in ("ft", "lp-ft"):
            found = estimate["table"].filter((pl.col("part") == part) & (pl.col("group") == group))
            er = dict(found.select("method", "effective_robustness").iter_rows())
            rows.append({"shift": label, "part": part, "group": group, "true": truth.get(group),
                         "atc": er.get("atc"), "atc_bounded": er.get("atc_bounded"),
                         "agreement": er.get("agreement"), "r": line.get("r"),
                         "lead": estimate["headline"].get(part, ("-",))[0], "kind": kind(part, membership)})
    return rows


def summary(rows: list[dict]) -> str:
    """Per kind of part (in-support, out-of-support): how often each method and the lead get the sign of the true ER,
    and their mean absolute error in points."""
    out = []
    for kind in ("in", "out"):
        chosen = [r for r in rows if r["true"] is not None and r["kind"] == kind]
        if not chosen:
            continue
        parts = []
        for method in ("atc", "atc_bounded", "agreement", "lead"):
            pairs = [(r["true"], r[r["lead"]] if method == "lead" else r[method]) for r in chosen]
            pairs = [(t, e) for t, e in pairs if e is not None]
            signs = sum((t > 0) == (e > 0) for t, e in pairs)
            error = 100 * sum(abs(t - e) for t, e in pairs) / max(len(pairs), 1)
            parts.append(f"{method} sign {signs}/{len(pairs)}, error {error:.1f}")
        out.append(f"{kind}-support ({len(chosen)} cases): " + "; ".join(parts))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store of `askshift demo --quick --seed S --store DIR`")
    parser.add_argument("--seed", type=int, required=True, help="the demo's seed (names its experiments)")
    parser.add_argument("--full", action="store_true", help="the store holds the full demo, not --quick")
    parser.add_argument("--shifts", default=",".join(SHIFTS), help="PRESET/SPLIT,... (default: %(default)s)")
    parser.add_argument("--mixed", action="store_true", help="also the mixed shift, per split-flow part")
    parser.add_argument("--csv", default=None, help="also write the rows (ER as fractions) to this CSV file")
    args = parser.parse_args()

    import polars as pl

    from askshift.flows.demo_config import DemoConfig
    from askshift.lib.store import Store

    config = DemoConfig.make(quick=not args.full, seed=args.seed, store=args.store)
    store = Store(args.store)
    rows = []
    for item in args.shifts.split(","):
        preset, split = item.split("/")
        exp = store.experiment(config.experiment_name(preset))
        index = exp.read_predictions(exp.models()["model"][0], split)["index"]
        support = next((s.support for s in config.active_shifts() if s.preset == preset and s.split == split), "in")
        rows += rows_for(exp, split, pl.DataFrame({"index": index, "support": support}), {"all": None}, item)
    if args.mixed:
        exp = store.experiment(config.mixed_experiment_name())
        split = "mixed_val"
        rows += rows_for(exp, split, exp.read_subsplit(split),
                         {"all": None, "in_support": "in_support", "out_of_support": "out_of_support"}, "mixed")
    if args.csv:
        pl.DataFrame(rows).with_columns(pl.lit(args.seed).alias("seed")).write_csv(args.csv)
    print(f"seed {args.seed}, store {args.store}: ER in points (true = with the shifted labels)")
    print(f"{'shift':<26} {'part':<15} {'group':<6} {'true':>7} {'ATC':>7} {'bounded':>8} {'ALine-D':>8} {'r':>6}  lead")
    for r in rows:
        def pts(x):
            return f"{100 * x:+7.1f}" if x is not None else f"{'-':>7}"
        r_text = f"{r['r']:6.2f}" if r["r"] is not None else f"{'-':>6}"
        print(f"{r['shift']:<26} {r['part']:<15} {r['group']:<6} {pts(r['true'])} {pts(r['atc'])} "
              f"{pts(r['atc_bounded']):>8} {pts(r['agreement']):>8} {r_text}  {r['lead']}")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
