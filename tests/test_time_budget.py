"""The time budget: every second of the wall time lands in one part, and what no task accounts for is orchestration."""
from __future__ import annotations

import pytest

from askshift.flows.time_budget import TASK_PARTS, budget_lines, overhead_share, time_budget


def test_wall_time_is_split_by_task_kind_and_the_rest_is_orchestration():
    runs = [("train one model", 30.0), ("fine-tune one run", 20.0), ("predict checkpoints on one split", 10.0),
            ("write dataset split", 5.0), ("pretrain on glyphs", 15.0), ("demo report", 4.0), ("some new task", 1.0)]
    table = time_budget(runs, wall_seconds=100.0)
    seconds = dict(zip(table["part"], table["seconds"]))
    assert seconds == {"data": 5.0, "pre-training": 15.0, "training": 50.0, "prediction": 10.0, "reporting": 4.0,
                       "orchestration": 16.0}  # the 16 s no listed task covers (1 s of them an unknown task)
    assert table["share"].sum() == pytest.approx(1.0)
    # data 5 + reporting 4 + orchestration 16; pre-training is compute
    assert overhead_share(table) == pytest.approx(0.25)
    assert "over the 15% target" in budget_lines(table, 100.0)[1]


def test_parallel_tasks_longer_than_the_wall_time_leave_no_negative_orchestration():
    table = time_budget([("train one model", 80.0), ("train one model", 80.0)], wall_seconds=100.0)
    assert table.filter(table["part"] == "orchestration")["seconds"][0] == 0.0
    assert table["share"].sum() == pytest.approx(1.0)


def test_every_task_the_package_defines_has_a_part():
    from askshift.flows.run_times import _task_names

    assert set(_task_names().values()) <= set(TASK_PARTS)
