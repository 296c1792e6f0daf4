"""Model families: cnn:, timm:, clip: build, train a step, and load weights from local files like a user would."""
from __future__ import annotations

import json
import os

import pytest
import torch

from askshift.lib.models.families import MODEL_FAMILIES, PretrainedUnavailable, build_model
from askshift.lib.registry import UnknownNameError
from askshift.lib.store import atomic_save_torch

TINY_CLIP = "askshift-test-tiny-clip"
TINY_VIT = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """A tiny open_clip architecture registered by name (real code path, ~0.2 s to build)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip_configs")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return TINY_CLIP


def _images(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _train_step(model):
    model.train()
    x, y = _images(), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert model(x).shape == (4, 3)


def test_every_family_is_registered():
    assert {"cnn", "timm", "clip"} <= set(MODEL_FAMILIES.names())


def test_cnn_trains_and_loads_backbone_from_a_pretrain_checkpoint(tmp_path):
    source = build_model("cnn:tiny", 36)
    _train_step(build_model("cnn:tiny", 3))
    path = atomic_save_torch(tmp_path / "pre.pt", {"model": source.state_dict(), "meta": {"note": "test"}})
    loaded = build_model("cnn:tiny", 3, pretrained=str(path))
    source.eval(), loaded.eval()
    x = _images()
    assert torch.equal(source.features(x), loaded.features(x))
    assert loaded.head.out_features == 3  # the pre-training head is dropped


def test_timm_vit_loads_a_local_timm_weight_file_through_pretrained_cfg_overlay(tmp_path):
    import timm

    original = timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=32, **TINY_VIT)
    torch.save(original.state_dict(), tmp_path / "vit.pth")
    model = build_model("timm:vit_tiny_patch16_224.augreg_in21k", 3, pretrained=str(tmp_path / "vit.pth"),
                        img_size=32, timm_kwargs=TINY_VIT)
    assert model.input_size == 32
    cfg_mean = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False, num_classes=0,
                                 img_size=32, **TINY_VIT).pretrained_cfg["mean"]
    assert torch.allclose(model.mean.flatten(), torch.tensor(cfg_mean))
    original.eval(), model.eval()
    x = _images()
    xn = (x - model.mean) / model.std
    expected = original.forward_head(original.forward_features(xn), pre_logits=True)
    assert torch.allclose(model.features(x), expected, atol=1e-6)
    _train_step(model)


def test_timm_loads_an_askshift_checkpoint_through_the_state_dict_path(tmp_path):
    source = build_model("timm:resnet10t", 36, timm_kwargs={})
    path = atomic_save_torch(tmp_path / "pre.pt", {"model": source.state_dict()})
    loaded = build_model("timm:resnet10t", 3, pretrained=str(path))
    from timm.data import IMAGENET_DEFAULT_MEAN

    assert torch.allclose(loaded.mean.flatten(), torch.tensor(IMAGENET_DEFAULT_MEAN))  # from its pretrained config
    source.eval(), loaded.eval()
    x = _images()
    assert torch.equal(source.features(x), loaded.features(x))


def test_clip_loads_a_local_open_clip_checkpoint(tiny_clip_config, tmp_path):
    import open_clip

    clip = open_clip.create_model(tiny_clip_config)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    projected = build_model(f"clip:{tiny_clip_config}:{tmp_path / 'clip.pt'}", 3, embedding="projected")
    clip.eval(), projected.eval()
    x = _images()
    expected = clip.encode_image((x - projected.mean) / projected.std, normalize=True)
    assert torch.allclose(projected.features(x), expected, atol=1e-6)
    _train_step(projected)


def test_clip_ft_heads_sit_on_the_image_towers_pre_projection_features(tiny_clip_config, tmp_path):
    import open_clip

    clip = open_clip.create_model(tiny_clip_config)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = build_model(f"clip:{tiny_clip_config}:{tmp_path / 'clip.pt'}", 3)  # FT / LP-FT: the default
    clip.eval(), model.eval()
    x = _images()
    xn = (x - model.mean) / model.std
    with torch.no_grad():
        embedded = clip.encode_image(xn, normalize=True)
        projection = clip.visual.proj.detach().clone()
        features = model.features(x)
    assert model.feature_dim == projection.shape[0] != projection.shape[1]
    # the pre-projection feature times CLIP's projection is CLIP's own embedding: the head sits one layer earlier
    assert torch.allclose(torch.nn.functional.normalize(features @ projection, dim=-1), embedded, atol=1e-5)
    assert "backbone.visual.proj" not in model.state_dict()
    _train_step(model)


def test_zero_shot_head_is_normalised_text_embeddings_times_logit_scale(tiny_clip_config, tmp_path):
    import open_clip

    clip = open_clip.create_model(tiny_clip_config)
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)  # a scale other than the default, so a missing factor is caught
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    names, templates = ["cat", "dog", "boat"], ["a photo of a {}.", "art of the {}."]
    model = build_model(f"clip:{tiny_clip_config}", 3, pretrained=str(tmp_path / "clip.pt"),
                        class_names=names, templates=templates)
    tokenizer = open_clip.get_tokenizer(tiny_clip_config)
    clip.eval()
    with torch.no_grad():
        rows = []
        for name in names:
            emb = clip.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True).mean(0)
            rows.append(emb / emb.norm())
        expected = torch.stack(rows) * clip.logit_scale.exp()
    assert torch.allclose(model.head.weight, expected, atol=1e-5)
    assert torch.count_nonzero(model.head.bias) == 0
    # The text tower is gone: nothing of it is trained or saved.
    keys = list(model.state_dict())
    assert all(k.startswith(("backbone.visual.", "head.")) for k in keys), keys
    assert not hasattr(model, "_clip_text")


@pytest.mark.parametrize("name,options", [("cnn:small", {}), ("timm:vit_tiny_patch16_224", {"img_size": 32, "timm_kwargs": TINY_VIT})])
def test_a_trained_classifier_checkpoint_reloads_with_identical_outputs(tmp_path, name, options):
    model = build_model(name, 3, **options)
    _train_step(model)
    atomic_save_torch(tmp_path / "ckpt.pt", model.state_dict())
    from askshift.lib.store import load_torch

    again = build_model(name, 3, **options)
    again.load_state_dict(load_torch(tmp_path / "ckpt.pt"))
    model.eval(), again.eval()
    x = _images(seed=1)
    assert torch.equal(model(x), again(x))


def test_frozen_backbone_stays_in_eval_mode_so_batchnorm_statistics_do_not_move():
    model = build_model("cnn:tiny", 3)
    model.freeze_backbone()
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(_images())
    assert not model.backbone.training and model.head.training
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("name,expected", [
    ("clp:ViT-B-32", "'clip'"), ("cnn:smal", "'small'"), ("timm:resnet19", "'resnet18'"), ("clip:ViT-B-33", "'ViT-B-32'"),
])
def test_unknown_model_names_list_close_matches(name, expected):
    with pytest.raises((UnknownNameError, ValueError), match=expected):
        build_model(name, 3)


def test_hub_weights_fail_fast_offline_asking_for_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable, match="local"):
        build_model("timm:vit_tiny_patch16_224", 3, pretrained="hub", img_size=32, timm_kwargs=TINY_VIT)
    with pytest.raises(PretrainedUnavailable, match="local open_clip checkpoint"):
        build_model("clip:ViT-B-32:openai", 3)
    with pytest.raises(PretrainedUnavailable, match="askshift pretrain"):
        build_model("cnn:small", 3, pretrained="hub")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
