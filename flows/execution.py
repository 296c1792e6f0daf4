"""``Execution``: where a deployed flow's tasks run (local | dask | slurm), the typed ``execution`` deployment parameter."""
from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from askshift.flows.backends import backend_task_runner, check_backend_choice
from askshift.flows.cluster import load_profile
from askshift.flows.deployments import bundled_profile


class Execution(BaseModel):
    """Where the flow's tasks run: the `--backend` / `--profile` choice of `askshift run`, as a form in the UI.

    Checked when the flow run starts, before any compute: a wrong combination or a profile that does not load fails
    the run at once with one line saying what to change.
    """

    # The same rules as ``_usable`` in the JSON schema, so the UI form refuses a wrong pair on Submit: slurm needs a
    # profile, the other backends take none, dask_workers is for dask only.
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra={
        "if": {"properties": {"backend": {"const": "slurm"}}, "required": ["backend"]},
        "then": {"required": ["profile"],
                 "properties": {"profile": {"type": "string", "pattern": r"\S"}, "dask_workers": {"type": "null"}}},
        "else": {
            "properties": {"profile": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": r"^\s*$"}]}},
            "if": {"properties": {"backend": {"const": "dask"}}, "required": ["backend"]},
            "then": {},
            "else": {"properties": {"dask_workers": {"type": "null"}}},
        },
    })

    backend: Literal["local", "dask", "slurm"] = Field(
        "local", description="where tasks run: local (in the flow run's process, one task at a time), dask (a Dask "
                             "cluster of worker processes on the runner's machine), slurm (Dask workers in SLURM jobs "
                             "started by dask-jobqueue; needs a profile)")
    profile: str | None = Field(
        None, description="cluster profile YAML for backend slurm, e.g. deployments/slurm-gpu.yaml; a relative path "
                          "is read from the askshift repository root, whatever the runner's working directory")
    dask_workers: int | None = Field(
        None, ge=1, description="backend dask only: worker processes (default: the machine's cores, at most 4)")

    @field_validator("profile")
    @classmethod
    def _resolve_profile(cls, value: str | None) -> str | None:
        # A cleared text field in the UI form arrives as "".
        if value is None or not value.strip():
            return None
        return str(bundled_profile(value.strip()))

    @model_validator(mode="after")
    def _usable(self) -> "Execution":
        check_backend_choice(self.backend, self.profile)
        if self.dask_workers is not None and self.backend != "dask":
            raise ValueError(f"dask_workers applies to backend dask only (got backend {self.backend}): choose "
                             "backend dask or leave dask_workers empty")
        if self.profile:
            load_profile(self.profile)  # a missing or invalid profile: ClusterProfileError naming the field
        return self

    def task_runner(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager yielding the task runner for this choice (``askshift.flows.backends.backend_task_runner``)."""
        return backend_task_runner(self.backend, self.profile, dask_workers=self.dask_workers)
