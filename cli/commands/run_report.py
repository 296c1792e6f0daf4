"""``askshift run report``: effective-robustness report (tables, plots, report.md, artifacts) of one experiment."""
from __future__ import annotations

import argparse
from typing import Any

from askshift.cli.main import CliError, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default="store", help="results store root (default ./store)")
    parser.add_argument("--experiment", required=True, help="experiment folder inside the store")
    parser.add_argument("--fit-range", metavar="LO:HI", default=None,
                        help="comparable-baseline window of reference accuracy (default: judged models' range +- 0.05)")
    parser.add_argument("--scale", metavar="{probit,logit}", default="probit", help="axis transform (default probit)")
    parser.add_argument("--metric", default="accuracy",
                        help="accuracy (default), balanced_accuracy, worst_group_accuracy, macro_f1 or auroc")
    parser.add_argument("--baseline-group", default="baseline", help="group the line is fitted on (default baseline)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap band from N resampled fits")
    parser.add_argument("--bootstrap-examples", type=int, default=0, metavar="N",
                        help="also give percentile intervals from N resamples of the test examples (the same examples "
                             "for every model) and of the baseline models, refitting the line each time (accuracy only)")
    parser.add_argument("--binomial", action="store_true",
                        help="per-model intervals also carry each model's own test-set noise (group intervals already do)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (default 0)")


def build_config(args: argparse.Namespace):
    """ReportConfig from the flags; every user error becomes one CliError line before the server starts."""
    from pydantic import ValidationError

    from askshift.flows.report import ReportConfig
    from askshift.lib.robustness.lines import SCALES, ERInputError, parse_fit_range
    from askshift.lib.robustness.metrics import METRICS
    from askshift.lib.store import StoreOptions

    try:
        fit_range = parse_fit_range(args.fit_range)
    except ERInputError as exc:
        raise CliError(str(exc)) from None
    if args.scale not in SCALES:
        raise CliError(SCALES.unknown_message(args.scale))
    if args.metric not in METRICS:
        raise CliError(METRICS.unknown_message(args.metric))
    if args.bootstrap < 0 or args.bootstrap_examples < 0:
        raise CliError("--bootstrap and --bootstrap-examples take a number of resamples >= 0")
    if args.bootstrap_examples and args.metric != "accuracy":
        raise CliError(f"--bootstrap-examples resamples per-example correctness: it needs --metric accuracy, not {args.metric!r}")
    store = StoreOptions(root=args.store)
    exp = store.experiment(args.experiment)
    if not exp.root.is_dir():
        raise CliError(f"no experiment {args.experiment!r} in store {args.store} (expected folder {exp.root})")
    er = {"fit_range": fit_range, "scale": args.scale, "metric": args.metric, "baseline_group": args.baseline_group,
          "bootstrap": args.bootstrap, "binomial": args.binomial, "bootstrap_examples": args.bootstrap_examples,
          "seed": args.seed}
    try:
        return ReportConfig(store=store, experiment=args.experiment, er=er)
    except ValidationError as exc:
        raise fail(exc, "report") from None


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.report import report
    from askshift.lib.robustness.lines import ERInputError

    flow = report if task_runner is None else report.with_options(task_runner=task_runner)
    try:
        result = flow(config)
    except ERInputError as exc:
        raise CliError(" ".join(str(exc).split())) from None
    print(result.report_path)
    return 0


__all__ = ["add_arguments", "build_config", "execute"]
