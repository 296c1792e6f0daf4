"""``askshift ask``: unlabeled shifted images -> the verdict, with known answers on digits mixtures and photos."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from photo_fixtures import convert_folder, make_flat_folder, make_imagefolder
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def askshift(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("askshift")
    env = {**os.environ, "ASKSHIFT_LOADER_POOL": os.environ.get("ASKSHIFT_LOADER_POOL", "1")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def write_png(images: np.ndarray, paths: list[Path]) -> None:
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


def write_mixture_folders(root: Path, out_fraction: float, seed: int) -> tuple[Path, Path, np.ndarray]:
    """The known-answer digits mixture as files: the reference as an ImageFolder (train/ and val/), the shifted
    set as a flat folder of unlabeled PNGs, and the true out-of-support membership of each shifted file."""
    from askshift.lib.support.known_answer import MixtureConfig, build_mixture

    mixture = build_mixture(MixtureConfig(seed=seed, out_fraction=out_fraction, copies=1))
    reference = root / "reference"
    names = [reference / ("val" if i % 5 == 0 else "train") / str(y) / f"{i:05d}.png"
             for i, y in enumerate(mixture.reference_labels)]
    write_png(mixture.reference_images, names)
    shifted = root / "shifted"
    write_png(mixture.shifted_images, [shifted / f"{i:05d}.png" for i in range(len(mixture.shifted_labels))])
    return reference, shifted, mixture.out_of_support


def closing(out: subprocess.CompletedProcess) -> tuple[float, float, str]:
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stderr[-3000:]
    auroc_line, share_line, verdict_line = lines[-3:]
    assert auroc_line.startswith("auroc: ") and share_line.startswith("out_of_support: "), lines[-3:]
    import re

    m = re.fullmatch(r"out_of_support: (\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\] \(epsilon=0\.2, (\d+) of (\d+)\)",
                     share_line)
    assert m, share_line
    share, lo, hi = float(m[1]), float(m[2]), float(m[3])
    assert lo <= share <= hi
    assert verdict_line.startswith("verdict: ")
    return float(auroc_line.split()[1]), share, verdict_line.split(": ", 1)[1]


FAST = ("--folds", "3", "--resolution", "16", "--lrs", "0.003", "--resamples", "500")


def test_ask_refuses_bad_input_with_one_line_before_compute(tmp_path):
    make_flat_folder(tmp_path / "flat", n=4)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--reference", "digits", "--shifted-root", str(tmp_path / "missing")], "missing folder"),
        (["--reference", "digits", "--shifted-root", str(tmp_path / "empty")], "no images"),
        (["--reference", "nosuch", "--shifted-root", str(tmp_path / "flat")], "unknown dataset"),
        (["--reference", "digits", "--shifted-root", str(tmp_path / "flat"), "--epsilon", "2"], "epsilon"),
        (["--reference", "images", "--reference-root", str(tmp_path / "flat"), "--shifted-root", str(tmp_path / "flat"),
          "--estimate-er"], "has no labels"),
    ]
    for args, words in cases:
        out = askshift("ask", *args, "--store", str(tmp_path / "store"), cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and words in lines[0], (args, out.stderr[-2000:])
        assert not (tmp_path / "store").exists()
    # Sizes are known once the data is read (its .beton written): still one last line, before any training.
    out = askshift("ask", "--reference", "digits", "--shifted-root", str(tmp_path / "flat"), "--folds", "9",
                   "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert out.returncode == 2 and "fewer than the 9 folds" in out.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "store").glob("ask-*/runs"))


def test_ask_help_documents_the_verdict_thresholds(tmp_path):
    from askshift.lib.support.evidence import HELP_SHARE, NO_SHIFT_AUROC

    out = askshift("ask", "--help", cwd=tmp_path)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "likely to help" in text and "no detectable shift" in text
    assert f"{NO_SHIFT_AUROC:g}" in text and f"{HELP_SHARE:g}" in text


def write_palette_subset_folder(root: Path, colours_used: int, seed: int) -> Path:
    """An in-support shift that a classifier can see: the validation digits tinted with only ``colours_used`` of the
    reference's palette colours (each occurs in the reference, at a tenth of the images: density ratio 10/colours)."""
    from askshift.lib.support.known_answer import _digits, palette, tint

    rng = np.random.default_rng([seed, 7])
    images, _ = _digits("val", 16)
    colours = palette(10, seed)[rng.choice(10, colours_used, replace=False)]
    shifted = tint(images, colours[rng.integers(0, colours_used, len(images))])
    folder = root / "palette_subset"
    write_png(shifted, [folder / f"{i:05d}.png" for i in range(len(images))])
    return folder


@pytest.mark.slow
def test_ask_on_unseen_tints_says_likely_to_help(tmp_path):
    reference, shifted, truth = write_mixture_folders(tmp_path, 0.95, seed=0)  # colours the reference never shows
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(reference), "--shifted-root",
                   str(shifted), "--store", str(tmp_path / "store"), *FAST, cwd=tmp_path)
    auroc, share, verdict = closing(out)
    assert verdict == "likely to help" and auroc > 0.9 and abs(share - truth.mean()) < 0.1, out.stdout[-3000:]
    report = next((tmp_path / "store").glob("ask-*/ask.md")).read_text()
    for evidence in ("Verdict", "AUROC", "Second opinion", "reliability", "ask_share_sweep", "ask_examples"):
        assert evidence in report, evidence


@pytest.mark.slow
def test_ask_on_an_in_support_colour_shift_says_unlikely_to_help(tmp_path):
    reference, _, _ = write_mixture_folders(tmp_path, 0.5, seed=1)
    shifted = write_palette_subset_folder(tmp_path, colours_used=5, seed=1)
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(reference), "--shifted-root",
                   str(shifted), "--store", str(tmp_path / "store"), "--seed", "1", *FAST, cwd=tmp_path)
    auroc, share, verdict = closing(out)
    # The classifier sees the shift (half the palette is missing), yet every image's colour occurs in the reference.
    assert auroc > 0.6 and share < 0.25 and verdict == "unlikely to help", out.stdout[-3000:]


def write_spurious_tint_folders(root: Path, seed: int) -> tuple[Path, Path]:
    """The demo's in-support shift ``tint_p=0.5`` as files, with the preset's own tint: every digit tinted twice with
    its class colour at p=0.5 (else a random class's) as the reference ImageFolder, and once with random class
    colours as the unlabeled shifted folder.  Every (digit, colour) pair of the shifted set occurs in the reference
    (density ratio at most 2 < 1/epsilon = 5), but a classifier that sees digit and colour together can tell the
    sets apart: a Bayes classifier reaches AUROC 0.73."""
    import torch

    from askshift.lib.data.datasets import load_dataset
    from askshift.lib.data.shifts import SHIFTS
    from askshift.lib.data.specs import get_spec

    spec = get_spec("tint_p=0.5")
    parts = [load_dataset("digits", split) for split in ("train", "val")]
    images = np.concatenate([np.stack([d.image_array(i) for i in range(len(d))]) for d in parts])
    labels = np.concatenate([np.asarray(d.labels) for d in parts])
    x, y = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255, torch.as_tensor(labels)

    def tinted(params: dict, offset: int) -> np.ndarray:  # distinct example indices: independent colour draws
        out = SHIFTS.get("tint")(10, **params, seed=seed)(x, y, torch.arange(offset, offset + len(y)))
        return (out.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)

    reference, shifted, n = root / "reference", root / "shifted", len(y)
    for copy in range(2):
        write_png(tinted(spec.reference.shift_params, copy * n),
                  [reference / ("val" if i % 5 == 0 else "train") / str(label) / f"{copy}_{i:05d}.png"
                   for i, label in enumerate(labels)])
    write_png(tinted(spec.targets["tint"].shift_params, 2 * n), [shifted / f"{i:05d}.png" for i in range(n)])
    return reference, shifted


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_ask_on_the_demos_spurious_tint_says_unlikely_to_help(tmp_path, seed):
    # Measured (seeds 0-3): AUROC 0.643, 0.637, 0.633, 0.629 and at most 7 of 1797 out-of-support.  The CPU default
    # of 3 epochs sees too little of this weak signal (AUROC 0.597, "no detectable shift"): the test asks for 10.
    reference, shifted = write_spurious_tint_folders(tmp_path, seed)
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(reference), "--shifted-root",
                   str(shifted), "--store", str(tmp_path / "store"), "--seed", str(seed), "--epochs", "10", *FAST,
                   cwd=tmp_path)
    auroc, share, verdict = closing(out)
    assert auroc >= 0.6 and share < 0.05 and verdict == "unlikely to help", out.stdout[-3000:]


@pytest.mark.slow
def test_ask_on_a_half_out_of_support_mixture_finds_about_half(tmp_path):
    reference, shifted, truth = write_mixture_folders(tmp_path, 0.5, seed=2)
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(reference), "--shifted-root",
                   str(shifted), "--store", str(tmp_path / "store"), "--seed", "2", *FAST, cwd=tmp_path)
    auroc, share, verdict = closing(out)
    assert abs(share - truth.mean()) < 0.2, (share, truth.mean())
    # The membership per file agrees with the truth far better than chance.
    exp = next((tmp_path / "store").glob("ask-*"))
    membership = pl.read_parquet(exp / "subsplits" / "shifted_val.parquet").sort("index")
    found = (membership["support"] == "out").to_numpy()
    assert (found == truth).mean() > 0.7


@pytest.mark.slow
def test_ask_on_the_same_photos_in_another_file_format_finds_no_shift(tmp_path):
    make_imagefolder(tmp_path / "A", classes=3, per_class=(20, 20), seed=5)
    convert_folder(tmp_path / "A" / "val", tmp_path / "val_png", "png")  # identical pixels, PNG instead of JPEG
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(tmp_path / "A"), "--shifted-root",
                   str(tmp_path / "val_png"), "--store", str(tmp_path / "store"), "--folds", "3", "--lrs", "0.003",
                   "--resamples", "500", cwd=tmp_path)
    auroc, share, verdict = closing(out)
    assert auroc < 0.6 and verdict == "no detectable shift", out.stdout[-3000:]


@pytest.mark.slow
def test_ask_with_models_from_an_experiment_adds_a_label_free_er_estimate(tmp_path):
    import json
    import shutil

    from photo_fixtures import invert_folder

    make_imagefolder(tmp_path / "A", classes=3, per_class=(20, 10), seed=5)
    invert_folder(tmp_path / "A", tmp_path / "inverted")
    store = tmp_path / "store"
    trained = askshift("run", "baseline", "--dataset", "imagefolder", "--root", str(tmp_path / "A"), "--shift",
                       "out_of_support", "--store", str(store), "--epochs", "2", "--train-fractions", "1", "0.5",
                       cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    exp = store / "imagefolder-out_of_support"
    # A stand-in "pre-trained" group: copies of the last-epoch baselines (their label-free ER must come out near 0).
    for record in sorted((exp / "models").glob("*ep2*.json")):
        info = json.loads(record.read_text())
        copy = f"copy-{info['model']}"
        (exp / "models" / f"{copy.replace(':', '_')}.json").write_text(json.dumps({**info, "model": copy,
                                                                                    "group": "ft"}))
    from askshift.lib.store import ExperimentStore

    models = ExperimentStore(exp)
    for model in models.models().filter(pl.col("group") == "ft")["model"]:
        source = models.predictions_path(model.removeprefix("copy-"), "source_val")
        models.predictions_path(model, "source_val").parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, models.predictions_path(model, "source_val"))
    out = askshift("ask", "--reference", "imagefolder", "--reference-root", str(tmp_path / "A"), "--shifted-root",
                   str(tmp_path / "inverted" / "val"), "--store", str(store), "--folds", "3", "--lrs", "0.003",
                   "--resamples", "500", "--models-from", "imagefolder-out_of_support", cwd=tmp_path)
    closing(out)
    report = next(store.glob("ask-*/ask.md")).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| all | ft |")]
    assert rows and "(estimate)" in rows[0], report[-2000:]
    assert all(models.has_predictions(m, "shifted_val") for m in models.models()["model"])  # every model predicted


@pytest.mark.slow
def test_ask_estimate_er_trains_the_models_it_needs_then_estimates(tmp_path):
    from photo_fixtures import invert_folder

    from askshift.lib.store import ExperimentStore

    make_imagefolder(tmp_path / "A", classes=3, per_class=(16, 8), seed=11)
    invert_folder(tmp_path / "A", tmp_path / "inverted")
    store = tmp_path / "store"
    args = ("ask", "--reference", "imagefolder", "--reference-root", str(tmp_path / "A"), "--shifted-root",
            str(tmp_path / "inverted" / "val"), "--store", str(store), "--folds", "3", "--lrs", "0.003",
            "--resamples", "500")
    refused = askshift(*args, "--estimate-er", "--models-from", "other", cwd=tmp_path)
    assert refused.returncode == 2 and "give one of them" in refused.stderr.strip().splitlines()[-1]
    out = askshift(*args, "--estimate-er", cwd=tmp_path, timeout=1500)
    closing(out)
    assert "training baselines" in out.stdout + out.stderr
    exp = ExperimentStore(next(store.glob("ask-*")))
    groups = exp.models()["group"].to_list()
    assert groups.count("baseline") >= 3 and {"ft", "lp-ft"} <= set(groups), groups
    assert all(exp.has_predictions(m, "shifted_val") for m in exp.models()["model"])
    report = (exp.root / "ask.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| all | ft |", "| all | lp-ft |"))]
    assert len(rows) == 2 and all("(estimate)" in row for row in rows), report[-2000:]
    # A second ask reuses the trained models: nothing trains again.
    runs = sorted(p.name for p in (exp.root / "runs").iterdir())
    again = askshift(*args, "--estimate-er", cwd=tmp_path, timeout=900)
    closing(again)
    assert sorted(p.name for p in (exp.root / "runs").iterdir()) == runs
    assert "training baselines" not in again.stdout + again.stderr
