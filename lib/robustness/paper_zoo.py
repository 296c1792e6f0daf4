"""The paper's timm model zoo (78 from-scratch ImageNet models, 55 pre-trained ones) as data: ``paper_zoo.csv``.

Names are timm ``arch.tag`` strings (each is in timm's published results,
/work/shared/data/timm-results); any other list of such names works with ``zoo_evaluate`` too.
"""
from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from askshift.lib.models.families import PretrainedUnavailable, hub_offline, read_state_dict
from askshift.lib.store import load_torch

ZOO_CSV = Path(str(resources.files("askshift.lib.robustness") / "paper_zoo.csv"))
# Groups as the experiment store records them; "baseline" is what the ER line is fitted on.
BASELINE_GROUP = "baseline"
PRETRAINED_GROUP = "pretrained"


def paper_zoo(group: str | None = None) -> list[str]:
    """Model names of the paper's zoo, in its order; ``group`` = "baseline" or "pretrained" selects one list."""
    with open(ZOO_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups = {r["group"] for r in rows}
    if group is not None and group not in groups:
        raise ValueError(f"unknown zoo group {group!r}; choose one of: {', '.join(sorted(groups))}")
    return [r["model"] for r in rows if group is None or r["group"] == group]


def paper_zoo_groups() -> dict[str, str]:
    """model name -> group for the whole zoo."""
    with open(ZOO_CSV, newline="") as fh:
        return {r["model"]: r["group"] for r in csv.DictReader(fh)}


# --- published timm classifiers, used as they are (their own head, normalisation and input size) ------------

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_file(name: str, weights_dir: str | Path | None) -> Path | None:
    """``<weights_dir>/<arch.tag><suffix>`` when it exists (tried in WEIGHT_SUFFIXES order)."""
    if weights_dir is None:
        return None
    for suffix in WEIGHT_SUFFIXES:
        path = Path(weights_dir) / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def weights_head_size(name: str, path: str | Path) -> int | None:
    """Classes of the head stored in a weight file of timm model ``name`` (None when it cannot be told), read
    without building the model (the CLI compares it with --num-classes before anything runs)."""
    import timm.models

    try:
        classifier = timm.models.get_pretrained_cfg(name).classifier
    except (AttributeError, RuntimeError):
        return None
    key = f"{classifier[0] if isinstance(classifier, (tuple, list)) else classifier}.weight"
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return int(fh.get_slice(key).get_shape()[0]) if key in fh.keys() else None
        # askshift.lib.store.load_torch's safe load, memory-mapped: only one tensor's shape is read.
        state = load_torch(path, mmap=True)
    except Exception:  # noqa: BLE001 -- an unreadable file fails later with torch's own message
        return None
    if isinstance(state, dict):
        state = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
        weight = state.get(key)
        return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None
    return None


def load_zoo_model(name: str, weights_dir: str | Path | None = None, num_classes: int | None = None):
    """A timm ``arch.tag`` classifier with its published head, as a module taking float [0, 1] NCHW images.

    Weights come from ``<weights_dir>/<arch.tag>.{safetensors,pth,pt,bin}`` (a timm state dict), or from
    the hub when no directory is given (fails fast when HF_HUB_OFFLINE=1).  Images should arrive as timm's
    own evaluation transform makes them (``askshift.lib.models.families.timm_transform``: centre crop at the model's
    resolution); the module normalises them with the model's mean/std.
    """
    import timm

    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r} in zoo model {name!r}")
    path = weights_file(name, weights_dir)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if path is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.load_state_dict(read_state_dict(path))
    elif weights_dir is not None:
        raise FileNotFoundError(f"no weights for zoo model {name!r} in {weights_dir} "
                                f"(expected {name}{' or '.join(WEIGHT_SUFFIXES)})")
    else:
        if hub_offline():
            raise PretrainedUnavailable(f"zoo model {name!r} needs hub weights but HF_HUB_OFFLINE=1: "
                                        f"put {name}.safetensors in a folder and pass it as weights_dir")
        model = timm.create_model(name, pretrained=True, **kwargs)
    return NormalisedTimm(model)


class NormalisedTimm(nn.Module):
    """Normalise with the model's own mean/std (its ``pretrained_cfg``), then the timm model.

    Convolutional networks read any image size, so images reach them at the size the loader made (the model's
    resolution, or ``--resolution``).  Models with a fixed input size (``pretrained_cfg["fixed_input_size"]``:
    ViTs and other position-embedding models) are fed that size: images of another size are resized to it
    (``input_size`` overrides the size they are resized to, for a model built at another size).
    """

    def __init__(self, model: nn.Module, input_size: int | None = None):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.model = model
        fixed = bool(cfg.get("fixed_input_size", False))
        self.input_size = int(input_size or (cfg.get("input_size") or (3, 224, 224))[-1]) if fixed else None
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.input_size
        if side is not None and (x.shape[-1] != side or x.shape[-2] != side):
            x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
