"""deployments/prefect.yaml: one deployment per flow, every entrypoint imports, defaults validate, schedules inactive,
every deployment takes the typed `execution` parameter."""
from __future__ import annotations

from askshift.flows.deployments import load_flow, read_deployment_specs, runner_deployments

# Deployment -> its entry flow (flows/deployed.py), which runs the askshift flow named second on a chosen backend.
EXPECTED = {
    "baseline": ("flows/deployed.py:run_baseline", "synthetic-shift-baseline"),
    "finetune": ("flows/deployed.py:run_finetune", "pretrained-finetune"),
    "hparam-ablation": ("flows/deployed.py:run_hparam_ablation", "hparam-ablation"),
    "split": ("flows/deployed.py:run_split", "split_shift"),
    "zoo-evaluation": ("flows/deployed.py:run_zoo_evaluation", "zoo_evaluate"),
    "report": ("flows/deployed.py:run_report", "report"),
    "demo": ("flows/deployed.py:run_demo", "demo"),
}


def test_prefect_yaml_declares_a_deployment_per_flow_on_the_process_pool():
    import yaml

    from askshift.flows.deployments import PREFECT_YAML

    data = yaml.safe_load(PREFECT_YAML.read_text())
    assert {d["name"]: d["entrypoint"] for d in data["deployments"]} == {k: v[0] for k, v in EXPECTED.items()}
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
    assert all(d.entrypoint.startswith("askshift.flows.") and ".py" not in d.entrypoint for d in deployments)


def test_every_entry_flow_takes_the_target_flows_parameters_plus_execution_in_source_and_imported_schemas():
    from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint

    import askshift.flows.deployed

    targets = {f.name: f for f in vars(askshift.flows.deployed).values() if hasattr(f, "fn") and hasattr(f, "name")}
    for spec in read_deployment_specs():
        flow = load_flow(spec)
        target = targets[EXPECTED[spec.name][1]]
        schema = parameter_schema(flow).model_dump_for_openapi()
        assert list(schema["properties"]) == [*parameter_schema(target).properties, "execution"], spec.name
        # The UI renders `execution` as a form with a backend choice, a profile path and a worker count.
        execution = schema["definitions"]["Execution"]["properties"]
        assert execution["backend"]["enum"] == ["local", "dask", "slurm"] and {"profile", "dask_workers"} <= set(execution)
        assert schema["properties"]["execution"]["default"]["backend"] == "local"
        # `prefect deploy` reads the signature from the file's source: the same form.
        assert parameter_schema_from_entrypoint(spec.entrypoint).model_dump_for_openapi() == schema, spec.name
