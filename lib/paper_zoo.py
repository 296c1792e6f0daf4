"""The paper's timm model zoo (78 from-scratch ImageNet models, 55 pre-trained ones) as data: ``paper_zoo.csv``.

Names are timm ``arch.tag`` strings (each is in timm's published results,
/work/shared/data/timm-results); any other list of such names works with ``zoo_evaluate`` too.
"""
from __future__ import annotations

import csv
from pathlib import Path

ZOO_CSV = Path(__file__).with_name("paper_zoo.csv")
# Groups as the experiment store records them; "baseline" is what the ER line is fitted on.
BASELINE_GROUP = "baseline"
PRETRAINED_GROUP = "pretrained"


def paper_zoo(group: str | None = None) -> list[str]:
    """Model names of the paper's zoo, in its order; ``group`` = "baseline" or "pretrained" selects one list."""
    with open(ZOO_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups = {r["group"] for r in rows}
    if group is not None and group not in groups:
        raise ValueError(f"unknown zoo group {group!r}; choose one of: {', '.join(sorted(groups))}")
    return [r["model"] for r in rows if group is None or r["group"] == group]


def paper_zoo_groups() -> dict[str, str]:
    """model name -> group for the whole zoo."""
    with open(ZOO_CSV, newline="") as fh:
        return {r["model"]: r["group"] for r in csv.DictReader(fh)}
