"""`askshift zoo` over timm's published results: grouping rule, reference files, and the command end to end."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import polars as pl
import pytest

from askshift.lib.robustness.zoo import group_of, zoo_table

REPO = Path(__file__).resolve().parents[1]
# A copy vendored in the repository (what `askshift zoo` uses without --results) or the shared data folder beside it.
RESULTS = next((p for p in (REPO / "data" / "timm-results", REPO.parent / "shared" / "data" / "timm-results")
                if p.is_dir()), REPO / "data" / "timm-results")
needs_results = pytest.mark.skipif(not RESULTS.is_dir(), reason="timm results CSVs not available")


@pytest.mark.parametrize("model, group", [
    ("resnet50.a1_in1k", "baseline"),
    ("deit_base_distilled_patch16_224.fb_in1k", "baseline"),
    ("vit_base_patch16_224.mae_in1k_ft_in1k", "baseline"),
    ("resmlp_24_224.fb_dino", "baseline"),
    ("convnextv2_base.fcmae_ft_in1k", "baseline"),
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", "pretrained"),
    ("convnext_base.fb_in22k_ft_in1k", "pretrained"),
    ("vit_base_patch16_clip_224.openai_ft_in1k", "pretrained"),
    ("convnext_xxlarge.clip_laion2b_soup_ft_in1k", "pretrained"),
    ("resnext101_32x8d.fb_swsl_ig1b_ft_in1k", "pretrained"),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", "pretrained"),
    ("tf_efficientnet_b7.ns_jft_in1k", "pretrained"),
    ("regnety_320.seer_ft_in1k", "pretrained"),
    ("hgnet_base.ssld_in1k", "pretrained"),
    ("resnetv2_50x1_bit.goog_distilled_in1k", "pretrained"),
    ("vit_so400m_patch14_siglip_378.webli_ft_in1k", "pretrained"),
    ("convnext_base.in1k_ft_in22k_in1k", "pretrained"),
])
def test_default_rule_groups_models_by_their_weight_tag(model, group):
    assert group_of(model) == group


def test_pretrained_pattern_overrides_the_default_rule():
    assert group_of("resnet50.a1_in1k", r"^resnet") == "pretrained"
    assert group_of("vit_base_patch16_224.augreg_in21k_ft_in1k", r"^resnet") == "baseline"


@needs_results
def test_r_and_a_use_the_200_class_clean_imagenet_file_as_reference():
    for shift, clean in (("r", "results-imagenet-r-clean.csv"), ("a", "results-imagenet-a-clean.csv")):
        table = zoo_table(RESULTS, shift)
        reference = pl.read_csv(RESULTS / clean, columns=["model", "img_size", "top1"])
        joined = table.join(reference, on=["model", "img_size"])
        assert joined.height == table.height > 1000
        assert (joined["reference_accuracy"] - joined["top1"] / 100).abs().max() < 1e-12
    v2 = zoo_table(RESULTS, "v2")
    full_val = pl.read_csv(RESULTS / "results-imagenet.csv", columns=["model", "img_size", "top1"])
    assert (v2.join(full_val, on=["model", "img_size"])
            .select((pl.col("reference_accuracy") - pl.col("top1") / 100).abs().max()).item() < 1e-12)


@needs_results
def test_models_evaluated_at_several_sizes_pair_accuracies_at_the_same_size(tmp_path):
    # convnext_base.fb_in1k: 84.466 (288 px) / 83.838 (224 px) on ImageNet, 37.313 / 38.236 on Sketch.
    (tmp_path / "results-imagenet.csv").write_text(
        "model,img_size,top1\nconvnext_base.fb_in1k,288,84.466\nconvnext_base.fb_in1k,224,83.838\n")
    (tmp_path / "results-sketch.csv").write_text(
        "model,img_size,top1\nconvnext_base.fb_in1k,224,38.236\nconvnext_base.fb_in1k,288,37.313\n")
    row = zoo_table(tmp_path, "sketch").row(0, named=True)
    assert (row["img_size"], row["reference_accuracy"], row["shifted_accuracy"]) == (288, 0.84466, 0.37313)
    real = zoo_table(RESULTS, "sketch")
    assert real["model"].is_unique().all()


@needs_results
def test_default_rule_agrees_with_the_papers_own_grouping_of_its_zoo():
    paper = REPO / "lib" / "robustness" / "paper_zoo.csv"
    if not paper.exists():
        pytest.skip("lib/paper_zoo.csv not present")
    with open(paper, newline="") as fh:
        groups = {r["model"]: r["group"] for r in csv.DictReader(fh)}
    table = zoo_table(RESULTS, "sketch").filter(pl.col("model").is_in(list(groups)))
    assert table.height == len(groups)
    assert {m: g for m, g in table.select("model", "group").iter_rows()} == groups


@needs_results
def test_askshift_zoo_on_the_real_csvs_writes_and_names_the_report(askshift, tmp_path):
    proc = subprocess.run([askshift, "zoo", "--results", str(RESULTS), "--shift", "sketch", "--store",
                           str(tmp_path / "store")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ImageNet-Sketch" in out and "baseline = ImageNet-1k only" in out
    assert "pretrained: mean ER +" in out and "Pre-training helped" in out
    root = tmp_path / "store" / "zoo-sketch"
    assert f"report:  {root / 'report.md'}" in out
    for name in ("report.md", "tables/er.parquet", "tables/er.csv", "tables/er_summary.parquet",
                 "plots/accuracy_on_the_line_sketch.png", "plots/er_by_group_sketch.png", "config.json"):
        assert (root / name).exists(), name
    er = pl.read_csv(root / "tables" / "er.csv")
    assert er.columns[:2] == ["model", "group"] and er.height > 1000
    summary = pl.read_parquet(root / "tables" / "er_summary.parquet")
    pretrained = summary.filter((pl.col("group") == "pretrained") & (pl.col("view") == "full")).row(0, named=True)
    assert pretrained["er_lower"] > 0.03  # sketch: a clear positive ER of extra-data models (about +8%)


def test_askshift_zoo_rejects_an_unknown_shift_in_one_line(askshift, tmp_path):
    proc = subprocess.run([askshift, "zoo", "--results", str(tmp_path), "--shift", "objectnet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["askshift zoo: error: unknown shift 'objectnet'; choose one of: v2, sketch, r, a"]
