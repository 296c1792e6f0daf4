"""Flow-run names built from what a run does (``baseline digits tint_p=0.5 ep6 (local)``); a name the user typed is kept.

Prefect renames every run of a flow that has ``flow_run_name``, also a deployment run created with a name of its
own. So each askshift flow passes a callable (``run_name``): Prefect calls it in the run's context when the run
starts, and it returns the run's current name when that name was chosen by a person, that is, when the run came
from a deployment and its name is not one Prefect generated. Generated names are the server's two-word slugs
(``broad-snail``, from coolname's adjective and animal lists) and the UI form's star names (``beta7-aquarii-nebula``,
a Greek letter with an optional number, then words); a typed name that happens to look like one is replaced.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

_GREEK = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
          "upsilon phi chi psi omega").split()
# The Prefect UI's custom-run form pre-fills the name field with these (prefect-ui-library's mocker "runName").
_UI_NAME = re.compile(rf"^(?:{'|'.join(_GREEK)})\d*(?:-[a-z]+)+$")
_SLUG = re.compile(r"^[a-z]+(?:-[a-z]+)+$")


@functools.lru_cache(maxsize=1)
def _coolname_words() -> frozenset[str]:
    """Every word of coolname's lists (the server's ``generate_slug``); empty when coolname is not importable."""
    try:
        from importlib.resources import files

        data = files("coolname") / "data"
        words: set[str] = set()
        for item in data.iterdir():
            if not item.name.endswith(".txt"):
                continue
            for line in item.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" not in line:
                    words.update(line.lower().split())
        return frozenset(words)
    except Exception:  # noqa: BLE001 -- without the lists every slug-shaped name counts as generated
        return frozenset()


def is_generated_name(name: str | None) -> bool:
    """True for names Prefect made up (server slugs, the UI form's pre-filled star names) and for no name."""
    if not name:
        return True
    if _UI_NAME.match(name):
        return True
    if _SLUG.match(name):
        words = _coolname_words()
        return not words or all(part in words for part in name.split("-"))
    return False


def _get(obj: Any, dotted: str, default: Any = None) -> Any:
    """``config.dataset`` of a parameters mapping, whether ``config`` is a model or (not yet validated) a dict."""
    for part in dotted.split("."):
        if obj is None:
            return default
        obj = obj.get(part, default) if isinstance(obj, Mapping) else getattr(obj, part, default)
    return obj


def backend_label(parameters: Mapping[str, Any], task_runner: Any = None) -> str:
    """local, dask or slurm: the ``execution`` parameter of a deployment run, else the flow's task runner."""
    backend = _get(parameters, "execution.backend")
    if backend:
        return str(backend)
    name = type(task_runner).__name__ if task_runner is not None else ""
    if "Dask" in name:
        cluster = str(getattr(task_runner, "cluster_class", "") or "")
        return "slurm" if "SLURM" in cluster.upper() else "dask"
    return "local"


def run_name(describe: Callable[[Mapping[str, Any]], str]) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``describe(parameters)`` plus ``(backend)`` for a top-level run; a deployment
    run's typed name is kept (module docstring)."""

    def name() -> str:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        run = ctx.flow_run if ctx is not None else None
        if run is not None and run.deployment_id is not None and not is_generated_name(run.name):
            return run.name
        parameters = (ctx.parameters if ctx is not None else None) or {}
        try:
            text = describe(parameters)
        except Exception:  # noqa: BLE001 -- a name must never stop a run; Prefect's name stays
            return run.name if run is not None else "askshift run"
        if run is None or run.parent_task_run_id is None:  # a subflow's parent already says where it runs
            text += f" ({backend_label(parameters, ctx.task_runner if ctx is not None else None)})"
        return text

    name.__name__ = f"run_name_{getattr(describe, '__name__', 'flow')}"
    return name


def _join(values: Any) -> str:
    if values is None:
        return ""
    if isinstance(values, str):
        return values
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def baseline_name(p: Mapping[str, Any]) -> str:
    return (f"baseline {_get(p, 'config.dataset', 'digits')} {_get(p, 'config.shift', 'tint_p=0.5')} "
            f"ep{_get(p, 'config.epochs', 6)}")


def finetune_name(p: Mapping[str, Any]) -> str:
    strategies = _join(_get(p, "config.strategies"))
    preset = _get(p, "config.preset")
    return (f"finetune {_get(p, 'config.dataset', 'digits')} {_get(p, 'config.shift', 'out_of_support')} "
            f"{preset or _join(_get(p, 'config.models'))}" + (f" {strategies}" if strategies else ""))


def ablation_name(p: Mapping[str, Any]) -> str:
    return (f"hparam ablation {_get(p, 'config.finetune.dataset', 'digits')} "
            f"{_get(p, 'config.finetune.shift', 'out_of_support')}")


def _spec_name(spec: Any) -> str:
    return str(_get(spec, "name") or "spec")


def split_name(p: Mapping[str, Any]) -> str:
    return f"split {_spec_name(_get(p, 'config.spec'))} eps={_get(p, 'config.epsilon', 0.2)}"


def zoo_name(p: Mapping[str, Any]) -> str:
    return f"zoo {_spec_name(_get(p, 'config.split.spec'))}"


def report_name(p: Mapping[str, Any]) -> str:
    return f"report {_get(p, 'config.experiment')}"


def ask_name(p: Mapping[str, Any]) -> str:
    return f"ask {_get(p, 'config.split.spec.name', 'shift')}"


def demo_name(p: Mapping[str, Any]) -> str:
    quick = _get(p, "config.quick", False)
    return f"demo {'quick' if quick else 'full'} {_get(p, 'config.dataset', 'digits')} seed {_get(p, 'config.seed', 0)}"


__all__ = ["backend_label", "is_generated_name", "run_name", "baseline_name", "finetune_name", "ablation_name",
           "split_name", "zoo_name", "report_name", "ask_name", "demo_name"]
