"""zoo_evaluate: published-style timm classifiers (tiny, weights in local files) predicted per (model, split),
then split into in/out-of-support parts with ER on each; and the paper's zoo lists as data."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from askshift.lib.robustness.paper_zoo import paper_zoo

TINY_TIMM = ("test_resnet.r160_in1k", "test_efficientnet.r160_in1k", "test_convnext.r160_in1k", "test_byobnet.r160_in1k")


def test_paper_zoo_lists_hold_78_baselines_and_55_pretrained_models_with_published_results():
    baseline, pretrained = paper_zoo("baseline"), paper_zoo("pretrained")
    assert len(baseline) == 78 and len(pretrained) == 55
    assert not set(baseline) & set(pretrained) and len(set(pretrained)) == 55
    results = "/work/shared/data/timm-results/results-imagenet.csv"
    try:
        published = set(pl.read_csv(results)["model"].to_list())
    except FileNotFoundError:
        pytest.skip("timm published results are not on this machine")
    assert set(baseline + pretrained) <= published


def test_unknown_zoo_group_names_the_choices():
    with pytest.raises(ValueError, match="baseline, pretrained"):
        paper_zoo("scratch")


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory):
    """A small digits mixture as an npz (reference train/val, shifted) and tiny timm weights as local files."""
    import timm
    import torch

    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
    from askshift.lib.robustness.paper_zoo import NormalisedTimm
    from askshift.lib.support.known_answer import MixtureConfig, build_mixture

    folder = tmp_path_factory.mktemp("zoo")
    mix = build_mixture(MixtureConfig(seed=3, copies=1))
    rng = np.random.default_rng(0)
    ref = rng.permutation(len(mix.reference_labels))
    train, val = ref[:400], ref[400:560]
    shifted = rng.permutation(len(mix.shifted_labels))[:200]
    np.savez(folder / "zoo.npz", train_images=mix.reference_images[train], train_labels=mix.reference_labels[train],
             val_images=mix.reference_images[val], val_labels=mix.reference_labels[val],
             shifted_images=mix.shifted_images[shifted], shifted_labels=mix.shifted_labels[shifted])
    root = str(folder / "zoo.npz")
    spec = ExperimentSpec(name="zoo-check", reference=DistributionSpec(dataset="npz", root=root, split="val"),
                          targets={"shifted": DistributionSpec(dataset="npz", root=root, split="shifted")})
    weights = folder / "weights"
    weights.mkdir()
    x = torch.from_numpy(mix.reference_images[train]).permute(0, 3, 1, 2).float().div(255)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(mix.reference_labels[train]), 10).float()
    for i, name in enumerate(TINY_TIMM):
        torch.manual_seed(i)
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        # A "published" model must beat chance: fit its head by ridge regression on random features.
        wrapped = NormalisedTimm(model, 32)  # what zoo_evaluate feeds it (input_size=32 below)
        with torch.no_grad():
            z = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
            z = (z - wrapped.mean) / wrapped.std
            features = model.forward_head(model.forward_features(z), pre_logits=True)
            features = torch.cat([features, torch.ones(len(features), 1)], 1)
            solution = torch.linalg.solve(features.T @ features + 1e-2 * torch.eye(features.shape[1]), features.T @ onehot)
            head = model.get_classifier()
            head.weight.copy_(solution[:-1].T)
            head.bias.copy_(solution[-1])
        torch.save(model.state_dict(), weights / f"{name}.pth")
    return spec, str(weights), mix.out_of_support[shifted], folder


@pytest.mark.slow
def test_zoo_evaluate_predicts_each_model_on_each_split_then_reports_er_per_part(prefect_api, zoo_data):
    """The split itself is tested by split-check; here a stored split (the true membership) is reused."""
    from askshift.flows.split import SplitConfig
    from askshift.flows.zoo import ZooConfig, zoo_evaluate

    spec, weights, truth, folder = zoo_data
    split = SplitConfig(spec=spec, store=str(folder / "store"))
    exp = split.store.experiment("zoo-check")
    exp.write_subsplit("shifted_val", pl.DataFrame({"index": np.arange(truth.size),
                                                    "support": np.where(truth, "out", "in")}))
    config = ZooConfig(split=split, baseline_models=TINY_TIMM[:3], pretrained_models=TINY_TIMM[3:],
                       weights_dir=weights, num_classes=10, input_size=32, batch_size=200, run_split=False)
    result = zoo_evaluate(config)
    for name in TINY_TIMM:
        for split_name in ("source_val", "shifted_val"):
            predictions = exp.read_predictions(name, split_name)
            assert predictions.height == (160 if split_name == "source_val" else 200)
    groups = dict(zip(exp.models()["model"].to_list(), exp.models()["group"].to_list()))
    assert groups == {**{m: "baseline" for m in TINY_TIMM[:3]}, TINY_TIMM[3]: "pretrained"}
    er = exp.read_table("support_er_shifted")
    assert set(er["sub_split"].to_list()) == {"all", "in_support", "out_of_support"}
    assert set(er["group"].to_list()) == {"baseline", "pretrained"}
    parts = dict(zip(er["sub_split"].to_list(), er["n_examples"].to_list()))
    assert parts == {"all": 200, "in_support": int((~truth).sum()), "out_of_support": int(truth.sum())}
    assert result["shifted"]["split"] == "shifted_val"
    # a second run finds every prediction stored and recomputes nothing
    before = {p: p.stat().st_mtime_ns for p in (exp.root / "predictions").rglob("*.parquet")}
    zoo_evaluate(config)
    assert before == {p: p.stat().st_mtime_ns for p in (exp.root / "predictions").rglob("*.parquet")}


def test_zoo_model_without_local_weights_fails_fast_offline(tmp_path, monkeypatch):
    from askshift.lib.models.families import PretrainedUnavailable
    from askshift.lib.robustness.paper_zoo import load_zoo_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable, match="HF_HUB_OFFLINE"):
        load_zoo_model("test_resnet.r160_in1k")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_zoo_model("test_resnet.r160_in1k", weights_dir=tmp_path)
