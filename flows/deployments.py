"""The deployments declared in deployments/prefect.yaml, as runner deployments ``askshift serve`` can serve."""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger("askshift.deployments")

# deployments/ ships as package data (askshift.deployments): a wheel serves the same file as the checkout.
DEPLOYMENTS_DIR = Path(str(resources.files("askshift.deployments")))
PREFECT_YAML = DEPLOYMENTS_DIR / "prefect.yaml"


def bundled_profile(path: str | Path) -> Path:
    """A relative cluster profile path: as given when it exists from the working directory, else the shipped file
    of that name (``deployments/slurm-gpu.yaml`` or ``slurm-gpu.yaml`` -> askshift.deployments' copy)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    parts = path.parts[1:] if path.parts and path.parts[0] == "deployments" else path.parts
    shipped = DEPLOYMENTS_DIR.joinpath(*parts)
    return shipped if shipped.exists() else path.resolve()


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of prefect.yaml's ``deployments:`` list (the fields askshift uses)."""

    name: str
    entrypoint: str  # "flows/baseline.py:synthetic_shift_baseline"
    description: str | None
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    schedules: tuple[dict[str, Any], ...]

    @property
    def module_and_attribute(self) -> tuple[str, str]:
        """``flows/baseline.py:synthetic_shift_baseline`` -> (``askshift.flows.baseline``, ``synthetic_shift_baseline``)."""
        path, _, attribute = self.entrypoint.partition(":")
        if not attribute or not path.endswith(".py"):
            raise ValueError(f"deployment {self.name!r}: entrypoint {self.entrypoint!r} is not 'path/to/file.py:flow'")
        # prefect.yaml names files of the checkout (what `prefect deploy` reads); installed, they are askshift.flows.*
        return "askshift." + path[: -len(".py")].replace("/", "."), attribute


def read_deployment_specs(path: str | Path = PREFECT_YAML) -> list[DeploymentSpec]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    specs = []
    for entry in data.get("deployments") or []:
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], description=entry.get("description"),
            tags=tuple(entry.get("tags") or ()), parameters=dict(entry.get("parameters") or {}),
            schedules=tuple(entry.get("schedules") or ()),
        ))
    return specs


def _schedules(spec: DeploymentSpec) -> list[Any]:
    from prefect.schedules import Cron, Interval

    out = []
    for item in spec.schedules:
        if "cron" in item:
            out.append(Cron(item["cron"], timezone=item.get("timezone"), active=bool(item.get("active", True))))
        elif "interval" in item:
            out.append(Interval(item["interval"], timezone=item.get("timezone"),
                                active=bool(item.get("active", True))))
        else:
            raise ValueError(f"deployment {spec.name!r}: only cron and interval schedules are supported, got {item}")
    return out


def absolute_stores(parameters: Any, base: str | Path | None = None) -> Any:
    """``parameters`` with every ``store`` (StoreOptions: ``root`` and ``cache_dir``; a bare string is its root) made
    absolute against ``base`` (default: the working directory), so the UI form shows, and runs use, one folder
    whatever directory a run starts in."""
    base = Path(base or Path.cwd())

    def absolute(value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())

    if isinstance(parameters, dict):
        out = {}
        for key, value in parameters.items():
            if key == "store" and isinstance(value, str) and value.strip():
                value = {"root": value}
            if key == "store" and isinstance(value, dict):
                out[key] = {k: absolute(v) if k in ("root", "cache_dir") else v for k, v in value.items()}
            else:
                out[key] = absolute_stores(value, base)
        return out
    if isinstance(parameters, list):
        return [absolute_stores(v, base) for v in parameters]
    return parameters


def load_flow(spec: DeploymentSpec):
    module_name, attribute = spec.module_and_attribute
    module = importlib.import_module(module_name)
    flow = getattr(module, attribute, None)
    if flow is None:
        raise AttributeError(f"{module_name} has no flow {attribute!r}")
    return flow


def runner_deployments(path: str | Path = PREFECT_YAML, only: list[str] | None = None) -> tuple[list[Any], list[str]]:
    """Runner deployments for every flow of prefect.yaml that imports; plus one line per flow that was skipped.

    Entrypoints become module paths (``askshift.flows.baseline.synthetic_shift_baseline``) so flow runs find their code
    whatever the runner's working directory; relative ``store`` parameters become absolute against the working
    directory of the process serving them (``absolute_stores``).
    """
    from prefect.deployments.runner import EntrypointType

    deployments, skipped = [], []
    for spec in read_deployment_specs(path):
        if only and spec.name not in only:
            continue
        try:
            flow = load_flow(spec)
        except (ImportError, AttributeError) as exc:
            skipped.append(f"{spec.name}: {spec.entrypoint} is not available ({type(exc).__name__}: {exc})")
            continue
        deployments.append(flow.to_deployment(
            name=spec.name, description=spec.description, tags=list(spec.tags),
            parameters=absolute_stores(spec.parameters) or None,
            schedules=_schedules(spec) or None, entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return deployments, skipped
