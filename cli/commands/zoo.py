"""``askshift zoo``: does pre-training help on ImageNet-V2/Sketch/R/A? ER of timm's published models."""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from askshift.cli.main import CliError

SHIFTS = ("v2", "sketch", "r", "a")
# timm's results/ files ship as package data (askshift.data), used when --results is not given.
DEFAULT_RESULTS = Path(str(resources.files("askshift.data"))) / "timm-results"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "zoo",
        help="effective robustness of ~1,500 timm models on ImageNet-V2/Sketch/R/A from published accuracies",
        description=(
            "Read timm's published validation results (top-1 per model arch.tag), split the models into "
            "'baseline' (ImageNet-1k data only) and 'pretrained' (extra pre-training data), fit accuracy on the "
            "line on the baselines and report each group's effective robustness, with a full-range and a "
            "comparable-baseline view. Writes tables, plots and report.md into STORE/zoo-<shift>/."
        ),
        epilog=(
            "Default grouping: 'pretrained' when the weight tag (after the first '.') contains one of the "
            "tokens in21k in22k in12k laion* openai clip webli jft* ig<N>b yfcc* m30m m38m lvd* dfn* datacomp* "
            "metaclip* swsl ssl wsl seer swag ssld 6m, or starts with goog_distilled; everything else is "
            "'baseline' (including self-supervised or distilled ImageNet-1k-only training such as mae_in1k_ft_in1k, "
            "fb_dino, fb_dist_in1k). --pretrained-pattern replaces this rule by a regex searched in the full "
            "name arch.tag. Reference accuracy: ImageNet val for v2 and sketch; ImageNet val on the same 200 "
            "classes (results-imagenet-{r,a}-clean.csv) for r and a."
        ),
    )
    parser.add_argument("--results", metavar="DIR", default=None,
                        help="a copy of timm's results/ folder with results-*.csv "
                             f"(default: {DEFAULT_RESULTS} when it exists)")
    parser.add_argument("--shift", metavar="{v2,sketch,r,a}", default="sketch",
                        help="shifted test set: ImageNet-V2, ImageNet-Sketch, ImageNet-R or ImageNet-A (default: sketch)")
    parser.add_argument("--pretrained-pattern", metavar="REGEX", default=None,
                        help="models whose name matches REGEX (re.search on arch.tag) are 'pretrained', the rest "
                             "'baseline' (default: the weight-tag rule below)")
    parser.add_argument("--store", metavar="DIR", default="askshift-store",
                        help="results store; the report goes to DIR/zoo-<shift>/ (default: ./askshift-store)")
    parser.add_argument("--scale", metavar="{probit,logit}", default="probit", help="axis transform (default: probit)")
    parser.add_argument("--fit-range", metavar="LO:HI", default=None,
                        help="comparable-baseline window of reference accuracy (default: the pretrained models' "
                             "range +- --margin)")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="widening of the default comparable window, in accuracy (default: 0.05)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.shift not in SHIFTS:
        raise CliError(f"unknown shift {args.shift!r}; choose one of: {', '.join(SHIFTS)}")
    if not args.margin >= 0:  # a negative margin inverts the comparable window and silently drops that view
        raise CliError(f"--margin must be 0 or more (accuracy added on each side of the window), got {args.margin:g}")
    if args.scale not in ("probit", "logit"):
        raise CliError(f"--scale must be probit or logit, got {args.scale!r}")
    from askshift.cli.main import check_store

    check_store(args.store)
    results = args.results
    if results is None:
        if not DEFAULT_RESULTS.is_dir():
            raise CliError("give --results DIR: a copy of timm's results/ folder (e.g. ../shared/data/timm-results)")
        results = str(DEFAULT_RESULTS)
    from askshift.lib.report.zoo import zoo_report
    from askshift.lib.robustness.lines import ERInputError, parse_fit_range
    from askshift.lib.robustness.wording import describe_interval
    from askshift.lib.robustness.zoo import ZooInputError

    try:
        report = zoo_report(results, args.shift, store=args.store, pretrained_pattern=args.pretrained_pattern,
                            scale=args.scale, fit_range=parse_fit_range(args.fit_range), margin=args.margin)
    except (ERInputError, ZooInputError) as exc:
        raise CliError(" ".join(str(exc).split())) from None
    comparison = report.comparison
    counts = dict(report.table.group_by("group").len().iter_rows())
    shift = report.shift
    print(f"{shift.title} vs {shift.reference_title}: {report.table.height} timm models "
          f"({counts.get('baseline', 0)} baseline = ImageNet-1k only, {counts.get('pretrained', 0)} pretrained = extra data)")
    print(f"  fit:        {comparison.full.fit.describe()}")
    full = comparison.full
    if full.has_group("pretrained"):
        print(f"  pretrained: mean ER {describe_interval(full.group('pretrained'))} against all baselines")
    view = comparison.views.get("pretrained")
    if view is not None and view.row is not None:
        lo, hi = view.fit_range
        print(f"  pretrained: mean ER {describe_interval(view.row)} against comparable baselines "
              f"({view.result.fit.n} with reference accuracy {lo:.3f}-{hi:.3f})")
    elif view is not None:
        print(f"  comparable: {view.note}")
    print(f"  reading:    {report.reading}")
    if comparison.disagree or comparison.weak_fit or full.fit.inverse_line or (view is not None and view.note):
        print(f"  caution:    {comparison.message}")
    print(f"report:  {report.report_path}")
    print(f"tables:  {report.er_path}  {report.er_csv_path}  {report.summary_path}")
    print(f"plots:   {'  '.join(str(p) for p in report.plots)}")
    print("(group intervals: 95% for the group's mean ER: the fitted line's uncertainty at its models plus the spread "
          "between them)")
    return 0
