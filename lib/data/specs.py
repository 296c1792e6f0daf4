"""Experiment specs: a reference distribution, shifted targets, and the paper's presets by name.

A ``DistributionSpec`` is a dataset split plus an optional shift transform and class sampling
rates.  An ``ExperimentSpec`` names the reference distribution (splits ``source_train`` and
``source_val``) and one or more targets (split ``<target>_val`` each), and says whether each
target is in or out of the reference's support.  Presets: ``out_of_support``, ``tint_p=<p>``,
``label_p=<p>`` (any p in range), or a YAML/JSON file.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from askshift.lib.data.datasets import dataset_info, dataset_num_classes, load_dataset
from askshift.lib.data.image_check import check_images_readable
from askshift.lib.names import DATASET_SCHEMA
from askshift.lib.registry import Registry, UnknownNameError

SOURCE_SPLITS = ("source_train", "source_val")
_TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class DistributionSpec(BaseModel):
    """One distribution: a dataset split, an optional shift transform, optional class sampling rates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field("digits", json_schema_extra=DATASET_SCHEMA,
                         description="registered dataset name (askshift datasets), e.g. digits, cifar10, wilds:waterbirds")
    root: str | None = Field(None, description="where the dataset lives on disk (not needed for digits)")
    split: str = Field("val", description="dataset split read for evaluation (source_val / TARGET_val)")
    train_split: str = Field("train", description="dataset split read for source_train (reference only)")
    shift: str | None = Field(None, description="shift transform (askshift shifts), or none")
    shift_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the shift transform")
    class_rates: dict[int, float] | None = Field(
        None, description="relative sampling rate per class in (0, 1]; classes not listed keep rate 1"
    )
    classes: list[int] | None = Field(
        None, description="keep only examples of these classes (e.g. ImageNet restricted to ImageNet-R's 200 classes)"
    )
    dataset_options: dict[str, Any] = Field(default_factory=dict, description="options of the dataset builder (e.g. digits size)")
    write_mode: Literal["raw", "jpg", "smart"] | None = Field(None, description=".beton image storage; None = the dataset's default")
    max_resolution: int | None = Field(None, ge=1, description="longest image side stored in the .beton; None = the dataset's default")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of .beton images stored as jpg, 1 to 100")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        try:
            dataset_info(name)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("class_rates")
    @classmethod
    def _rates_in_range(cls, rates: dict[int, float] | None) -> dict[int, float] | None:
        if rates is not None:
            bad = {k: v for k, v in rates.items() if not 0.0 < v <= 1.0 or k < 0}
            if bad:
                raise ValueError(f"class rates must be in (0, 1] for classes >= 0, got {bad}")
        return rates

    @model_validator(mode="after")
    def _known_shift(self) -> "DistributionSpec":
        from askshift.lib.data.shifts import SHIFTS, check_shift_params

        if self.shift is not None:
            if self.shift not in SHIFTS:
                raise ValueError(SHIFTS.unknown_message(self.shift))
            check_shift_params(self.shift, self.shift_params)
        elif self.shift_params:
            raise ValueError("shift_params given without a shift")
        return self

    def rates_array(self, num_classes: int) -> np.ndarray | None:
        """Sampling rate per class (length ``num_classes``), or None when every class keeps rate 1."""
        if not self.class_rates:
            return None
        rates = np.ones(num_classes, dtype=np.float64)
        for k, v in self.class_rates.items():
            if k >= num_classes:
                raise ValueError(f"class_rates names class {k} but the dataset has {num_classes} classes")
            rates[k] = v
        return rates


class ExperimentSpec(BaseModel):
    """A reference distribution and its shifted targets, each marked in- or out-of-support."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="experiment name (its folder in the store)")
    description: str = Field("", description="what the shift is, in words (shown in reports)")
    reference: DistributionSpec = Field(default_factory=DistributionSpec,
                                        description="the reference distribution: splits source_train and source_val")
    targets: dict[str, DistributionSpec] = Field(description="shifted distributions by target name (each becomes the "
                                                             "split NAME_val)")
    support: dict[str, Literal["in", "out"]] = Field(default_factory=dict, description="per target name: in or out "
                                                                                         "of the reference's support")
    baseline_epochs_factor: float = Field(
        1.0, gt=0, description="baselines train this many times the usual epochs (2 for label_p, as in the paper)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        if not self.targets:
            raise ValueError("an experiment needs at least one target distribution")
        for name in self.targets:
            if not _TARGET_NAME.match(name) or name == "source":
                raise ValueError(f"target name {name!r} must be lowercase letters, digits and _ (and not 'source')")
        unknown = set(self.support) - set(self.targets)
        if unknown:
            raise ValueError(f"support names targets that do not exist: {', '.join(sorted(unknown))}")
        return self

    def splits(self) -> list[str]:
        """``["source_train", "source_val", "<target>_val", ...]`` in target order."""
        return [*SOURCE_SPLITS, *(f"{t}_val" for t in self.targets)]

    def target_splits(self) -> list[str]:
        return [f"{t}_val" for t in self.targets]

    def distribution(self, split: str) -> tuple[DistributionSpec, str]:
        """The distribution behind an experiment split and the dataset split it reads."""
        if split == "source_train":
            return self.reference, self.reference.train_split
        if split == "source_val":
            return self.reference, self.reference.split
        if split.endswith("_val") and split[: -len("_val")] in self.targets:
            target = self.targets[split[: -len("_val")]]
            return target, target.split
        raise ValueError(f"experiment {self.name!r} has no split {split!r}; choose one of: {', '.join(self.splits())}")

    def with_dataset(self, dataset: str, root: str | None = None) -> "ExperimentSpec":
        """The same shift on another dataset (every distribution that used the reference dataset moves)."""
        old = self.reference.dataset

        def move(d: DistributionSpec) -> DistributionSpec:
            return d.model_copy(update={"dataset": dataset, "root": root}) if d.dataset == old else d

        return self.model_copy(update={
            "reference": move(self.reference),
            "targets": {k: move(v) for k, v in self.targets.items()},
        })


# --- presets -------------------------------------------------------------------------------------

PresetBuilder = Callable[[str, str | None], ExperimentSpec]
PRESETS: Registry[PresetBuilder] = Registry("shift preset")

TINT_ALPHA = 0.25
LABEL_SHIFT_SEED = 0


def _dist(dataset: str, root: str | None, **kw: Any) -> DistributionSpec:
    return DistributionSpec(dataset=dataset, root=root, **kw)


@PRESETS.register("out_of_support", "reference untinted, upright; targets: unseen tint (alpha=0.25, random class colours) and vertical flip")
def out_of_support(dataset: str = "digits", root: str | None = None) -> ExperimentSpec:
    return ExperimentSpec(
        name=f"{dataset}-out_of_support",
        description="Out-of-support shifts: an unseen colour tint and vertical flips.",
        reference=_dist(dataset, root),
        targets={
            "tint": _dist(dataset, root, shift="tint", shift_params={"alpha": TINT_ALPHA, "spurious_p": 0.0}),
            "vflip": _dist(dataset, root, shift="vflip"),
        },
        support={"tint": "out", "vflip": "out"},
    )


def tint_p(p: float, dataset: str = "digits", root: str | None = None) -> ExperimentSpec:
    """Spurious tint: reference examples get their class's colour with probability p; the target never more than by chance."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"tint_p needs 0 <= p <= 1, got {p}")
    return ExperimentSpec(
        name=f"{dataset}-tint_p={p:g}",
        description=f"In-support spurious tint: class colour with probability {p:g} in the reference, random colours in the target.",
        reference=_dist(dataset, root, shift="tint", shift_params={"alpha": TINT_ALPHA, "spurious_p": p}),
        targets={"tint": _dist(dataset, root, shift="tint", shift_params={"alpha": TINT_ALPHA, "spurious_p": 0.0})},
        support={"tint": "in"},
    )


def minority_classes(num_classes: int, seed: int = LABEL_SHIFT_SEED) -> list[int]:
    """The fixed random half of the classes that is rare in the reference data of ``label_p``."""
    order = np.random.default_rng(seed).permutation(num_classes)
    return sorted(int(k) for k in order[: num_classes // 2])


def label_p(p: float, dataset: str = "digits", root: str | None = None) -> ExperimentSpec:
    """Class-proportion shift: half the classes at relative rate p (reference) vs 1-p (target)."""
    if not 0.0 < p <= 0.5:
        raise ValueError(f"label_p needs 0 < p <= 0.5 (p is the minority half's share), got {p}")

    num_classes = dataset_num_classes(dataset, root)
    minority = minority_classes(num_classes)
    majority = [k for k in range(num_classes) if k not in minority]
    ratio = p / (1.0 - p)  # relative rates, the larger class rate kept at 1
    return ExperimentSpec(
        name=f"{dataset}-label_p={p:g}",
        description=f"In-support class-proportion shift: half the classes sampled at {p:g} vs {1 - p:g} (reversed in the target).",
        reference=_dist(dataset, root, class_rates={k: ratio for k in minority}),
        targets={"label": _dist(dataset, root, class_rates={k: ratio for k in majority})},
        support={"label": "in"},
        baseline_epochs_factor=2.0,
    )


for _p in (0.5, 0.6, 0.7, 0.8, 0.9):
    PRESETS.add(f"tint_p={_p:g}", lambda dataset="digits", root=None, _p=_p: tint_p(_p, dataset, root),
                f"spurious tint: reference gets its class colour with p={_p:g}, target random colours (in-support)")
for _p in (0.1, 0.2, 0.3):
    PRESETS.add(f"label_p={_p:g}", lambda dataset="digits", root=None, _p=_p: label_p(_p, dataset, root),
                f"class proportions: half the classes at {_p:g} vs {1 - _p:g}, reversed in the target (in-support)")

_PARAMETRIC = {"tint_p": tint_p, "label_p": label_p}


def load_spec(path: str | os.PathLike) -> ExperimentSpec:
    """An ExperimentSpec from YAML/JSON: either its fields, or ``{preset: NAME, dataset: ..., root: ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"spec file {path} must hold a mapping (ExperimentSpec fields or preset/dataset/root)")
    if "preset" in data:
        extra = set(data) - {"preset", "dataset", "root"}
        if extra:
            raise ValueError(f"spec file {path}: with 'preset' only 'dataset' and 'root' are allowed, got {', '.join(sorted(extra))}")
        return get_spec(data["preset"], data.get("dataset", "digits"), data.get("root"))
    return ExperimentSpec.model_validate(data)


def check_spec_data(spec: ExperimentSpec, cache_dir: str | None = None) -> None:
    """Open every split of ``spec`` as a dataset: a wrong path, a missing ``val/``, one class or an empty class
    folder raises its one-line error here, before any compute; so do image files that cannot be decoded (named,
    with their count). Files found decodable before are remembered in ``cache_dir``."""
    seen, files, names = {}, [], []
    for split in spec.splits():
        dist, dataset_split = spec.distribution(split)
        key = (dist.dataset, dataset_split, dist.root)
        if key not in seen:
            seen[key] = dataset = load_dataset(dist.dataset, dataset_split, dist.root, **dist.dataset_options)
            if dataset.files:
                files += dataset.files
                names.append(f"{dist.dataset} {dataset_split}")
        if dist.shift:  # a shift's parameters (alpha of a tint, ...) are checked by building it, as the tasks will
            from askshift.lib.data.shifts import make_shift

            make_shift(dist.shift, seen[key].num_classes, dist.shift_params)
    if files:  # every layout is checked first: a refused run writes nothing, not even the decodability record
        check_images_readable(list(dict.fromkeys(files)), "dataset " + ", ".join(names), cache_dir)


def get_spec(shift: str, dataset: str = "digits", root: str | None = None) -> ExperimentSpec:
    """A preset by name (``out_of_support``, ``tint_p=0.7``, ``label_p=0.25``, ...) or a YAML/JSON spec file."""
    if shift.lower().endswith((".yaml", ".yml", ".json")):
        return load_spec(shift)
    if shift in PRESETS:
        return PRESETS.get(shift)(dataset, root)
    family, sep, value = shift.partition("=")
    if sep and family in _PARAMETRIC:
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"{family}=P needs a number, got {value!r}") from None
        return _PARAMETRIC[family](p, dataset, root)
    raise UnknownNameError(
        PRESETS.unknown_message(shift) + " (tint_p=P and label_p=P accept any P in range; a .yaml/.json path loads a spec file)"
    )


__all__ = [
    "DistributionSpec",
    "ExperimentSpec",
    "PRESETS",
    "SOURCE_SPLITS",
    "get_spec",
    "label_p",
    "load_spec",
    "minority_classes",
    "out_of_support",
    "tint_p",
]
