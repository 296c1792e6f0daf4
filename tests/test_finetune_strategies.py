"""Fine-tuning strategies, LR selection, DFR and input validation (askshift.lib.models: strategies, finetune, dfr), on tiny in-memory data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from askshift.lib.models.dfr import apply_dfr, extract_features, fit_dfr, group_balanced_weights
from askshift.lib.models.families import Classifier, build_model
from askshift.lib.models.finetune import (
    FinetuneInputError,
    build_initial_model,
    final_checkpoint,
    plan_run,
    select_best_lr,
    validate_finetune,
)
from askshift.lib.models.strategies import PRESETS, STRATEGIES, FinetuneHparams
from askshift.lib.models.training import TrainConfig, train_model
from askshift.lib.store import ExperimentStore, atomic_save_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Batches(list):
    """An in-memory 'loader': a list of (images, labels, indices) batches."""


def toy_images(n=96, seed=0, classes=3):
    """Class = which third of the image is bright: learnable by a tiny CNN in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.2 * torch.rand(n, 3, 32, 32, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, :, :, c * 10:(c + 1) * 10] += 0.7
    return x.clamp(0, 1), y


def loader_of(x, y, batch=32):
    return lambda epoch: Batches((x[i:i + batch], y[i:i + batch], torch.arange(i, min(i + batch, len(y))))
                                 for i in range(0, len(y), batch))


@pytest.fixture()
def pretrained_file(tmp_path):
    torch.manual_seed(1)
    return str(atomic_save_torch(tmp_path / "pre.pt", {"model": build_model("cnn:tiny", 36).state_dict()}))


def test_registry_has_the_papers_strategies_and_presets():
    assert {"ft", "lp", "lp-ft", "zs-ft", "scratch"} <= set(STRATEGIES.names())
    assert STRATEGIES.get("scratch").group == "scratch-same-arch"
    clip, augreg = PRESETS.get("openai_clip"), PRESETS.get("augreg_in21k")
    assert clip.model == "clip:ViT-B-32:openai" and set(clip.strategies) == {"ft", "lp-ft", "zs-ft"}
    assert augreg.model == "timm:vit_base_patch32_224.augreg_in21k" and set(augreg.strategies) == {"ft", "lp-ft"}
    hp = clip.hparams
    assert (hp.epochs, hp.warmup_epochs, hp.batch_size, hp.weight_decay, hp.copies) == (8, 1.0, 512, 0.1, 4)
    assert hp.lr_grid == (3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
    assert (hp.lp_epochs, hp.lp_lr, hp.lp_weight_decay) == (4, 1e-3, 0.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(models=["cnn:small"], strategies=["ft"], preset="openai_clip"), "preset 'openai_clip' is for clip: models"),
    (dict(models=["clip:ViT-B-32"], strategies=["zs-ft"], class_names=[]), "needs class names"),
    (dict(models=["cnn:small"], strategies=["zs-ft"], class_names=["a", "b"]), "needs a CLIP model"),
])
def test_bad_inputs_fail_before_training_with_one_line(kwargs, message):
    with pytest.raises(FinetuneInputError, match=message) as info:
        validate_finetune(**kwargs)
    assert "\n" not in str(info.value)


def test_lr_grid_with_a_non_positive_value_and_zero_copies_are_refused():
    with pytest.raises(ValidationError, match="learning rates must be positive"):
        FinetuneHparams(lr_grid=(1e-3, 0.0))
    with pytest.raises(ValidationError, match="learning rates must be positive"):
        FinetuneHparams(lr_grid=(-1e-4,))
    with pytest.raises(ValidationError, match="copies must be at least 1"):
        FinetuneHparams(copies=0)


def test_linear_probe_leaves_every_backbone_tensor_unchanged(tmp_path, pretrained_file):
    x, y = toy_images()
    model = build_model("cnn:tiny", 3, pretrained=pretrained_file)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneHparams(lp_epochs=2, batch_size=32).probe_config(seed=0)
    assert config.freeze_backbone and config.weight_decay == 0
    train_model(model, loader_of(x, y), config, tmp_path / "lp", log=lambda _: None)
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BatchNorm statistics
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_lp_ft_starts_fine_tuning_from_the_lp_stage_head_and_features(tmp_path, pretrained_file):
    exp = ExperimentStore(tmp_path / "exp")
    hp = FinetuneHparams(epochs=1, lp_epochs=1, batch_size=32, lr_grid=(1e-3,), copies=1)
    run = plan_run("lp-ft", "cnn:tiny", hp, 1e-3, 0, dataset="digits", shift="out_of_support", pretrained=pretrained_file)
    assert run.init is not None and run.init.train.freeze_backbone and not run.train.freeze_backbone
    assert run.init.pretrained == pretrained_file and run.init.train.lr == hp.lp_lr
    # Train the LP stage where the run expects it, then build the FT stage's starting model.
    x, y = toy_images()
    probe = build_initial_model(run.init, 3, exp)
    train_model(probe, loader_of(x, y), run.init.train, exp.checkpoint_dir(run.init.run_id()), log=lambda _: None)
    assert final_checkpoint(exp, run.init).exists()
    start = build_initial_model(run, 3, exp)
    for key, value in probe.state_dict().items():
        assert torch.equal(start.state_dict()[key], value), key
    fresh_head = build_initial_model(plan_run("ft", "cnn:tiny", hp, 1e-3, 0, dataset="digits", shift="out_of_support",
                                              pretrained=pretrained_file), 3, exp)
    assert not torch.equal(fresh_head.head.weight, start.head.weight)


def test_lr_probe_stage_is_shared_by_every_lr_of_the_lp_ft_sweep(pretrained_file):
    hp = FinetuneHparams()
    runs = [plan_run("lp-ft", "cnn:tiny", hp, lr, 0, dataset="digits", shift="tint_p=0.5", pretrained=pretrained_file)
            for lr in hp.lr_grid]
    assert len({r.init.run_id() for r in runs}) == 1
    assert len({r.run_id() for r in runs}) == len(hp.lr_grid)


def test_scratch_control_uses_the_same_architecture_without_pretrained_weights(pretrained_file):
    run = plan_run("scratch", "cnn:tiny", FinetuneHparams(), 1e-3, 0, dataset="digits", shift="tint_p=0.5",
                   pretrained=pretrained_file)
    assert run.pretrained is None and run.model == "cnn:tiny" and run.group == "scratch-same-arch"


def test_clip_weight_tags_move_out_of_the_architecture_name():
    run = plan_run("ft", "clip:ViT-B-32:openai", FinetuneHparams(), 1e-5, 0, dataset="digits", shift="tint_p=0.5")
    assert run.model == "clip:ViT-B-32" and run.pretrained == "openai"


def test_selection_picks_the_best_reference_accuracy():
    assert select_best_lr([(1e-3, 0.50), (1e-4, 0.91), (1e-5, 0.90), (1e-6, float("nan"))]) == 1e-4
    assert select_best_lr([(1e-3, 0.8), (1e-4, 0.8)]) == 1e-3  # ties: the larger rate
    with pytest.raises(ValueError, match="widen the LR grid"):
        select_best_lr([(1e-3, float("nan"))])


def test_selection_on_a_constructed_training_case_prefers_the_rate_that_learns(tmp_path):
    x, y = toy_images(96, seed=0)
    xv, yv = toy_images(60, seed=1)
    results = []
    for lr in (1e-7, 3e-3):
        torch.manual_seed(0)
        model = build_model("cnn:tiny", 3)
        train_model(model, loader_of(x, y), TrainConfig(epochs=3, lr=lr, batch_size=32), tmp_path / f"lr{lr}", log=lambda _: None)
        model.eval()
        with torch.no_grad():
            results.append((lr, float((model(xv).argmax(1) == yv).float().mean())))
    assert select_best_lr(results) == 3e-3, results


def spurious_features(n_major=600, n_minor=30, seed=0):
    """2-D features: dim 0 = core signal (noisy), dim 1 = a spurious attribute that matches the label in the
    majority groups.  Groups = 2 * label + attribute."""
    rng = np.random.default_rng(seed)
    parts = []
    for label in (0, 1):
        for attr in (0, 1):
            n = n_major if attr == label else n_minor
            core = (2 * label - 1) * 1.0 + rng.normal(0, 0.8, n)
            spur = (2 * attr - 1) * 3.0 + rng.normal(0, 0.3, n)
            parts.append((np.stack([core, spur], 1), np.full(n, label), np.full(n, 2 * label + attr)))
    x, y, g = (np.concatenate(p) for p in zip(*parts))
    return x, y, g


def worst_group(pred, y, g):
    return min((pred[g == k] == y[g == k]).mean() for k in np.unique(g))


def test_group_balanced_weights_give_every_group_the_same_total():
    g = np.array([0, 0, 0, 1, 2, 2, -1])
    w = group_balanced_weights(g)
    totals = [w[g == k].sum() for k in (0, 1, 2)]
    assert np.allclose(totals, totals[0]) and w[-1] == 0


def test_dfr_balances_group_accuracy_on_a_spurious_dataset():
    from sklearn.linear_model import LogisticRegression

    x, y, g = spurious_features(seed=0)
    xt, yt, gt = spurious_features(n_major=300, n_minor=300, seed=1)  # a balanced test set
    plain = LogisticRegression(max_iter=2000).fit(x, y)
    result = fit_dfr(x, y, g, num_classes=2, C_grid=(1.0, 0.1))
    dfr_pred = (xt @ result.weight.T + result.bias).argmax(1)
    plain_worst, dfr_worst = worst_group(plain.predict(xt), yt, gt), worst_group(dfr_pred, yt, gt)
    assert plain_worst < 0.6  # the shortcut: minority groups misclassified
    assert dfr_worst > 0.75 and dfr_worst > plain_worst + 0.3, (plain_worst, dfr_worst)


def test_dfr_head_written_into_a_classifier_predicts_like_the_fitted_model():
    x, y, g = spurious_features(seed=2)
    images = torch.tensor((x[:, :, None, None] + 4) / 8, dtype=torch.float32)  # (n, 2, 1, 1) in [0, 1]
    backbone = torch.nn.Flatten()
    model = Classifier(backbone, 2, 2, mean=(0.5, 0.5), std=(0.5, 0.5), input_size=1)
    loader = [(images[i:i + 64], torch.tensor(y[i:i + 64])) for i in range(0, len(y), 64)]
    feats, labels, _ = extract_features(model, loader)
    result = fit_dfr(feats, labels, g, num_classes=2, C_grid=(1.0,))
    apply_dfr(model, result)
    with torch.no_grad():
        pred = model(images).argmax(1).numpy()
    assert np.array_equal(pred, (feats @ result.weight.T + result.bias).argmax(1))
    assert worst_group(pred, y, g) > 0.7 and math.isfinite(result.worst_group_accuracy)


def test_zs_ft_starts_from_the_clip_zero_shot_head_of_the_dataset_class_names(tmp_path):
    import json as _json

    import open_clip

    name = "askshift-test-zsft-clip"
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / f"{name}.json").write_text(_json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    clip = open_clip.create_model(name)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    names = [str(i) for i in range(10)]
    run = plan_run("zs-ft", f"clip:{name}", FinetuneHparams(), 1e-5, 0, dataset="digits", shift="out_of_support",
                   pretrained=str(tmp_path / "clip.pt"), class_names=names)
    assert run.head == "zero_shot" and run.class_names == tuple(names) and run.model == f"clip:{name}"
    model = build_initial_model(run, 10)
    expected = build_model(f"clip:{name}", 10, pretrained=str(tmp_path / "clip.pt"), class_names=names)
    assert torch.equal(model.head.weight, expected.head.weight)
    ft = build_initial_model(plan_run("ft", f"clip:{name}", FinetuneHparams(), 1e-5, 0, dataset="digits",
                                      shift="out_of_support", pretrained=str(tmp_path / "clip.pt")), 10)
    assert not torch.equal(ft.head.weight, model.head.weight)  # FT gets a new head


def test_weights_that_need_an_unreachable_hub_are_refused_before_training(monkeypatch, pretrained_file):
    from askshift.lib.models.families import PretrainedUnavailable
    from askshift.lib.models.finetune import check_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable, match="--pretrained PATH"):
        check_weights("timm:vit_base_patch32_224.augreg_in21k", "hub")
    with pytest.raises(PretrainedUnavailable, match="HF_HUB_OFFLINE=1"):
        check_weights("clip:ViT-B-32:openai", None)
    with pytest.raises(FileNotFoundError):
        check_weights("cnn:small", "/no/such/pre.pt")
    check_weights("cnn:small", pretrained_file)
    check_weights("clip:ViT-B-32:openai", pretrained_file)  # a local file replaces the tag
