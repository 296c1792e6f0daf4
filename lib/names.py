"""Registry names inside configs: JSON-schema patterns (the Prefect UI refuses a bad name on Submit) and checks (the
registries' own one-line "unknown name, choose one of ..." errors), built from the registries when this imports.

Use them in a pydantic field as ``Field(..., json_schema_extra=DATASET_SCHEMA)`` plus a validator calling
``check_dataset`` (and alike): the schema pattern is for forms, the check gives the clear message for the CLI.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from askshift.lib.data.datasets import DATASETS, dataset_info
from askshift.lib.registry import UnknownNameError


def _alternatives(names: list[str]) -> str:
    # re.escape also escapes '-', which ECMAScript regexes (unicode mode) refuse outside a class.
    return "|".join(re.escape(n).replace("\\-", "-") for n in names)


def _dataset_pattern() -> str:
    fixed = [n for n in DATASETS.names() if not n.endswith(":<name>")]
    families = [n[: -len(":<name>")] for n in DATASETS.names() if n.endswith(":<name>")]
    open_ = [f"{re.escape(f)}:[A-Za-z0-9_.-]+" for f in families]
    return "^(" + "|".join([_alternatives(fixed), *open_]) + ")$"


def _shift_pattern() -> str:
    from askshift.lib.data.specs import PRESETS

    # tint_p=P with 0 <= P <= 1, label_p=P with 0 < P < 1 (the preset says P <= 0.5), or a spec file.
    number01 = r"(0|1|0?\.[0-9]+|0\.[0-9]*|1\.0*)"
    return ("^(" + _alternatives(PRESETS.names()) + rf"|tint_p={number01}|label_p=0?\.[0-9]+"
            + r"|.+\.(yaml|yml|json))$")


def _model_pattern() -> str:
    from askshift.lib.models.families import MODEL_FAMILIES

    return "^(" + _alternatives(MODEL_FAMILIES.names()) + r"):\S+$"


# Built on first use (PEP 562): askshift.lib.data.specs uses DATASET_SCHEMA while it is being imported, and SHIFT_* needs askshift.lib.data.specs,
# MODEL_* askshift.lib.models.families (torch); importing this module costs nothing.
_BUILDERS = {"DATASET": _dataset_pattern, "SHIFT": _shift_pattern, "MODEL": _model_pattern}


def __getattr__(name: str):
    kind, _, what = name.partition("_")
    if kind in _BUILDERS and what in ("PATTERN", "SCHEMA"):
        pattern = globals().get(f"{kind}_PATTERN") or _BUILDERS[kind]()
        globals()[f"{kind}_PATTERN"] = pattern
        globals()[f"{kind}_SCHEMA"] = {"pattern": pattern}
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Closed sets fixed at import: dropdowns in the UI form (askshift.lib.models.strategies' STRATEGIES and PRESETS; checked by the
# tests against the registries).
Strategy = Literal["ft", "lp", "lp-ft", "scratch", "zs-ft"]
FinetunePreset = Literal["augreg_in21k", "openai_clip"]


def check_dataset(name: str) -> str:
    """A registered dataset name (``wilds:NAME`` for any WILDS dataset), else ValueError listing the choices."""
    try:
        dataset_info(name)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None
    return name


def check_shift(name: str) -> str:
    """A shift preset (``out_of_support``, ``tint_p=0.7``, ``label_p=0.25``, ...) or an existing spec file."""
    from askshift.lib.data.specs import get_spec

    if name.lower().endswith((".yaml", ".yml", ".json")):
        if not Path(name).expanduser().is_file():
            raise ValueError(f"spec file {name} does not exist (a shift is a preset name, see askshift shifts, or a "
                             "YAML/JSON spec file)")
        return name
    try:
        get_spec(name)  # presets build lazily: nothing is read here
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None
    return name


def check_model(name: str) -> str:
    """A model name some family can build (``cnn:small``, ``timm:resnet18``, ``clip:ViT-B-32``), without building it."""
    from askshift.lib.models.families import check_model_name

    try:
        check_model_name(name)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None
    return name


# The *_PATTERN / *_SCHEMA names come from the module __getattr__ above (built on first use).
__all__ = ["DATASET_PATTERN", "DATASET_SCHEMA", "FinetunePreset", "MODEL_PATTERN", "MODEL_SCHEMA",  # noqa: F822
           "SHIFT_PATTERN", "SHIFT_SCHEMA", "Strategy", "check_dataset", "check_model", "check_shift"]  # noqa: F822
