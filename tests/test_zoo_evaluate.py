"""zoo_evaluate on photos: timm's own eval transform per model, the ImageNet-R class-subset convention on both sets,
and `askshift run zoo-evaluate` end to end (weights in local files, a small mixed-size JPEG ImageFolder)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from photo_fixtures import invert_folder, make_imagefolder

from askshift.lib.data.class_subset import (
    MASKED_LOGIT,
    among_classes,
    covered_classes,
    restrict_reference,
    subset_accuracy,
)

BASELINES = ("resnet10t.c3_in1k", "test_resnet.r160_in1k", "test_efficientnet.r160_in1k")
PRETRAINED = ("test_vit.r160_in1k",)  # a fixed-input-size model: resized to its 160 px inside the wrapper


# --- the class-subset convention (ImageNet-R) ------------------------------------------------------------------

def fake_r_problem():
    """1000-class logits; the shifted set covers every fifth class (200); reference examples of any class."""
    rng = np.random.default_rng(0)
    mask = np.zeros(1000, bool)
    mask[::5] = True  # 200 classes
    labels = rng.integers(0, 1000, 400)
    logits = rng.normal(0, 1, (400, 1000)).astype(np.float32)
    logits[np.arange(400), labels] += 3.0  # mostly right ...
    outside = np.flatnonzero(~mask)
    logits[np.arange(0, 400, 4), outside[np.arange(0, 400, 4) % outside.size]] += 10.0  # ... but a quarter lured outside
    return mask, labels, logits


def test_class_subset_masks_predictions_to_the_shifted_classes_and_keeps_reference_examples_of_those_classes():
    mask, labels, logits = fake_r_problem()
    classes = covered_classes(mask)
    assert len(classes) == 200 and covered_classes(np.ones(1000, bool)) is None

    masked, keep = among_classes(logits, labels, classes)
    assert np.array_equal(keep, mask[labels])  # reference: only examples of R's 200 classes count
    assert mask[masked.argmax(1)].all()  # every prediction is one of R's classes
    assert (masked[:, ~mask] == MASKED_LOGIT).all() and np.array_equal(masked[:, mask], logits[:, mask])

    # The accuracy of the convention, by hand: 200-way argmax on the examples of the 200 classes.
    own = labels[mask[labels]]
    sub = logits[mask[labels]][:, mask]
    expected = float((np.flatnonzero(mask)[sub.argmax(1)] == own).mean())
    assert subset_accuracy(logits, labels, classes) == pytest.approx(expected)
    # Masking alone (1000-way reference) or restricting alone would give other numbers.
    assert float((logits.argmax(1) == labels)[mask[labels]].mean()) < expected
    # A shifted set's examples all have R's classes: nothing is dropped, predictions are masked the same way.
    shifted_labels = np.flatnonzero(mask)[np.arange(50) % 200]
    _, keep_shifted = among_classes(logits[:50], shifted_labels, classes)
    assert keep_shifted.all()
    # No subset: nothing changes.
    same, all_kept = among_classes(logits, labels, None)
    assert same is logits or np.array_equal(same, logits)
    assert all_kept.all()


def test_published_r_and_a_references_follow_the_same_convention():
    from askshift.lib.data.class_subset import timm_reference_file
    from askshift.lib.robustness.zoo import ZOO_SHIFTS

    for name in ("r", "a"):
        assert ZOO_SHIFTS.get(name).reference_file == timm_reference_file(name, True) == f"results-imagenet-{name}-clean.csv"
    for name in ("v2", "sketch"):
        assert ZOO_SHIFTS.get(name).reference_file == timm_reference_file(name, False) == "results-imagenet.csv"


def test_restricting_the_reference_intersects_an_existing_restriction():
    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec

    spec = ExperimentSpec(name="x", reference=DistributionSpec(dataset="digits", classes=[1, 2, 3]),
                          targets={"t": DistributionSpec(dataset="digits")})
    assert restrict_reference(spec, (2, 3, 4)).reference.classes == [2, 3]
    assert restrict_reference(spec, None) is spec


def _wnid_tree(tmp: Path, dst: Path, names: list[str], per_class: int, seed: int) -> Path:
    """Photo-like JPEG folders renamed to ``names`` (ImageNet-V2 class indices or WordNet ids)."""
    made = make_imagefolder(tmp, classes=len(names), per_class=(per_class,), splits=("val",), seed=seed,
                            sizes=(48, 96))
    dst.mkdir(parents=True)
    for folder, name in zip(sorted((made / "val").iterdir(), key=lambda p: p.name), names):
        shutil.move(str(folder), dst / name)
    return dst


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """Untrained timm models saved as local weight files (never downloaded): 3-class heads, one 1000-class."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    for i, name in enumerate(BASELINES + PRETRAINED):
        torch.manual_seed(i)
        state = timm.create_model(name, pretrained=False, num_classes=3).state_dict()
        if i % 2:
            save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
        else:
            torch.save(state, folder / f"{name}.pth")
    for sub, classes in (("imagenet", 1000), ("two", 2)):
        (folder / sub).mkdir()
        torch.manual_seed(0)
        torch.save(timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=classes).state_dict(),
                   folder / sub / "test_resnet.r160_in1k.pth")
    return folder


def test_zoo_evaluate_on_a_200_class_style_set_restricts_and_masks_the_reference_through_the_same_function(
        prefect_api, timm_weights, tmp_path, monkeypatch):
    """An ImageNet-R-like set (2 of 1000 classes) against an ImageNet-V2-like reference (4 classes present)."""
    import askshift.lib.data.class_subset
    import askshift.lib.data.loaders
    from askshift.flows.split import SplitConfig
    from askshift.flows.zoo import ZooConfig, zoo_evaluate
    from askshift.lib.data.datasets import imagenet_wnids
    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec

    wnids = imagenet_wnids()
    reference = _wnid_tree(tmp_path / "a", tmp_path / "v2", ["1", "5", "7", "9"], 3, seed=0)
    shifted = _wnid_tree(tmp_path / "b", tmp_path / "r", [wnids[5], wnids[7]], 3, seed=1)
    spec = ExperimentSpec(name="r-check",
                          reference=DistributionSpec(dataset="imagenet-v2", root=str(reference), split="val",
                                                     train_split="val"),
                          targets={"r": DistributionSpec(dataset="imagenet-r", root=str(shifted))})
    calls = []
    real = askshift.lib.data.class_subset.among_classes

    def spy(logits, labels, classes):
        calls.append(None if classes is None else tuple(classes))
        return real(logits, labels, classes)

    monkeypatch.setattr(askshift.lib.data.class_subset, "among_classes", spy)
    loaders = []
    real_loader = askshift.lib.data.loaders.split_loader

    def loader_spy(spec, split, cache_dir, config, **kwargs):
        loaders.append((split, config))
        return real_loader(spec, split, cache_dir, config, **kwargs)

    monkeypatch.setattr(askshift.lib.data.loaders, "split_loader", loader_spy)
    split = SplitConfig(spec=spec, store=str(tmp_path / "store"))
    config = ZooConfig(split=split, baseline_models=("test_resnet.r160_in1k",), pretrained_models=(),
                       weights_dir=str(timm_weights / "imagenet"), resolution=32, batch_size=16, run_split=False)
    zoo_evaluate(config)
    assert calls == [(5, 7), (5, 7)]  # the reference and the shifted set, the same classes
    # Photos are read as timm's eval transform of the model says: centre crop with its crop_pct (0.95), at 32 px.
    assert sorted(split for split, _ in loaders) == ["r_val", "source_val"]
    for _, loader_config in loaders:
        assert (loader_config.decoder, loader_config.resolution) == ("center_crop", 32)
        assert loader_config.center_crop_ratio == pytest.approx(0.95) and not loader_config.flip
    exp = split.store.experiment("r-check")
    for name in ("source_val", "r_val"):
        predictions = exp.read_predictions("test_resnet.r160_in1k", name)
        assert set(predictions["label"].to_list()) == {5, 7} and predictions.height == 6  # 3 images of each class
        assert set(predictions["prediction"].to_list()) <= {5, 7}
        logits = np.stack(predictions["logits"].to_numpy())
        assert (np.delete(logits, [5, 7], axis=1) == np.float32(MASKED_LOGIT)).all()
    resolved = exp.read_config("zoo_config")  # the restriction is written beside the results
    assert resolved["split"]["spec"]["reference"]["classes"] == [5, 7] and resolved["resolution"] == 32


# --- timm's eval transform per model ---------------------------------------------------------------------------

def test_fixed_input_size_models_are_resized_and_convnets_read_the_loader_size():
    import timm
    import torch

    from askshift.lib.robustness.paper_zoo import NormalisedTimm

    seen = {}
    for name in ("test_resnet.r160_in1k", "test_vit.r160_in1k"):
        model = timm.create_model(name, pretrained=False, num_classes=3).eval()
        wrapped = NormalisedTimm(model)
        model.register_forward_pre_hook(lambda _m, args, _n=name: seen.__setitem__(_n, tuple(args[0].shape[-2:])))
        with torch.no_grad():
            wrapped(torch.rand(2, 3, 40, 40))
        assert torch.allclose(wrapped.mean.flatten(), torch.tensor(model.pretrained_cfg["mean"]))
    assert seen == {"test_resnet.r160_in1k": (40, 40), "test_vit.r160_in1k": (160, 160)}


# --- the command line --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory):
    """A 3-class mixed-size JPEG ImageFolder and its colour-inverted copy (an out-of-support shift)."""
    folder = tmp_path_factory.mktemp("photos")
    reference = make_imagefolder(folder / "reference", classes=3, per_class=(8, 4), seed=0)
    shifted = invert_folder(reference, folder / "inverted")
    return reference, shifted


def _models_file(path: Path) -> Path:
    lines = ["model,group", *(f"{m} baseline" for m in BASELINES), *(f"{m}, pretrained  # a ViT" for m in PRETRAINED)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli_args(tmp_path: Path, weights: Path, photos, *extra: str) -> list[str]:
    reference, shifted = photos
    return ["run", "zoo-evaluate", "--models", str(_models_file(tmp_path / "models.txt")), "--weights", str(weights),
            "--reference", "imagefolder", "--reference-root", str(reference), "--shifted", "imagefolder",
            "--shifted-root", str(shifted), "--store", str(tmp_path / "store"), "--num-classes", "3",
            "--resolution", "48", "--device", "cpu", *extra]


@pytest.mark.parametrize("changes, message", [
    ({"--models": "MISSING"}, "no such file"),
    ({"--weights": "EMPTY"}, "has no weight file for resnet10t.c3_in1k and 3 more"),
    ({"--reference-root": "/no/such/folder"}, "--reference-root /no/such/folder does not exist"),
    ({"--num-classes": "5"}, "holds a head of 3 classes but --num-classes is 5"),
    ({"--num-classes": None}, "holds a head of 3 classes, not 1000: pass --num-classes 3"),
    ({"--models": "ONE", "--weights": "TWO", "--num-classes": "2"}, "predicts 2 classes but the reference data set "
                                                                     "has 3: pass --num-classes 3"),
    ({"--models": "TYPO"}, "unknown timm architecture 'resnet10x'"),
    ({"--models": "BADGROUP"}, "line 1: expected `arch.tag group`"),
    ({"--models": "BADTAG"}, "timm has no weights tagged 'nope' for resnet10t"),
    ({"--models": "NOBASELINE"}, "lists no baseline model"),
])
def test_cli_bad_inputs_fail_with_one_line_before_any_prediction(tmp_path, capsys, timm_weights, photo_sets,
                                                                 changes, message):
    from askshift.cli.main import main

    args = _cli_args(tmp_path, timm_weights, photo_sets)
    files = {"MISSING": tmp_path / "missing.txt", "EMPTY": tmp_path / "empty", "TYPO": tmp_path / "typo.txt",
             "BADGROUP": tmp_path / "badgroup.txt", "BADTAG": tmp_path / "badtag.txt", "ONE": tmp_path / "one.txt",
             "NOBASELINE": tmp_path / "nobaseline.txt", "TWO": timm_weights / "two"}
    (tmp_path / "empty").mkdir()
    files["TYPO"].write_text("resnet10x.c3_in1k baseline\n")
    files["BADGROUP"].write_text("resnet10t.c3_in1k scratch\n")
    files["BADTAG"].write_text("resnet10t.nope baseline\n")
    files["ONE"].write_text("test_resnet.r160_in1k baseline\n")
    files["NOBASELINE"].write_text("test_vit.r160_in1k pretrained\n")
    for flag, value in changes.items():
        at = args.index(flag)
        if value is None:
            del args[at:at + 2]
        else:
            args[at + 1] = str(files.get(value, value))
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "store" / "zoo-imagefolder-vs-imagefolder").exists()


def test_er_table_lines_show_each_part_and_group_with_its_interval():
    from askshift.cli.commands.run_zoo_evaluate import er_lines

    rows = [{"sub_split": "all", "group": "pretrained", "n_models": 1, "effective_robustness": 0.0412,
             "er_lower": -0.01, "er_upper": 0.09, "n_examples": 12}]
    lines = er_lines(rows, {"in_support": "no predictions on the in-support part (is it empty?)"})
    assert lines[0].split()[:3] == ["part", "group", "models"]
    assert lines[1].split() == ["all", "pretrained", "1", "+0.041", "[-0.010,", "+0.090]"]
    assert lines[2].startswith("  no ER on in_support: no predictions")


@pytest.mark.slow
def test_cli_zoo_evaluate_predicts_every_model_splits_and_prints_er_then_the_experiment(
        prefect_api, askshift, tmp_path, timm_weights, photo_sets):
    args = _cli_args(tmp_path, timm_weights, photo_sets, "--folds", "2", "--lrs", "1e-3", "--epochs", "1")
    proc = subprocess.run([askshift, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    folder = Path(lines[-1])
    assert folder == (tmp_path / "store" / "zoo-imagefolder-vs-imagefolder").resolve()
    assert re.search(r"^shifted_val: \d+ in-support, \d+ out-of-support at epsilon 0\.2; AUROC \d\.\d{3}",
                     proc.stdout, re.M), proc.stdout
    assert any(line.split()[:2] == ["part", "group"] or "no ER on" in line for line in lines), proc.stdout
    from askshift.lib.store import ExperimentStore

    exp = ExperimentStore(folder)
    for model in BASELINES + PRETRAINED:
        for split, n in (("source_val", 12), ("shifted_val", 12)):
            predictions = exp.read_predictions(model, split)
            assert predictions.height == n and np.stack(predictions["logits"].to_numpy()).shape[1] == 3
    groups = dict(zip(exp.models()["model"].to_list(), exp.models()["group"].to_list()))
    assert groups == {**{m: "baseline" for m in BASELINES}, **{m: "pretrained" for m in PRETRAINED}}
    assert exp.subsplit_path("shifted_val").exists()
    assert exp.read_config("zoo_config")["resolution"] == 48
    assert pl.read_parquet(exp.subsplit_path("shifted_val")).height == 12
