"""Shift transforms (per-example determinism, correctness on CPU), presets, spec files, class-rate subsampling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from askshift.lib.data.loaders import kept_examples
from askshift.lib.data.shifts import SHIFTS, class_colours, make_shift
from askshift.lib.data.specs import PRESETS, DistributionSpec, ExperimentSpec, get_spec, load_spec, minority_classes
from askshift.lib.registry import UnknownNameError

NUM_CLASSES = 5
SHIFT_PARAMS = {
    "tint": {"alpha": 0.25, "spurious_p": 0.7},
    "vflip": {},
    "brightness": {"factor": 0.6, "offset": 0.1},
    "grayscale": {"amount": 1.0},
    "blur": {"sigma": 1.0},
    "noise": {"std": 0.2},
    "frame": {"width": 2, "value": [1.0, 0.0, 0.5]},
}


def _batch(n: int = 24, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    indices = torch.randperm(1000, generator=g)[:n]
    return images, labels, indices


def test_every_registered_shift_is_covered_here():
    assert set(SHIFTS.names()) == set(SHIFT_PARAMS)


@pytest.mark.parametrize("name", sorted(SHIFT_PARAMS))
def test_shift_depends_on_example_index_not_batch_order(name):
    shift = make_shift(name, NUM_CLASSES, SHIFT_PARAMS[name])
    images, labels, indices = _batch()
    whole = shift(images, labels, indices)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    permuted = shift(images[perm], labels[perm], indices[perm])
    torch.testing.assert_close(permuted, whole[perm])
    halves = torch.cat([shift(images[:7], labels[:7], indices[:7]), shift(images[7:], labels[7:], indices[7:])])
    torch.testing.assert_close(halves, whole)
    # A fresh instance (another process, another epoch) gives the same result.
    torch.testing.assert_close(make_shift(name, NUM_CLASSES, SHIFT_PARAMS[name])(images, labels, indices), whole)
    assert whole.shape == images.shape and whole.dtype == images.dtype and whole.device.type == "cpu"
    assert 0.0 <= whole.min() and whole.max() <= 1.0


def test_grayscale_keeps_the_luma_and_removes_the_colour():
    images, labels, indices = _batch()
    grey = make_shift("grayscale", NUM_CLASSES, {"amount": 1.0})(images, labels, indices)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(grey[:, 0], luma)
    half = make_shift("grayscale", NUM_CLASSES, {"amount": 0.5})(images, labels, indices)
    torch.testing.assert_close(half, (images + grey) / 2)


def test_tint_mixes_in_class_colours_with_spurious_probability():
    p, alpha = 0.8, 0.25
    shift = make_shift("tint", NUM_CLASSES, {"alpha": alpha, "spurious_p": p, "palette_seed": 3})
    n = 4000
    images = torch.zeros(n, 3, 2, 2)
    labels = torch.arange(n) % NUM_CLASSES
    out = shift(images, labels, torch.arange(n))
    colours = torch.as_tensor(class_colours(NUM_CLASSES, 3), dtype=torch.float32)
    chosen = shift.colour_classes(labels, torch.arange(n))
    torch.testing.assert_close(out[:, :, 0, 0], alpha * colours[chosen])
    # own colour with prob p, otherwise a uniformly random class (which may be the own class again)
    own = (chosen == labels.numpy()).mean()
    assert abs(own - (p + (1 - p) / NUM_CLASSES)) < 0.03
    # unseen tint: colours independent of the label
    random_tint = make_shift("tint", NUM_CLASSES, {"alpha": alpha, "spurious_p": 0.0})
    assert abs((random_tint.colour_classes(labels, torch.arange(n)) == labels.numpy()).mean() - 1 / NUM_CLASSES) < 0.03


def test_geometric_and_photometric_shifts_compute_what_they_say():
    images, labels, indices = _batch()
    torch.testing.assert_close(make_shift("vflip", 2)(images, labels, indices), images.flip(2))
    bright = make_shift("brightness", 2, {"factor": 2.0})(images, labels, indices)
    torch.testing.assert_close(bright, (images * 2).clamp(0, 1))
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(make_shift("blur", 2, {"sigma": 1.5})(flat, labels[:2], indices[:2]), flat)
    spike = torch.zeros(1, 3, 9, 9)
    spike[0, :, 4, 4] = 1.0
    blurred = make_shift("blur", 2, {"sigma": 1.0})(spike, labels[:1], indices[:1])
    assert abs(blurred.sum().item() - 3.0) < 1e-4 and blurred[0, 0, 4, 4] < 0.2
    framed = make_shift("frame", 2, {"width": 2, "value": 0.0})(torch.ones(1, 3, 8, 8), labels[:1], indices[:1])
    assert framed[0, :, :2].sum() == 0 and framed[0, :, :, -2:].sum() == 0 and framed[0, :, 2:6, 2:6].min() == 1


def test_noise_is_fixed_per_example_with_requested_std():
    shift = make_shift("noise", 2, {"std": 0.05})
    images = torch.full((64, 3, 16, 16), 0.5)
    out = shift(images, torch.zeros(64, dtype=torch.long), torch.arange(64))
    assert abs((out - 0.5).std().item() - 0.05) < 0.005
    assert not torch.allclose(out[0], out[1])  # different examples, different noise
    other_seed = make_shift("noise", 2, {"std": 0.05, "seed": 1})(images, torch.zeros(64, dtype=torch.long), torch.arange(64))
    assert not torch.allclose(other_seed, out)


def test_shift_parameters_are_validated_with_a_clear_message():
    with pytest.raises(ValueError, match="its parameters are: .*alpha"):
        make_shift("tint", 3, {"colour": 1})
    with pytest.raises(UnknownNameError, match="blur"):
        make_shift("blurr", 3)
    with pytest.raises(ValueError, match="parameters"):
        DistributionSpec(shift="vflip", shift_params={"p": 1})


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_builds_a_consistent_spec(name):
    spec = get_spec(name)
    assert spec.splits()[:2] == ["source_train", "source_val"]
    assert spec.splits()[2:] == [f"{t}_val" for t in spec.targets]
    assert set(spec.support) == set(spec.targets)
    for split in spec.splits():
        dist, dataset_split = spec.distribution(split)
        assert dist.dataset == "digits" and dataset_split == ("train" if split == "source_train" else "val")
    # specs are frozen and round-trip through JSON (Prefect parameters, config files)
    assert ExperimentSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(Exception):
        spec.name = "x"


def test_paper_presets_have_the_paper_shifts():
    oos = get_spec("out_of_support")
    assert oos.reference.shift is None and oos.support == {"tint": "out", "vflip": "out"}
    assert oos.targets["tint"].shift_params == {"alpha": 0.25, "spurious_p": 0.0}
    tint = get_spec("tint_p=0.9")
    assert tint.reference.shift_params["spurious_p"] == 0.9 and tint.targets["tint"].shift_params["spurious_p"] == 0.0
    label = get_spec("label_p=0.2")
    minority = minority_classes(10)
    assert len(minority) == 5 and set(label.reference.class_rates) == set(minority)
    assert label.reference.class_rates[minority[0]] == pytest.approx(0.25)  # 0.2 / 0.8, larger rate kept at 1
    assert set(label.targets["label"].class_rates) == set(range(10)) - set(minority)
    assert label.baseline_epochs_factor == 2.0


def test_any_p_in_range_parses_and_out_of_range_is_refused():
    assert get_spec("tint_p=0.73").reference.shift_params["spurious_p"] == 0.73
    assert get_spec("label_p=0.25").name == "digits-label_p=0.25"
    with pytest.raises(ValueError, match="0 < p <= 0.5"):
        get_spec("label_p=0.7")
    with pytest.raises(ValueError, match="needs a number"):
        get_spec("tint_p=high")
    with pytest.raises(UnknownNameError, match="out_of_support"):
        get_spec("out_of_suport")


def test_spec_files_load_from_yaml_and_json(tmp_path):
    (tmp_path / "preset.yaml").write_text("preset: tint_p=0.6\ndataset: digits\n")
    assert load_spec(tmp_path / "preset.yaml") == get_spec("tint_p=0.6")
    custom = {
        "name": "blurry-digits",
        "reference": {"dataset": "digits"},
        "targets": {"blur": {"dataset": "digits", "shift": "blur", "shift_params": {"sigma": 2}},
                    "noisy": {"dataset": "digits", "shift": "noise", "class_rates": {"3": 0.5}}},
        "support": {"blur": "out", "noisy": "in"},
    }
    (tmp_path / "custom.json").write_text(json.dumps(custom))
    spec = get_spec(str(tmp_path / "custom.json"))
    assert spec.splits() == ["source_train", "source_val", "blur_val", "noisy_val"]
    assert spec.targets["noisy"].class_rates == {3: 0.5}
    bad = dict(custom, support={"nope": "in"})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="nope"):
        load_spec(tmp_path / "bad.json")


def test_class_rates_subsample_each_class_at_its_rate_and_fixed():
    labels = np.arange(20000) % 4
    rates = np.array([1.0, 0.25, 0.5, 0.1])
    kept = kept_examples(labels, rates)
    fractions = np.bincount(labels[kept], minlength=4) / np.bincount(labels)
    np.testing.assert_allclose(fractions, rates, atol=0.02)
    assert np.array_equal(kept, kept_examples(labels, rates))  # the same subset every time
    assert len(kept_examples(labels, None)) == len(labels)


def test_label_p_rates_reverse_the_class_proportions():
    spec = get_spec("label_p=0.1")
    labels = np.arange(50000) % 10
    ref = np.bincount(labels[kept_examples(labels, spec.reference.rates_array(10))], minlength=10)
    tgt = np.bincount(labels[kept_examples(labels, spec.targets["label"].rates_array(10))], minlength=10)
    minority = minority_classes(10)
    majority = [k for k in range(10) if k not in minority]
    # share of the minority half: p in the reference, 1 - p in the target
    assert ref[minority].sum() / ref.sum() == pytest.approx(0.1, abs=0.01)
    assert tgt[majority].sum() / tgt.sum() == pytest.approx(0.1, abs=0.01)
