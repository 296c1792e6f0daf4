"""``askshift demo [--quick] [--seed N] [--store DIR]``: the paper's experiment in miniature, end to end on CPU."""
from __future__ import annotations

import argparse

from askshift.cli.main import CliError

DESCRIPTION = """\
The paper's experiment in miniature on the bundled digits data, on CPU, with no server, cluster, GPU or
download: train small CNNs from scratch (the baselines: epochs x training fractions x widths), pre-train
the same CNN on a generated glyph corpus (a local stand-in for CLIP/AugReg; cached), fine-tune it with FT
and LP-FT (learning rate picked on reference validation, 4 copies) plus a same-architecture from-scratch
control, and measure effective robustness (ER) on two out-of-support shifts (unseen tint, vertical flip)
and two in-support shifts (spurious tint p=0.5, class proportions p=0.2), plus the spurious tint at
p=0.9 as a labelled extra; then split a mixed natural-like shift into in-support and out-of-support
parts with the split flow and measure ER on each part.

It runs as one Prefect flow (`demo`) made of the baseline, fine-tuning, split and report flows; with
no PREFECT_API_URL set, Prefect starts a temporary local server for the run. Progress (stage, models
trained, ETA) is printed throughout. Training runs are content-addressed: a second run with the same
seed and store retrains nothing and only rebuilds the report.

Output, in STORE/demo/: report.md (per shift: the probit accuracy-on-the-line plot, ER per group with
95% intervals from the full-range line and from comparable baselines, fit diagnostics, a one-sentence
reading, and the split section), tables/demo_er.parquet (one row per (shift, group): shift, support
in/out, group, effective_robustness, er_lower, er_upper, comparable_* and fit columns),
tables/demo_models.parquet (per model), plots/*.png; the same report and ER table as Prefect artifacts
(demo-report, demo-er). The command ends with a five-line summary and, as its last line, the path of
the report."""

EPILOG = """\
examples:
  askshift demo                          full demo (about 8 minutes on 2 CPU cores from a cold start, under 1 when cached)
  askshift demo --quick --store /tmp/s   the smoke version (about 1.5 minutes; no extra shift, fewer models)
  askshift demo --seed 3                 another seed (same seed and store: same tables, nothing retrained)
  askshift demo --seeds 0,1,2            three seeds, then the mean ER over seeds and how many agree (STORE/demo/seeds.md)
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the paper's experiment in miniature on CPU (start here)",
                            description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke version, about 1.5 minutes: fewer and shorter runs, 2 copies, no tint_p=0.9 extra")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the baselines, fine-tuning copies, mixture and split (default 0); the same seed "
                             "gives the same tables")
    parser.add_argument("--seeds", metavar="S,S,...",
                        help="run the demo once per seed (e.g. 0,1,2; each cached like a single seed) and end with a "
                             "multi-seed summary: per shift and strategy the mean ER over seeds, its 95%% interval "
                             "over seeds and how many seeds read as the paper does (STORE/demo/seeds.md, "
                             "tables/demo_seeds.parquet)")
    parser.add_argument("--store", default="askshift-store", metavar="DIR",
                        help="results store (default ./askshift-store); the report lands in DIR/demo/report.md")
    parser.set_defaults(func=run)


def _seeds(args: argparse.Namespace) -> tuple[int, ...]:
    from askshift.lib.report.demo_seeds import parse_seeds

    if args.seeds is None:
        if args.seed < 0:
            raise CliError(f"--seed must be a non-negative integer, got {args.seed}")
        return (args.seed,)
    if args.seed != 0:
        raise CliError("give --seed N or --seeds S,S,..., not both")
    try:
        return parse_seeds(args.seeds)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    from askshift.cli.main import check_store

    check_store(args.store)
    from askshift.flows.demo_config import DemoConfig
    from askshift.lib.store import StoreOptions

    configs = [DemoConfig.make(quick=args.quick, seed=seed, store=StoreOptions(root=args.store)) for seed in seeds]
    try:
        configs[0].store.resolved_root().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the store folder {args.store}: {exc.strerror}; pass a writable --store DIR") from None

    import shutil

    import polars as pl
    import torch

    from askshift.flows.demo import demo
    from askshift.flows.demo_config import DEMO_EXPERIMENT, ER_TABLE, summary_lines

    # Tiny convolutions on 32x32 images gain little from many intra-op threads; two are what the target machine has.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    exp = configs[0].store.experiment(DEMO_EXPERIMENT)
    tables, reports, budgets = {}, {}, {}
    for config in configs:
        if len(configs) > 1:
            print(f"[demo] seed {config.seed} ({len(tables) + 1} of {len(configs)})", flush=True)
        report, budgets[config.seed] = _timed_demo(demo, config)
        tables[config.seed] = pl.read_parquet(exp.table_path(ER_TABLE))
        reports[config.seed] = report
        if len(configs) > 1:  # the next seed rewrites report.md; each seed's copy stays beside it (same plot links)
            reports[config.seed] = str(shutil.copyfile(report, exp.root / f"report-seed{config.seed}.md"))
    from askshift.flows.backends import stop_temporary_prefect_server

    stop_temporary_prefect_server()
    print()
    for seed, table in tables.items():
        print(f"Summary{f' (seed {seed})' if len(tables) > 1 else ''}: ER of fine-tuned pre-trained models "
              f"(full-range line / comparable baselines):")
        for line in summary_lines(table, configs[0].active_shifts()):
            print(line)
    for seed, lines in budgets.items():
        for line in lines:
            print(line if len(budgets) == 1 else f"(seed {seed}) {line}")
    print(f"ER table (one row per shift and group): {exp.table_path(ER_TABLE)}")
    if len(configs) > 1:
        from askshift.lib.report.demo_seeds import seeds_lines, seeds_table, write_seeds_report

        combined = seeds_table(tables, paper_helped={s.name: s.paper_helped for s in configs[0].active_shifts()})
        print()
        for line in seeds_lines(combined):
            print(line)
        parquet, markdown = write_seeds_report(combined, reports, exp.root)
        print(f"Multi-seed table: {parquet}")
        print("Report:")
        print(markdown, flush=True)
        return 0
    print("Report:")
    print(reports[configs[0].seed], flush=True)
    return 0


def _timed_demo(demo, config) -> tuple[str, list[str]]:
    """Run one seed under a tag of its own, then split its wall time by its task runs and add that to the report."""
    import time
    import uuid
    from pathlib import Path

    from prefect import tags

    from askshift.flows.run_times import task_seconds
    from askshift.flows.time_budget import budget_lines, budget_markdown, time_budget
    from askshift.lib.store import atomic_write_text

    tag = f"askshift-demo-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()  # from here: the temporary server's start counts as orchestration too
    with tags(tag):
        report = demo(config)
    wall = time.monotonic() - started
    try:
        table = time_budget(task_seconds(tag), wall)
    except Exception as exc:  # noqa: BLE001 -- the budget is a note on the run; its results are already written
        return report, [f"Time budget: not available ({type(exc).__name__}: {exc})"]
    path = Path(report)
    atomic_write_text(path, path.read_text().rstrip("\n") + "\n\n" + budget_markdown(table, wall))
    return report, budget_lines(table, wall)
