"""The paper's timm model zoo (78 from-scratch ImageNet models, 55 pre-trained ones) as data: ``paper_zoo.csv``.

Names are timm ``arch.tag`` strings (each is in timm's published results,
/work/shared/data/timm-results); any other list of such names works with ``zoo_evaluate`` too.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

ZOO_CSV = Path(__file__).with_name("paper_zoo.csv")
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


def load_zoo_model(name: str, weights_dir: str | Path | None = None, num_classes: int | None = None,
                   input_size: int | None = None):
    """A timm ``arch.tag`` classifier with its published head, as a module taking float [0, 1] NCHW images.

    Weights come from ``<weights_dir>/<arch.tag>.{safetensors,pth,pt,bin}`` (a timm state dict), or from
    the hub when no directory is given (fails fast when HF_HUB_OFFLINE=1).
    """
    import timm

    from lib.models import PretrainedUnavailable, hub_offline, read_state_dict

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
    return NormalisedTimm(model, input_size)


class NormalisedTimm(nn.Module):
    """Resize to the model's input size and normalise with its own mean/std, then the timm model."""

    def __init__(self, model: nn.Module, input_size: int | None = None):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.model = model
        self.input_size = int(input_size or (cfg.get("input_size") or (3, 224, 224))[-1])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False)
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
