"""deployments/prefect.yaml: one deployment per flow, every entrypoint imports, defaults validate, schedules inactive,
every deployment takes the typed `execution` parameter."""
from __future__ import annotations

from askshift.flows.deployments import load_flow, read_deployment_specs, runner_deployments
from askshift.flows.registry import FLOWS, cli_module

# Deployment -> its entry flow (flows/deployed.py), which runs the askshift flow named second on a chosen backend:
# one deployment per entry of the flow registry.
EXPECTED = {FLOWS.get(n).deployment: (f"flows/deployed.py:{FLOWS.get(n).entry}", FLOWS.get(n).load_flow().name)
            for n in FLOWS.names()}


def test_every_registered_flow_has_a_deployment_an_entry_flow_running_it_and_a_cli_command():
    import importlib

    assert set(FLOWS.names()) >= {"baseline", "finetune", "split", "zoo-evaluate", "report", "demo"}
    for name in FLOWS.names():
        entry = FLOWS.get(name)
        flow, wrapper = entry.load_flow(), entry.load_entry()
        assert flow.name in (wrapper.description or ""), (name, "entry flow's docstring names the flow it runs")
        config = entry.load_config()
        if config is not None:
            assert "config" in wrapper.parameters.properties, name
        if entry.cli:
            module = importlib.import_module(cli_module(name))
            assert callable(module.add_arguments) and callable(module.execute), name


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
