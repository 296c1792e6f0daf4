"""A researcher's own photo folders (mixed-size JPEGs) through the baseline, fine-tuning and split flows, no flags added."""
from __future__ import annotations

import json
import re
import subprocess

import polars as pl
import pytest
import torch
from photo_fixtures import convert_folder, invert_folder, make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photo_flows")
    make_imagefolder(root / "A", classes=3, per_class=(20, 10), seed=11)
    return root


@pytest.fixture(scope="module")
def split_photos(tmp_path_factory):
    """120 reference photos, 60 shifted: with fewer the held-out AUROC of a same-distribution split wanders by ±0.07."""
    root = tmp_path_factory.mktemp("split_photos")
    make_imagefolder(root / "A", classes=3, per_class=(40, 20), seed=11)
    convert_folder(root / "A", root / "A_png", "png")
    invert_folder(root / "A", root / "A_inverted")
    return root


def _run(askshift, *args, timeout=900):
    proc = subprocess.run([askshift, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_baseline_flow_runs_on_mixed_size_jpegs_with_no_resolution_flag(prefect_api, askshift, photos, tmp_path):
    lines = _run(askshift, "run", "baseline", "--dataset", "imagefolder", "--root", str(photos / "A"),
                 "--shift", "out_of_support", "--store", str(tmp_path), "--epochs", "2", "--train-fractions", "1", "0.5")
    experiment = lines[-1]
    metrics = pl.read_parquet(f"{experiment}/tables/metrics.parquet")
    assert set(metrics["split"]) == {"source_val", "tint_val", "vflip_val"}
    assert metrics.filter(pl.col("split") == "source_val").height == 4  # 2 fractions x 2 kept epochs
    assert metrics["n"].unique().to_list() == [30]


def test_finetune_a_timm_resnet18_from_a_local_weights_file_at_its_own_input_size(prefect_api, askshift, photos, tmp_path):
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    # 10 validation photos per class: with 4, three 1-epoch baselines can tie on reference accuracy and leave no line to fit
    lines = _run(askshift, "run", "finetune", "--dataset", "imagefolder", "--root", str(photos / "A"), "--shift", "out_of_support",
                 "--models", "timm:resnet18", "--pretrained", str(weights), "--strategies", "ft,lp-ft", "--lr-grid", "0.001",
                 "--copies", "1", "--epochs", "1", "--baseline-epochs", "1", "--store", str(tmp_path / "store"))
    experiment = lines[-1]
    er = pl.read_parquet(f"{experiment}/tables/er.parquet")
    assert {"ft", "lp-ft", "scratch-same-arch"} <= set(er["group"])
    runs = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("*/runs/*/config.json")]
    ft_runs = [r for r in runs if r.get("model") == "timm:resnet18"]
    assert ft_runs and all(r["train"]["grad_clip"] == 1.0 for r in ft_runs)  # the paper's recipe for timm models


def test_finetune_an_open_clip_model_from_a_local_checkpoint_with_zero_shot_head(prefect_api, photos, tmp_path):
    import open_clip

    from askshift.flows.finetune import FinetuneConfig, pretrained_finetune
    from askshift.lib.models.strategies import FinetuneHparams

    folder = tmp_path / "configs"
    folder.mkdir()
    name = "askshift-photo-clip"
    (folder / f"{name}.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(folder)
    checkpoint = tmp_path / "clip.pt"
    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    hp = FinetuneHparams(epochs=1, warmup_epochs=0, batch_size=16, lr_grid=(1e-3,), copies=1, lp_epochs=1)
    config = FinetuneConfig(dataset="imagefolder", root=str(photos / "A"), shift="out_of_support", store=str(tmp_path / "s"),
                            models=(f"clip:{name}",), pretrained={f"clip:{name}": str(checkpoint)},
                            strategies=("lp-ft", "zs-ft"), same_arch_control=False, hparams=hp, device="cpu",
                            baseline={"epochs": 1, "train_fractions": (1.0, 0.5, 0.25)})
    result = pretrained_finetune(config)
    models = {json.loads(p.read_text())["group"]: json.loads(p.read_text())
              for p in (tmp_path / "s").glob("*/models/*.json")}
    assert models["zs-ft"]["model_options"] == {"embedding": "projected"}  # the zero-shot head's space
    assert models["lp-ft"]["model_options"] == {}  # pre-projection features, as in the original
    er = pl.read_parquet(f"{result['experiment']}/tables/er.parquet")
    assert {"lp-ft", "zs-ft"} <= set(er["group"])


def _split(askshift, photos, shifted, store):
    lines = _run(askshift, "run", "split", "--reference", "imagefolder", "--reference-root", str(photos / "A"),
                 "--shifted", "imagefolder", "--shifted-root", str(photos / shifted), "--store", str(store),
                 "--folds", "3", "--lrs", "0.001")
    auroc = re.fullmatch(r"auroc: (\d\.\d{3})", lines[-2])
    out = re.fullmatch(r"out_of_support: (\d+) of (\d+) \(epsilon=0\.2\)", lines[-1])
    assert auroc and out, lines[-4:]
    return float(auroc.group(1)), int(out.group(1)), int(out.group(2))


def test_split_cannot_tell_the_same_pixels_stored_as_jpeg_and_png(prefect_api, askshift, split_photos, tmp_path):
    auroc, out, total = _split(askshift, split_photos, "A_png", tmp_path)
    assert total == 60
    assert auroc < 0.6 and out <= 0.1 * total


def test_split_finds_colour_inverted_photos_out_of_support(prefect_api, askshift, split_photos, tmp_path):
    auroc, out, total = _split(askshift, split_photos, "A_inverted", tmp_path)
    assert auroc > 0.9 and out > total / 2
