"""deployments/prefect.yaml: one deployment per flow, every entrypoint imports, defaults validate, schedules inactive."""
from __future__ import annotations

from flows.deployments import read_deployment_specs, load_flow, runner_deployments

EXPECTED = {
    "baseline": "flows/baseline.py:synthetic_shift_baseline",
    "finetune": "flows/finetune.py:pretrained_finetune",
    "hparam-ablation": "flows/finetune.py:hparam_ablation",
    "split": "flows/split.py:split_shift",
    "zoo-evaluation": "flows/split.py:zoo_evaluate",
    "report": "flows/report.py:report",
    "demo": "flows/demo.py:demo",
}


def test_prefect_yaml_declares_a_deployment_per_flow_on_the_process_pool():
    import yaml

    from flows.deployments import PREFECT_YAML

    data = yaml.safe_load(PREFECT_YAML.read_text())
    assert {d["name"]: d["entrypoint"] for d in data["deployments"]} == EXPECTED
    assert all(d["work_pool"]["name"] == "askshift-process" for d in data["deployments"])


def test_every_deployment_loads_and_its_default_parameters_validate():
    for spec in read_deployment_specs():
        flow = load_flow(spec)
        if spec.parameters:
            flow.validate_parameters(spec.parameters)  # raises on a misspelt or mistyped default


def test_example_schedules_are_inactive_and_entrypoints_do_not_depend_on_the_working_directory():
    deployments, skipped = runner_deployments()
    assert not skipped
    schedules = [s for d in deployments for s in d.schedules]
    assert schedules and not any(s.active for s in schedules)
    assert all(d.entrypoint.startswith("flows.") and ".py" not in d.entrypoint for d in deployments)
