"""``askshift er TABLE``: effective robustness of every model in a table of accuracies (CSV or Parquet)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from askshift.cli.main import CliError

FORMATS = ("csv", "json")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "er",
        help="effective robustness of each model from a table of reference/shifted accuracies",
        description=(
            "Fit 'accuracy on the line' (shifted vs reference accuracy, probit or logit scale, OLS) on the "
            "baseline group and print each model's effective robustness with a 95% interval. TABLE is CSV or "
            "Parquet with columns model, group, reference_accuracy, shifted_accuracy (fractions in [0, 1]) and "
            "optionally reference_n, shifted_n (numbers of examples)."
        ),
        epilog=(
            "Output columns: model, group, reference_accuracy, shifted_accuracy, predicted_shifted_accuracy, "
            "effective_robustness, er_lower, er_upper (the model's interval: the fitted line's band, plus its own "
            "test-set noise with --binomial), then the guardrails extrapolated (reference accuracy beyond the "
            "baselines' range), weak_line (r < 0.9), inverse_line (slope <= 0) and caution (the same in words). "
            "With reference_n/shifted_n, accuracies are clipped at 1/(2n) and the slope is corrected for test-set "
            "noise. --format json adds a summary per group (n_models, mean ER, er_lower/er_upper = the 95% interval "
            "of the group's mean: the line's uncertainty at its models plus the spread between them, t quantiles; "
            "er_lower_total/er_upper_total are the same numbers, their former name; er_se, line_se, spread_se; the "
            "guardrails) and the fit diagnostics (r, residual sd, n, reference-accuracy range, reliability)."
        ),
    )
    parser.add_argument("table", metavar="TABLE", help="CSV or Parquet file (.parquet/.pq read as Parquet)")
    parser.add_argument("--baseline-group", metavar="NAME", default="baseline",
                        help="group whose models define the line (default: baseline)")
    parser.add_argument("--scale", metavar="{probit,logit}", default="probit", help="axis transform (default: probit)")
    parser.add_argument("--format", metavar="{csv,json}", default="csv", dest="output_format",
                        help="output format (default: csv)")
    parser.add_argument("--out", metavar="FILE", default=None, help="write here (atomically) instead of stdout")
    parser.add_argument("--fit-range", metavar="LO:HI", default=None,
                        help="fit only baselines whose reference accuracy is in [LO, HI], e.g. 0.7:0.9 "
                             "(compare with baselines of comparable accuracy)")
    parser.add_argument("--bootstrap", metavar="N", type=int, default=0,
                        help="band from N line fits on resampled baseline models instead of the t band")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    parser.add_argument("--binomial", action="store_true",
                        help="widen each model's interval by its own test-set noise (Wilson intervals of its "
                             "accuracies; needs reference_n and shifted_n columns); group intervals already hold it")
    parser.set_defaults(func=run)


def read_table(path: str):
    """A Polars DataFrame from CSV or Parquet; errors become one line."""
    import polars as pl

    p = Path(path)
    if not p.exists():
        raise CliError(f"cannot read {path}: no such file")
    if p.is_dir():
        raise CliError(f"cannot read {path}: it is a folder, not a CSV or Parquet file")
    kind = "Parquet" if p.suffix.lower() in (".parquet", ".pq") else "CSV"
    try:
        return pl.read_parquet(p) if kind == "Parquet" else pl.read_csv(p, infer_schema_length=None)
    except Exception as exc:  # polars/pyarrow raise many types; the user needs the file and the reason
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CliError(f"cannot read {path} as {kind}: {reason[:300]}") from None


def run(args: argparse.Namespace) -> int:
    import json

    from askshift.lib.robustness.er import effective_robustness
    from askshift.lib.robustness.lines import ERInputError, parse_fit_range

    if args.output_format not in FORMATS:
        raise CliError(f"unknown format {args.output_format!r}; choose csv or json")
    table = read_table(args.table)
    try:
        result = effective_robustness(
            table,
            baseline_group=args.baseline_group,
            scale=args.scale,
            fit_range=parse_fit_range(args.fit_range),
            bootstrap=args.bootstrap,
            seed=args.seed,
            binomial=args.binomial,
        )
    except ERInputError as exc:
        raise CliError(" ".join(str(exc).split())) from None
    if args.output_format == "json":
        text = json.dumps(result.to_dict(), indent=2) + "\n"
    else:
        text = result.output_table().write_csv()
    if args.out is None:
        sys.stdout.write(text)
    else:
        from askshift.lib.store import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote ER of {result.table.height} models to {args.out}", file=sys.stderr)
    return 0
