"""DFR on a registered model: features from a real FFCV split with group labels, a refitted head, a new model."""
from __future__ import annotations

import json

import numpy as np
import torch

from askshift.lib.models.dfr import dfr_registered_model
from askshift.lib.models.families import build_model
from askshift.lib.store import ExperimentStore, atomic_save_torch


def spurious_npz(path, n=240, majority=0.9, seed=0):
    """Label = bar orientation (horizontal/vertical, faint); background colour (red/green) matches the label
    in ``majority`` of the examples.  Groups = 2 * label + colour."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val"):
        y = rng.integers(0, 2, n)
        colour = np.where(rng.random(n) < majority, y, 1 - y)
        images = np.zeros((n, 32, 32, 3), np.float32)
        images[colour == 0, :, :, 0] = 0.6
        images[colour == 1, :, :, 1] = 0.6
        for i in range(n):
            pos = rng.integers(6, 26)
            if y[i] == 0:
                images[i, pos - 2:pos + 2, 4:28] += 0.35
            else:
                images[i, 4:28, pos - 2:pos + 2] += 0.35
        images += rng.normal(0, 0.05, images.shape)
        arrays[f"{split}_images"] = (np.clip(images, 0, 1) * 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y
        arrays[f"{split}_groups"] = 2 * y + colour
    np.savez(path, **arrays)
    return path


def test_dfr_registers_a_refitted_head_that_keeps_the_backbone(tmp_path):
    from askshift.lib.data.specs import get_spec
    from askshift.lib.store import load_torch

    root = spurious_npz(tmp_path / "spurious.npz")
    spec = get_spec("out_of_support", dataset="npz", root=str(root))
    exp = ExperimentStore(tmp_path / "exp")
    torch.manual_seed(0)
    model = build_model("cnn:tiny", 2)
    ckpt = atomic_save_torch(exp.run_dir("base") / "model.pt", model.state_dict())
    exp.register_model("base-model", "ft", architecture="cnn:tiny", num_classes=2, model_options={},
                       checkpoint=str(ckpt.relative_to(exp.root)))

    new_id = dfr_registered_model(exp, "base-model", spec, "source_val", tmp_path / "cache", device="cpu",
                                  C_grid=(1.0, 0.1), log=lambda _: None)
    models = exp.models()
    row = models.filter(models["model"] == new_id).row(0, named=True)
    info = json.loads(row["info"])
    assert row["group"] == "ft+dfr" and info["dfr_of"] == "base-model" and info["dfr_split"] == "source_val"
    assert info["dfr_C"] in (1.0, 0.1) and 0 <= info["dfr_worst_group_accuracy"] <= 1
    refit = load_torch(exp.root / info["checkpoint"])
    original = model.state_dict()
    assert all(torch.equal(refit[k], original[k]) for k in original if k.startswith("backbone."))
    assert not torch.equal(refit["head.weight"], original["head.weight"])
    # Cached: a second call returns the same model without refitting.
    assert dfr_registered_model(exp, "base-model", spec, "source_val", tmp_path / "cache", device="cpu",
                                C_grid=(1.0, 0.1), log=lambda m: (_ for _ in ()).throw(AssertionError(m))) == new_id
