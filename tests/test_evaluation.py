"""Prediction into the store: every registered model of a batch gets its own logits, through one pooled loader."""
from __future__ import annotations

import numpy as np
import torch

from askshift.lib.data.loaders import LoaderConfig, LoaderPool, split_loader
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
from askshift.lib.models.evaluation import predict_to_store
from askshift.lib.models.families import build_model
from askshift.lib.store import Store, atomic_save_torch

N, SIZE, CLASSES = 30, 8, 3


def _spec(tmp_path) -> ExperimentSpec:
    rng = np.random.default_rng(1)
    path = tmp_path / "tiny.npz"
    np.savez(path, train_images=rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8),
             train_labels=np.arange(N) % CLASSES, val_images=rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8),
             val_labels=rng.integers(0, CLASSES, N))
    return ExperimentSpec(name="tiny", reference=DistributionSpec(dataset="npz", root=str(path)),
                          targets={"tint": DistributionSpec(dataset="npz", root=str(path), shift="tint")})


def test_predict_to_store_writes_each_models_own_logits_and_reuses_the_compiled_loader(tmp_path):
    torch.set_num_threads(1)
    spec, cache = _spec(tmp_path), tmp_path / "cache"
    exp = Store(tmp_path / "store").experiment("tiny")
    models = {}
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        net = build_model("cnn:tiny", CLASSES).eval()
        checkpoint = exp.root / "ckpt" / f"m{seed}.pt"
        atomic_save_torch(checkpoint, net.state_dict())
        exp.register_model(f"m{seed}", "baseline", architecture="cnn:tiny", num_classes=CLASSES,
                           checkpoint=str(checkpoint.relative_to(exp.root)))
        models[f"m{seed}"] = net

    pool = LoaderPool()
    predict_to_store(exp, list(models), "source_val", spec, cache, device="cpu", batch_size=16, pool=pool)
    assert pool.stats.built == 1 and len(pool) == 1  # one loader served the three models, then went back
    with split_loader(spec, "source_val", cache, LoaderConfig(batch_size=64, num_workers=1), train=False,
                      pool=pool) as loader:
        images, labels, indices = next(iter(loader))
    for model_id, net in models.items():
        stored = exp.read_predictions(model_id, "source_val")
        assert stored["index"].to_list() == indices.tolist() and stored["label"].to_list() == labels.tolist()
        with torch.no_grad():
            expected = net(images).numpy()
        np.testing.assert_allclose(exp.logits(model_id, "source_val"), expected, rtol=1e-4, atol=1e-5)
    assert len({exp.logits(m, "source_val").tobytes() for m in models}) == len(models)

    # The shifted split reads the same file with the same pipeline: the compiled loader is reused, not rebuilt.
    built = pool.stats.built
    predict_to_store(exp, list(models), "tint_val", spec, cache, device="cpu", batch_size=16, pool=pool)
    assert pool.stats.built == built
    assert all(exp.has_predictions(m, "tint_val") for m in models)
