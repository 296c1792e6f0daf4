"""The Prefect UI as the front door (issue 15): results on the run the user opened, the key rule, run names that say
what a run does (a typed name kept), short rounded tables, forms whose schema refuses bad values on Submit."""
from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from report_data import make_experiment

# --- forms ----------------------------------------------------------------------------------------------------------


def deployment_schemas() -> dict[str, dict]:
    """Each deployment's parameter schema, as `askshift serve` registers it (what the UI form is built from)."""
    from prefect.utilities.callables import parameter_schema

    from askshift.flows.deployments import load_flow, read_deployment_specs

    return {spec.name: parameter_schema(load_flow(spec)).model_dump_for_openapi() for spec in read_deployment_specs()}


def _fields(schema: dict, node: dict, path: str, seen: set[str]):
    """(path, property schema) of every form field, nested models included."""
    for name, prop in (node.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        yield here, prop
        for sub in [prop, *prop.get("anyOf", []), *prop.get("allOf", []), prop.get("items") or {}]:
            ref = sub.get("$ref", "").split("/")[-1]
            if ref and ref not in seen:
                seen.add(ref)
                yield from _fields(schema, schema["definitions"][ref], here, seen)


def test_every_field_of_every_deployment_has_a_description_without_angle_brackets():
    missing, brackets = [], []
    for name, schema in deployment_schemas().items():
        for path, prop in _fields(schema, schema, "", set()):
            description = prop.get("description")
            if not description:
                missing.append(f"{name}: {path}")
            elif "<" in description or ">" in description:  # the UI renders descriptions as HTML
                brackets.append(f"{name}: {path}: {description}")
    assert not missing, missing
    assert not brackets, brackets


def _errors(schema: dict, values: dict) -> list[str]:
    # The validator the server runs for the form's Submit (POST /ui/schemas/validate) and for create_flow_run.
    from prefect.utilities.schema_tools.validation import validate

    return [e.message for e in validate(values, schema)]


BAD_FORMS = [
    ("baseline", {"config": {"train_fractions": [1.5]}}),
    ("baseline", {"config": {"train_fractions": [0]}}),
    ("baseline", {"config": {"dataset": "nosuch"}}),
    ("baseline", {"config": {"shift": "nosuch"}}),
    ("baseline", {"config": {"shift": "tint_p=1.5"}}),
    ("baseline", {"config": {"model": "resnet"}}),
    ("baseline", {"config": {"seeds": [-1]}}),
    ("baseline", {"config": {"epochs": 0}}),
    ("baseline", {"config": {}, "execution": {"backend": "slurm"}}),
    ("baseline", {"config": {}, "execution": {"backend": "slurm", "profile": ""}}),
    ("baseline", {"config": {}, "execution": {"backend": "local", "profile": "deployments/slurm-gpu.yaml"}}),
    ("baseline", {"config": {}, "execution": {"backend": "local", "dask_workers": 2}}),
    ("finetune", {"config": {"strategies": ["nosuch"]}}),
    ("finetune", {"config": {"models": ["nosuch"]}}),
    ("finetune", {"config": {"preset": "nosuch"}}),
    ("finetune", {"config": {"seed": -1}}),
    ("report", {"config": {"store": {"root": "/s"}, "experiment": "e", "er": {"scale": "linear"}}}),
    ("report", {"config": {"store": {"root": "/s"}, "experiment": "e", "er": {"metric": "nosuch"}}}),
    ("report", {"config": {"store": {"root": "/s"}, "experiment": "e", "er": {"fit_range": [0.5, 1.5]}}}),
    ("report", {"config": {"store": {"root": "/s"}, "experiment": "e", "er": {"bootstrap": -1}}}),
    ("report", {"config": {"store": {"root": "/s"}}}),
    ("report", {"config": {"store": "/s", "experiment": "e"}}),  # a store is a form section (root, cache_dir)
    ("demo", {"config": {"baseline_fractions": [2.0]}}),
    ("demo", {"config": {"seed": -1}}),
]


@pytest.mark.parametrize("deployment, values", BAD_FORMS, ids=[f"{d} {json.dumps(v)}" for d, v in BAD_FORMS])
def test_the_form_schema_refuses_bad_values_on_submit(deployment, values):
    assert _errors(deployment_schemas()[deployment], values), values


def test_the_form_schema_accepts_every_deployments_defaults_and_good_pairs():
    from askshift.flows.deployments import read_deployment_specs

    schemas = deployment_schemas()
    for spec in read_deployment_specs():
        if spec.parameters:
            assert _errors(schemas[spec.name], spec.parameters) == [], spec.name
    baseline = schemas["baseline"]
    for execution in ({"backend": "local"}, {"backend": "dask", "dask_workers": 2},
                      {"backend": "slurm", "profile": "deployments/slurm-gpu.yaml"}, {"backend": "local", "profile": ""}):
        assert _errors(baseline, {"config": {"shift": "tint_p=0.7", "dataset": "wilds:waterbirds"},
                                  "execution": execution}) == [], execution


def test_closed_choices_are_the_registries_names():
    import typing

    from askshift.lib.models.strategies import PRESETS, STRATEGIES
    from askshift.lib.names import FinetunePreset, Strategy
    from askshift.lib.robustness.er import ERSettings
    from askshift.lib.robustness.lines import SCALES
    from askshift.lib.robustness.metrics import METRICS

    assert sorted(typing.get_args(Strategy)) == STRATEGIES.names()
    assert sorted(typing.get_args(FinetunePreset)) == PRESETS.names()
    assert sorted(typing.get_args(ERSettings.model_fields["metric"].annotation)) == METRICS.names()
    assert sorted(typing.get_args(ERSettings.model_fields["scale"].annotation)) == SCALES.names()


@pytest.mark.parametrize("values, words", [
    (dict(dataset="nosuch"), ["--dataset", "unknown dataset 'nosuch'", "Choose one of"]),
    (dict(shift="tint_q=0.5"), ["--shift", "unknown shift preset"]),
    (dict(model="cnn:huge"), ["--model", "huge"]),
    (dict(train_fractions=[1.5]), ["--train-fractions", "train fractions must lie in (0, 1]"]),
])
def test_configs_check_registry_names_with_one_clear_line(values, words):
    from pydantic import ValidationError

    from askshift.cli.main import error_line
    from askshift.flows.baseline import BaselineConfig

    with pytest.raises(ValidationError) as info:
        BaselineConfig(**values)
    line = error_line(info.value, "baseline")
    assert "\n" not in line and all(w in line for w in words), line


def test_serve_makes_relative_stores_absolute(tmp_path):
    from askshift.flows.deployments import absolute_stores

    given = {"config": {"store": {"root": "store", "cache_dir": "c"}, "finetune": {"store": "sub/s"}},
             "store": {"root": "/abs/s", "cache_dir": None}, "experiment": "x"}
    assert absolute_stores(given, tmp_path) == {
        "config": {"store": {"root": str(tmp_path / "store"), "cache_dir": str(tmp_path / "c")},
                   "finetune": {"store": {"root": str(tmp_path / "sub" / "s")}}},
        "store": {"root": "/abs/s", "cache_dir": None}, "experiment": "x"}


# --- names and keys -------------------------------------------------------------------------------------------------


def test_generated_run_names_are_recognised_and_typed_names_are_not():
    from prefect.utilities.names import generate_slug

    from askshift.flows.naming import is_generated_name

    assert all(is_generated_name(generate_slug(2)) for _ in range(300))  # the server's names
    for ui_name in ("beta7-aquarii-nebula", "omega512-canis-majoris", "alpha-andromedae-x"):  # the UI form's
        assert is_generated_name(ui_name)
    for typed in ("tint study 3", "my-first-baseline", "baseline digits tint_p=0.5 ep6 (local)", "nightly"):
        assert not is_generated_name(typed), typed


def _fake_run_context(monkeypatch, name: str, deployment: bool, parameters: dict, parent: bool = False):
    from prefect.context import FlowRunContext

    run = SimpleNamespace(name=name, deployment_id=uuid.uuid4() if deployment else None,
                          parent_task_run_id=uuid.uuid4() if parent else None)
    ctx = SimpleNamespace(flow_run=run, parameters=parameters, task_runner=None)
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: ctx))


def test_run_names_say_what_the_run_does_and_keep_a_typed_name(monkeypatch):
    from askshift.flows.baseline import BaselineConfig
    from askshift.flows.execution import Execution
    from askshift.flows.naming import baseline_name, report_name, run_name

    parameters = {"config": BaselineConfig(), "execution": Execution()}
    name = run_name(baseline_name)
    _fake_run_context(monkeypatch, "broad-snail", deployment=True, parameters=parameters)
    assert name() == "baseline digits tint_p=0.5 ep6 (local)"
    _fake_run_context(monkeypatch, "beta7-aquarii-nebula", deployment=True, parameters=parameters)
    assert name() == "baseline digits tint_p=0.5 ep6 (local)"
    _fake_run_context(monkeypatch, "tint study 3", deployment=True, parameters=parameters)
    assert name() == "tint study 3"  # typed in the Custom run form: kept
    _fake_run_context(monkeypatch, "tint study 3", deployment=False, parameters={"config": {"dataset": "cifar10"}})
    assert name() == "baseline cifar10 tint_p=0.5 ep6 (local)"  # not a deployment run: Prefect's own names only
    _fake_run_context(monkeypatch, "broad-snail", deployment=False, parent=True,
                      parameters={"config": {"store": "/s", "experiment": "imagefolder-out_of_support"}})
    assert run_name(report_name)() == "report imagefolder-out_of_support"  # a subflow: its parent says where


def test_the_key_rule_slugs_the_experiment_and_adds_a_store_hash_off_the_default(tmp_path, monkeypatch):
    from askshift.tasks.reporting import artifact_key, experiment_key, store_tag

    monkeypatch.chdir(tmp_path)
    assert artifact_key("digits-tint_p=0.5-report") == "digits-tint-p-0-5-report"
    assert experiment_key("digits-tint_p=0.5", "store") == "digits-tint-p-0-5"  # ./store: the default
    assert experiment_key("digits-tint_p=0.5", tmp_path / "store") == "digits-tint-p-0-5"
    other = experiment_key("digits-tint_p=0.5", tmp_path / "elsewhere")
    assert other == f"digits-tint-p-0-5-{store_tag(tmp_path / 'elsewhere')}" and re.fullmatch(r"[a-z0-9-]+", other)
    assert experiment_key("digits-tint_p=0.5", tmp_path / "other") != other  # two stores never share a key


# --- report: short tables, kept tables, wording ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from askshift.lib.report.markdown import build_report
    from askshift.lib.store import ExperimentStore

    root = tmp_path_factory.mktemp("front") / "store" / "tiny"
    make_experiment(root)
    return ExperimentStore(root), build_report(ExperimentStore(root))


def test_short_er_table_is_rounded_percent_with_interval_and_flags(built):
    from askshift.lib.report.markdown import er_display_table, summary_display_table

    _, result = built
    table = er_display_table(result.er_table)
    assert table.columns == ["shift", "part", "model", "group", "reference acc. %", "shifted acc. %", "ER %",
                             "ER 95% interval %", "flags"]
    full = result.er_table.filter((result.er_table["view"] == "full"))
    assert table.height == full.height < result.er_table.height  # one row per model and part, full-range view
    first = table.row(0, named=True)
    assert first["part"] == "whole split" and first["group"] == "ft"  # judged groups first, highest ER first
    assert re.fullmatch(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", first["ER 95% interval %"])
    assert all(f == "fits the line" for f in table.filter(table["group"] == "baseline")["flags"])
    summary = summary_display_table(result.summary)
    assert set(summary["line from"]) == {"all baselines", "comparable baselines"}
    assert summary.width < 12 and result.summary.width > 25


def test_report_names_flag_and_form_field_and_absolute_paths(built):
    exp, result = built
    assert "--baseline-group (form field baseline_group)" in result.markdown
    assert f"`{exp.table_path('er').resolve()}`" in result.markdown and "`tables/er.parquet`" not in result.markdown


def test_unknown_baseline_group_is_refused_and_the_last_tables_are_kept(built):
    from askshift.lib.report.markdown import build_report
    from askshift.lib.robustness.lines import ERInputError

    exp, _ = built
    before = {name: exp.table_path(name).read_bytes() for name in ("er", "er_summary")}
    with pytest.raises(ERInputError, match=r"no models in group 'nosuch'.*--baseline-group \(form field baseline_group\)"):
        build_report(exp, baseline_group="nosuch")
    assert {name: exp.table_path(name).read_bytes() for name in ("er", "er_summary")} == before


def test_a_report_where_every_shift_fails_keeps_the_last_tables(tmp_path):
    from askshift.lib.report.markdown import build_report
    from askshift.lib.robustness.lines import ERInputError
    from askshift.lib.store import ExperimentStore

    exp = make_experiment(tmp_path / "store" / "few", n_pretrained=2)
    build_report(ExperimentStore(exp.root))
    before = exp.table_path("er").read_bytes()
    with pytest.raises(ERInputError, match="need at least 3 baseline models.*kept"):
        build_report(ExperimentStore(exp.root), baseline_group="ft")  # 2 models: too few for a line on any shift
    assert exp.table_path("er").read_bytes() == before


@pytest.mark.slow
def test_cli_report_with_unknown_baseline_group_fails_in_one_line_and_keeps_the_tables(prefect_api, askshift, tmp_path):
    import subprocess

    from askshift.lib.report.markdown import build_report

    exp = make_experiment(tmp_path / "store" / "tiny")
    build_report(exp)
    before = {name: exp.table_path(name).read_bytes() for name in ("er", "er_summary")}
    proc = subprocess.run([askshift, "run", "report", "--store", str(tmp_path / "store"), "--experiment", "tiny",
                           "--baseline-group", "nosuch"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("askshift run: error:")]
    assert len(errors) == 1 and "--baseline-group" in errors[0] and "nosuch" in errors[0], proc.stderr[-2000:]
    assert {name: exp.table_path(name).read_bytes() for name in ("er", "er_summary")} == before


# --- results on the run the user opened -----------------------------------------------------------------------------


def _runs_and_artifacts(flow_name: str):
    """The newest run of ``flow_name``, its direct subflow runs, and the artifacts of each (key or type -> artifact)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                       sort=FlowRunSort.START_TIME_DESC, limit=1)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))

        def artifacts(flow_run_id):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key or f"unkeyed {a.type}": a for a in found}

        return run, {a: artifacts(run.id)[a] for a in artifacts(run.id)}, [(c, artifacts(c.id)) for c in children]


@pytest.mark.slow
def test_deployment_entry_flow_carries_the_result_note_and_link_on_its_own_run(prefect_api, tmp_path):
    from askshift.flows.deployed import run_report
    from askshift.tasks.reporting import experiment_key

    store = tmp_path / "store"
    make_experiment(store / "tiny")
    result = run_report(config={"store": str(store), "experiment": "tiny"})
    stem = experiment_key("tiny", store)

    run, artifacts, children = _runs_and_artifacts("run-report")
    assert run.name == "report tiny (local)"
    note, link = artifacts[f"{stem}-result"], artifacts[f"{stem}-result-link"]
    assert note.type == "markdown" and link.type == "markdown"  # Prefect stores a link artifact as [text](link)
    first = note.data.splitlines()[0]
    assert first.startswith("**report tiny**: tint_val: Pre-training helped")
    assert str(result.report_path) in note.data and str(result.er_path) in note.data and str(store) in note.data
    # The link opens the report (the copy on this run, plots inline) in one click.
    report_copy = artifacts[f"{stem}-report"]
    assert f"/artifacts/artifact/{report_copy.id})" in note.data
    assert re.fullmatch(rf"\[report of tiny\]\(\S*/artifacts/artifact/{report_copy.id}\)", link.data), link.data
    assert report_copy.data.count("](data:image/png;base64,") == 6  # two plots per part: whole, in, out of support
    assert "lowercase letters, digits and '-'" in note.data and str(store) in note.description
    # The report's own run (the subflow) holds the report and the tables, and a copy of the note.
    ((child, child_artifacts),) = children
    assert child.name == "report tiny"
    assert {f"{stem}-report", f"{stem}-er", f"{stem}-er-summary", "unkeyed markdown"} <= set(child_artifacts)


@pytest.mark.slow
def test_baseline_entry_flow_shows_progress_and_the_result_on_the_run_the_user_opened(prefect_api, tmp_path):
    from askshift.flows.baseline import BaselineConfig
    from askshift.flows.deployed import run_baseline
    from askshift.tasks.reporting import experiment_key

    store = tmp_path / "store"
    config = BaselineConfig(store=str(store), model="cnn:tiny", epochs=1, train_fractions=(1.0, 0.5, 0.25),
                            batch_size=64, device="cpu", cache_dir=str(tmp_path / "cache"))
    run_baseline(config=config)
    stem = experiment_key("digits-tint_p=0.5", store)

    run, artifacts, children = _runs_and_artifacts("run-baseline")
    assert run.name == "baseline digits tint_p=0.5 ep1 (local)"
    progress = artifacts[f"{stem}-baseline-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "3 of 5 done" not in (progress.description or "") and "5 of 5 done" in progress.description
    note = artifacts[f"{stem}-result"]
    assert note.data.startswith("**baseline digits tint_p=0.5 ep1**: tint_val: 3 baseline models")
    assert str(Path(store).resolve() / "digits-tint_p=0.5" / "report.md") in note.data
    ((child, _),) = children
    assert child.name == "baseline digits tint_p=0.5 ep1"


def test_a_flow_that_fails_at_run_time_ends_with_one_clear_line_as_its_state_message(prefect_api, tmp_path):
    """What the UI shows on a failed run's page: the cause in one line, not a traceback or UnfinishedRun."""
    from askshift.flows.baseline import BaselineConfig, synthetic_shift_baseline

    config = BaselineConfig(dataset="imagefolder", root=str(tmp_path / "no-photos"), store=str(tmp_path / "s"), epochs=1)
    state = synthetic_shift_baseline(config, return_state=True)
    assert state.is_failed()
    assert "\n" not in state.message and "UnfinishedRun" not in state.message
    assert "DatasetLayoutError" in state.message and "no-photos" in state.message
