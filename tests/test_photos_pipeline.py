"""Photos of mixed sizes: each model's own transform, FFCV crop pipelines, storage parity, and the paper's recipe values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from photo_fixtures import convert_folder, make_imagefolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_imagefolder(root / "A", classes=3, per_class=(6, 3), seed=5)
    convert_folder(root / "A", root / "A_png", "png")
    return root


def test_model_transforms_come_from_timm_pretrained_cfg_open_clip_preprocess_and_a_cpu_default():
    from askshift.lib.models.inputs import model_transform

    resnet = model_transform("timm:resnet18")
    assert (resnet.resolution, resnet.crop_pct, resnet.interpolation) == (224, 0.95, "bicubic")
    augreg = model_transform("timm:vit_base_patch32_224.augreg_in21k")
    assert (augreg.resolution, augreg.crop_pct, augreg.mean) == (224, 0.9, (0.5, 0.5, 0.5))
    clip = model_transform("clip:ViT-B-32:openai")
    assert clip.resolution == 224 and clip.crop_pct == 1.0 and clip.interpolation == "bicubic"
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert model_transform("cnn:small").resolution == 64
    assert model_transform("timm:resnet18", resolution=96).resolution == 96


def test_photo_datasets_get_crops_at_the_model_resolution_and_arrays_stay_as_stored():
    from askshift.lib.models.inputs import model_decoding

    train = model_decoding("timm:resnet18", "imagefolder", train=True)
    assert (train.decoder, train.resolution, train.flip) == ("imagenet_random_crop", 224, True)
    evaluation = model_decoding("timm:resnet18", "imagefolder", train=False)
    assert (evaluation.decoder, evaluation.resolution, evaluation.center_crop_ratio, evaluation.flip) == \
        ("center_crop", 224, 0.95, False)
    digits = model_decoding("cnn:small", "digits", train=True)
    assert (digits.decoder, digits.resolution, digits.flip) == ("simple", None, False)


def test_mixed_size_jpegs_decode_through_ffcvs_own_crop_decoders(photos, tmp_path):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder

    from askshift.lib.data.loaders import SplitLoader, _image_pipeline, split_beton, split_info, stored_shape
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.inputs import loader_config

    spec = get_spec("out_of_support", dataset="imagefolder", root=str(photos / "A"))
    _, beton = split_beton(spec, "source_train", tmp_path)
    assert stored_shape(beton) is None  # the sizes really differ
    train_cfg = loader_config("imagefolder", "cnn:small", train=True, batch_size=8)
    eval_cfg = loader_config("imagefolder", "cnn:small", train=False, batch_size=8)
    assert isinstance(_image_pipeline(train_cfg, True, None)[0], RandomResizedCropRGBImageDecoder)
    assert isinstance(_image_pipeline(eval_cfg, False, None)[0], CenterCropRGBImageDecoder)
    with SplitLoader(spec, "source_train", tmp_path, train_cfg, train=True) as loader:
        x, y, _ = next(iter(loader))
    assert x.shape[1:] == (3, 64, 64) and x.min() >= 0 and x.max() <= 1
    passes = []
    for _ in range(2):
        with SplitLoader(spec, "source_val", tmp_path, eval_cfg, train=False) as loader:
            passes.append(torch.cat([b[0] for b in loader]))
    assert torch.equal(passes[0], passes[1])  # evaluation crops are deterministic
    assert passes[0].shape[0] == split_info(spec, "source_val", tmp_path).num_examples


def test_uint8_batches_are_the_stored_bytes_and_become_the_float_batch_on_the_device(photos, tmp_path):
    from askshift.lib.data.loaders import SplitLoader
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.inputs import loader_config
    from askshift.lib.models.training import place_images

    spec = get_spec("out_of_support", dataset="imagefolder", root=str(photos / "A"))
    batches = {}
    for dtype in ("float32", "uint8"):
        config = loader_config("imagefolder", "cnn:small", train=False, batch_size=8).model_copy(update={"dtype": dtype})
        with SplitLoader(spec, "source_val", tmp_path, config, train=False) as loader:
            batches[dtype] = torch.cat([b[0] for b in loader])
    assert batches["uint8"].dtype == torch.uint8 and batches["float32"].dtype == torch.float32
    assert batches["uint8"].is_contiguous(memory_format=torch.channels_last)  # FFCV's NHWC buffer, not copied to NCHW
    placed = place_images(batches["uint8"], torch.device("cpu"))
    assert placed.dtype == torch.float32 and torch.equal(placed, batches["float32"])


def test_the_in_place_flip_of_a_channels_last_uint8_batch_matches_torchs_flip():
    from askshift.lib.data.loaders import flip_in_place

    images = torch.randint(0, 256, (33, 3, 17, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    indices = torch.arange(100, 133)
    fast = flip_in_place(images.contiguous(memory_format=torch.channels_last), indices, seed=3, epoch=2)
    slow = flip_in_place(images.clone(), indices, seed=3, epoch=2)  # NCHW: torch's gather-flip-scatter
    assert torch.equal(fast, slow)
    flipped = (fast != images).flatten(1).any(1)
    assert 5 < int(flipped.sum()) < 28  # about half the images, each mirrored whole
    assert torch.equal(fast[flipped], images[flipped].flip(-1))


def test_both_sides_of_the_domain_classifier_are_stored_and_decoded_alike(photos, tmp_path):
    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
    from askshift.lib.support.classifier import DomainSetup, domain_decoding, parity_spec

    spec = ExperimentSpec(name="parity", reference=DistributionSpec(dataset="imagefolder", root=str(photos / "A")),
                          targets={"shifted": DistributionSpec(dataset="digits")})
    same = parity_spec(spec, "source_train", "shifted_val")
    ref, shifted = same.reference, same.targets["shifted"]
    assert (ref.write_mode, ref.max_resolution) == (shifted.write_mode, shifted.max_resolution) == ("jpg", 256)
    decoding = domain_decoding(DomainSetup(spec=same, shifted_split="shifted_val", cache_dir=str(tmp_path)))
    assert (decoding.decoder, decoding.resolution) == ("center_crop", 64)
    # two photo folders already stored alike: the spec is left as it is (no second copy of the .beton)
    photos_only = spec.model_copy(update={"targets": {"shifted": DistributionSpec(dataset="imagefolder",
                                                                                  root=str(photos / "A_png"))}})
    assert parity_spec(photos_only, "source_train", "shifted_val") is photos_only


def test_the_papers_recipe_values():
    from askshift.flows.baseline import BaselineConfig
    from askshift.lib.models.finetune import plan_run
    from askshift.lib.models.strategies import PRESETS, FinetuneHparams
    from askshift.lib.support.ratios import default_classifier

    assert FinetuneHparams().grad_clip == 1.0
    for preset in PRESETS.names():
        assert PRESETS.get(preset).hparams.grad_clip == 1.0
    gpu = default_classifier("cuda")
    assert (gpu.linear_probe_epochs, gpu.linear_probe_warmup_epochs, gpu.flip) == (8, 1.0, True)
    doubled = BaselineConfig(epochs=6, warmup_epochs=0.5).train_config(0, epochs_factor=2.0)
    assert (doubled.epochs, doubled.warmup_epochs) == (12, 1.0)
    zs = plan_run("zs-ft", "clip:ViT-B-32:openai", FinetuneHparams(), 1e-5, 0, dataset="imagefolder",
                  shift="out_of_support", class_names=["a", "b"])
    ft = plan_run("ft", "clip:ViT-B-32:openai", FinetuneHparams(), 1e-5, 0, dataset="imagefolder", shift="out_of_support")
    assert zs.model_options == {"embedding": "projected"} and ft.model_options == {}


def test_model_families_carry_their_metadata_and_unknown_families_fail():
    from askshift.lib.models.families import MODEL_FAMILIES, model_family
    from askshift.lib.registry import UnknownNameError

    for name in MODEL_FAMILIES.names():
        family = MODEL_FAMILIES.get(name)
        assert family.recipe in ("paper", "miniature") and family.strategies and family.weights
    assert model_family("clip:ViT-B-32").text_tower and not model_family("timm:resnet18").text_tower
    assert model_family("cnn:small").local_pretraining
    with pytest.raises(UnknownNameError, match="unknown model family 'resnet'"):
        model_family("resnet:18")


def test_labels_of_mixed_size_photos_survive_the_crop_pipeline(photos, tmp_path):
    """Every example comes out once in evaluation, with its own label (crops never reorder examples)."""
    from askshift.lib.data.loaders import SplitLoader, split_info
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.inputs import loader_config

    spec = get_spec("out_of_support", dataset="imagefolder", root=str(photos / "A"))
    info = split_info(spec, "source_val", tmp_path)
    with SplitLoader(spec, "source_val", tmp_path, loader_config("imagefolder", "timm:resnet18", train=False,
                                                                  batch_size=4), train=False) as loader:
        labels, indices = zip(*[(b[1], b[2]) for b in loader])
    labels, indices = torch.cat(labels).numpy(), torch.cat(indices).numpy()
    assert np.array_equal(np.sort(indices), info.indices)
    assert np.array_equal(labels, np.asarray(info.labels)[indices])


def test_an_imagefolder_with_one_class_or_an_empty_class_folder_is_one_clear_line(tmp_path):
    from photo_fixtures import add_empty_class

    from askshift.lib.data.datasets import DatasetLayoutError, load_dataset

    one = make_imagefolder(tmp_path / "one", classes=1, per_class=(2, 1), seed=0)
    with pytest.raises(DatasetLayoutError, match="at least two class folders"):
        load_dataset("imagefolder", "train", root=one)
    root = make_imagefolder(tmp_path / "two", classes=2, per_class=(2, 1), seed=0)
    add_empty_class(root, "train", "zz_empty")
    with pytest.raises(DatasetLayoutError, match="zz_empty has no images"):
        load_dataset("imagefolder", "train", root=root)


def test_photo_training_resumed_from_its_last_epoch_checkpoint_ends_with_identical_weights(photos, tmp_path):
    """FFCV's random-resized crops are seeded per batch from the example order, so a resumed run replays them."""
    from askshift.lib.models.training import RunConfig, TrainConfig, train_run
    from askshift.lib.store import Store, load_torch

    run = RunConfig(dataset="imagefolder", shift="out_of_support", root=str(photos / "A"), architecture="cnn:tiny",
                    train=TrainConfig(epochs=3, lr=3e-3, batch_size=8, warmup_epochs=0.5, seed=4), resolution=32)
    quiet = lambda _m: None  # noqa: E731
    straight = Store(tmp_path / "a").experiment("e")
    train_run(straight, run, tmp_path / "cache", device="cpu", log=quiet)
    resumed = Store(tmp_path / "b").experiment("e")
    train_run(resumed, run, tmp_path / "cache", device="cpu", log=quiet)
    # as if killed during epoch 3: its checkpoint, the kept model and the done marker were never written
    ckpt = resumed.checkpoint_dir(run.run_id())
    for path in [ckpt / "epoch_3.pt", ckpt / "kept" / "epoch_3.pt", resumed.run_dir(run.run_id()) / "done"]:
        path.unlink(missing_ok=True)
    said: list[str] = []
    train_run(resumed, run, tmp_path / "cache", device="cpu", log=said.append)
    assert any(line.startswith("resuming from epoch 2/3") for line in said), said
    a = load_torch(straight.checkpoint_dir(run.run_id()) / "kept" / "epoch_3.pt")
    b = load_torch(ckpt / "kept" / "epoch_3.pt")
    a, b = a.get("model", a), b.get("model", b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
