"""Where a run's wall time went: data, pre-training, training, prediction, reporting and the orchestration left over."""
from __future__ import annotations

from typing import Iterable

import polars as pl

# Task name (as registered with Prefect) -> part of the budget. A new task kind is one entry; a task not listed
# here counts as orchestration, like Prefect's own bookkeeping, process start and waiting.
TASK_PARTS: dict[str, str] = {
    "write dataset split": "data",
    "build the mixed shift": "data",
    "pretrain on glyphs": "pre-training",
    "train one model": "training",
    "fine-tune one run": "training",
    "DFR one model": "training",
    "domain classifier: one learning rate": "training",
    "domain classifier: one fold": "training",
    "predict checkpoints on one split": "prediction",
    "predict models on another experiment's split": "prediction",
    "predict one zoo model": "prediction",
    "build ER report": "reporting",
    "demo report": "reporting",
    "publish demo artifacts": "reporting",
    "publish table artifact": "reporting",
    "publish markdown artifact": "reporting",
}
PARTS = ("data", "pre-training", "training", "prediction", "reporting", "orchestration")
# Pre-training is optimisation steps (the stand-in for a published checkpoint; cached after its first run), so it
# counts as training compute; the lines and the report still show its own share.
COMPUTE_PARTS = ("pre-training", "training", "prediction")
OVERHEAD_TARGET = 0.15  # issue 13: all but training (pre-training included) and prediction at most 15% of the wall time


def time_budget(task_seconds: Iterable[tuple[str, float]], wall_seconds: float) -> pl.DataFrame:
    """One row per part: seconds and share of the wall time; orchestration is the wall time no task accounts for.

    Task time includes each task's own set-up (building the model, opening the loader): Prefect cannot see inside
    a task, so the training and prediction shares are upper bounds on pure compute."""
    totals = dict.fromkeys(PARTS, 0.0)
    for name, seconds in task_seconds:
        part = TASK_PARTS.get(name)
        if part is not None:  # an unlisted task's time stays inside the wall time's remainder
            totals[part] += float(seconds)
    counted = sum(totals.values())
    totals["orchestration"] = max(0.0, wall_seconds - counted)
    wall = max(wall_seconds, counted, 1e-9)
    return pl.DataFrame({"part": list(PARTS), "seconds": [totals[p] for p in PARTS],
                         "share": [totals[p] / wall for p in PARTS]})


def overhead_share(table: pl.DataFrame) -> float:
    """Share of the wall time spent on anything but compute: data, reporting and orchestration."""
    return float(table.filter(~pl.col("part").is_in(list(COMPUTE_PARTS)))["share"].sum())


def budget_lines(table: pl.DataFrame, wall_seconds: float) -> list[str]:
    share = overhead_share(table)
    cells = ", ".join(f"{r['part']} {r['seconds']:.0f}s ({r['share']:.0%})" for r in table.to_dicts())
    verdict = "within" if share <= OVERHEAD_TARGET else "over"
    return [f"Time budget ({wall_seconds:.0f}s wall): {cells}",
            f"  all but compute (pre-training, training, prediction): {share:.0%} of the wall time ({verdict} the "
            f"{OVERHEAD_TARGET:.0%} target)"]


def budget_markdown(table: pl.DataFrame, wall_seconds: float) -> str:
    rows = "\n".join(f"| {r['part']} | {r['seconds']:.1f} | {r['share']:.1%} |" for r in table.to_dicts())
    share = overhead_share(table)
    return ("## Time budget\n\n"
            f"Wall time {wall_seconds:.0f} s, split by the Prefect task runs of this run. Task time includes each "
            "task's own set-up (model build, loader start), so training and prediction are upper bounds on compute; "
            "orchestration is the wall time no task accounts for (Prefect, process and server start, waiting).\n\n"
            "| part | seconds | share |\n|---|---|---|\n" + rows + "\n\n"
            f"All but compute (pre-training, training and prediction; pre-training is the stand-in checkpoint's "
            f"optimisation steps, cached after its first run): {share:.1%} of the wall time (target: at most "
            f"{OVERHEAD_TARGET:.0%}).\n")


__all__ = ["COMPUTE_PARTS", "OVERHEAD_TARGET", "PARTS", "TASK_PARTS", "budget_lines", "budget_markdown",
           "overhead_share", "time_budget"]
