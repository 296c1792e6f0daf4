"""The training loop: schedules with fractional warm-up, linear-probe mode, checkpoints, kept epochs, prediction."""
from __future__ import annotations

import math

import pytest
import torch

from askshift.lib.models.families import build_model
from askshift.lib.models.training import (
    TrainConfig,
    checkpoint_path,
    epoch_seed,
    kept_checkpoint_path,
    lr_factor,
    seed_everything,
    train_model,
    training_checkpoints,
)


class TensorLoader:
    """Seeded in-memory batches of (images, labels, indices), like askshift.lib.data.loaders.split_loader."""

    def __init__(self, images, labels, batch_size, seed=0, shuffle=True):
        n = len(labels)
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        for i in range(len(self)):
            idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx], idx


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (96,), generator=gen)
    # Learnable: the class sets the mean brightness of one colour channel.
    images = 0.3 * torch.rand(96, 3, 32, 32, generator=gen)
    images[torch.arange(96), labels] += 0.5
    return images, labels


def loader_factory(data, config):
    images, labels = data
    return lambda epoch: TensorLoader(images, labels, config.batch_size, epoch_seed(config.seed, epoch))


def quiet(_line: str) -> None:
    pass


@pytest.mark.parametrize("schedule", ["cosine", "triangle", "constant", "step"])
def test_schedules_rise_linearly_over_a_fractional_warmup(schedule):
    config = TrainConfig(epochs=4, schedule=schedule, warmup_epochs=0.5, step_epochs=1.0, step_gamma=0.5)
    assert lr_factor(config, 0.0) == 0.0
    assert lr_factor(config, 0.125) == pytest.approx(0.25)
    assert lr_factor(config, 0.25) == pytest.approx(0.5)
    assert lr_factor(config, 0.4999) == pytest.approx(0.9998)
    after = [lr_factor(config, t) for t in (0.5, 1.5, 2.5, 3.999)]
    expected = {
        "cosine": [1.0, 0.5 * (1 + math.cos(math.pi * 1 / 3.5)), 0.5 * (1 + math.cos(math.pi * 2 / 3.5)), 0.0],
        "triangle": [1.0, 1 - 1 / 3.5, 1 - 2 / 3.5, 0.0],
        "constant": [1.0, 1.0, 1.0, 1.0],
        "step": [1.0, 0.5, 0.25, 0.125],
    }[schedule]
    assert after == pytest.approx(expected, abs=1e-3)


def test_training_applies_the_scheduled_lr_at_each_step(data, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, lr=0.01, schedule="triangle", warmup_epochs=0.5, batch_size=16, seed=0)
    seen = []

    class Spy(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    seed_everything(0)
    train_model(build_model("cnn:tiny", 3), loader_factory(data, config), config, tmp_path, log=quiet)
    steps = 2 * 6  # 96 examples / 16
    assert len(seen) == steps
    want = [0.01 * lr_factor(config, (i + 0.5) / 6) for i in range(steps)]
    assert seen == pytest.approx(want)
    assert seen[:3] == sorted(seen[:3])  # rising during the half-epoch warm-up


def test_linear_probe_trains_only_the_head_and_leaves_backbone_unchanged(data, tmp_path):
    config = TrainConfig(epochs=2, lr=0.05, freeze_backbone=True, batch_size=32, weight_decay=0.1)
    seed_everything(0)
    model = build_model("cnn:tiny", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_model(model, loader_factory(data, config), config, tmp_path, log=quiet)
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)  # BatchNorm statistics are part of what must not move
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert result.history[-1].loss < result.history[0].loss * 1.01


def test_checkpoints_load_with_weights_only_and_hold_resume_state(data, tmp_path):
    config = TrainConfig(epochs=3, lr=3e-3, batch_size=32, keep_epochs=(1, 3), warmup_epochs=0.5)
    seed_everything(0)
    model = build_model("cnn:tiny", 3)
    result = train_model(model, loader_factory(data, config), config, tmp_path, log=quiet)
    state = torch.load(checkpoint_path(tmp_path, 3), weights_only=True)  # raises on any pickled object
    assert state["epoch"] == 3 and state["step"] == 9
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert state["config"]["keep_epochs"] == [1, 3]
    assert set(result.kept) == {1, 3}
    kept = torch.load(kept_checkpoint_path(tmp_path, 3), weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    # Only the two newest full checkpoints stay; kept epochs live on as model-only files.
    assert [e for e, _ in training_checkpoints(tmp_path)] == [2, 3]
    assert kept_checkpoint_path(tmp_path, 1).exists()


def test_finished_run_is_not_trained_again(data, tmp_path):
    config = TrainConfig(epochs=2, batch_size=32)
    seed_everything(0)
    model = build_model("cnn:tiny", 3)
    train_model(model, loader_factory(data, config), config, tmp_path, log=quiet)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def no_loader(epoch):
        raise AssertionError("a finished run asked for training data")

    fresh = build_model("cnn:tiny", 3)
    result = train_model(fresh, no_loader, config, tmp_path, log=quiet)
    assert result.resumed_from == 2
    assert all(torch.equal(weights[k], v) for k, v in fresh.state_dict().items())


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_epoch(data, tmp_path):
    config = TrainConfig(epochs=3, batch_size=32)
    seed_everything(0)
    train_model(build_model("cnn:tiny", 3), loader_factory(data, config), config, tmp_path, log=quiet)
    reference = torch.load(checkpoint_path(tmp_path, 3), weights_only=True)["model"]
    checkpoint_path(tmp_path, 3).write_bytes(b"truncated")
    lines = []
    model = build_model("cnn:tiny", 3)
    result = train_model(model, loader_factory(data, config), config, tmp_path, log=lines.append)
    assert result.resumed_from == 2
    assert any("unreadable" in line for line in lines)
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())  # epoch 3 redone exactly


def test_checkpoints_of_another_config_are_refused(data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=32)
    seed_everything(0)
    train_model(build_model("cnn:tiny", 3), loader_factory(data, config), config, tmp_path, log=quiet)
    other = TrainConfig(epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(ValueError, match="different training config"):
        train_model(build_model("cnn:tiny", 3), loader_factory(data, other), other, tmp_path, log=quiet)


def test_invalid_train_configs_are_rejected_before_training():
    with pytest.raises(ValueError, match="keep_epochs"):
        TrainConfig(epochs=3, keep_epochs=(4,))
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=2)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lamb")


def test_sgd_training_learns_the_task(data, tmp_path):
    config = TrainConfig(epochs=4, lr=0.1, optimizer="sgd", batch_size=16, schedule="cosine", warmup_epochs=0.25)
    seed_everything(0)
    model = build_model("cnn:tiny", 3)
    result = train_model(model, loader_factory(data, config), config, tmp_path, log=quiet)
    assert result.history[-1].accuracy > 0.6
    assert result.history[-1].loss < result.history[0].loss


def test_predict_returns_logits_in_loader_order_and_restores_train_mode(data):
    from askshift.lib.models.evaluation import predict

    images, labels = data
    seed_everything(0)
    model = build_model("cnn:tiny", 3).train()
    loader = TensorLoader(images, labels, 40, seed=5)
    logits, got_labels, indices = predict(model, loader)
    assert model.training  # the caller's mode is restored
    assert logits.shape == (96, 3) and logits.dtype.name == "float32"
    assert sorted(indices.tolist()) == list(range(96))
    assert (got_labels == labels.numpy()[indices]).all()
    model.eval()
    with torch.no_grad():
        direct = model(images[torch.as_tensor(indices[:40])]).numpy()
    assert abs(direct - logits[:40]).max() < 1e-5
