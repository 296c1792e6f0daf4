"""Real FFCV .beton files and loaders: exact raw round trip, corruption detection, order/subsets/shifts, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from askshift.lib.data.beton import BetonOptions, check_beton, ensure_beton, sidecar
from askshift.lib.data.loaders import LoaderConfig, split_info, split_loader
from askshift.lib.data.shifts import make_shift
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec

N_TRAIN, N_VAL, SIZE, CLASSES = 48, 20, 8, 4


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    data = {
        "train_images": rng.integers(0, 256, (N_TRAIN, SIZE, SIZE, 3), dtype=np.uint8),
        "train_labels": np.arange(N_TRAIN) % CLASSES,
        "val_images": rng.integers(0, 256, (N_VAL, SIZE, SIZE, 3), dtype=np.uint8),
        "val_labels": rng.integers(0, CLASSES, N_VAL),
        "val_groups": rng.integers(-1, 3, N_VAL),
    }
    np.savez(path, **data)
    return path, data


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _spec(root, reference: dict | None = None) -> ExperimentSpec:
    return ExperimentSpec(
        name="tiny",
        reference=DistributionSpec(dataset="npz", root=str(root), **(reference or {})),
        targets={"tint": DistributionSpec(dataset="npz", root=str(root), shift="tint", shift_params={"alpha": 0.5})},
        support={"tint": "in"},
    )


def test_raw_beton_round_trip_is_exact_and_evaluation_is_sequential(arrays, cache):
    path, data = arrays
    spec = _spec(path)
    info = split_info(spec, "source_val", cache)
    assert (info.num_examples, info.num_classes) == (N_VAL, CLASSES)
    np.testing.assert_array_equal(info.groups, data["val_groups"])
    loader = split_loader(spec, "source_val", cache, LoaderConfig(batch_size=8, num_workers=1), train=False)
    assert len(loader) == 3  # 20 examples, last partial batch kept in evaluation
    images, labels, indices = (torch.cat(parts) for parts in zip(*loader))
    assert indices.tolist() == list(range(N_VAL))
    np.testing.assert_array_equal(labels.numpy(), data["val_labels"])
    assert images.dtype == torch.float32 and images.shape == (N_VAL, 3, SIZE, SIZE)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(pixels, data["val_images"])


def test_corrupted_truncated_or_unfinished_beton_is_rewritten_not_read(arrays, cache):
    path, _ = arrays
    options = BetonOptions(num_workers=1)
    first = ensure_beton("npz", "train", cache, path, options)
    good = first.path.read_bytes()
    assert check_beton(first.path) == (first.manifest, "ok")

    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # one flipped byte in the image data
    first.path.write_bytes(bytes(damaged))
    assert "checksum" in check_beton(first.path)[1]
    messages = []
    again = ensure_beton("npz", "train", cache, path, options, log=messages.append)
    assert again.path == first.path and check_beton(again.path)[1] == "ok"
    assert messages and "checksum" in messages[0]

    first.path.write_bytes(good[: len(good) // 3])  # a half-copied file
    assert "truncated" in check_beton(first.path)[1]
    ensure_beton("npz", "train", cache, path, options)
    assert check_beton(first.path)[1] == "ok" and first.path.stat().st_size == len(good)

    sidecar(first.path, "manifest.json").unlink()  # the writer was killed before finishing
    assert "no manifest" in check_beton(first.path)[1]
    assert ensure_beton("npz", "train", cache, path, options).num_records == N_TRAIN


def test_training_loader_subsets_rates_shift_and_replays_an_epoch(arrays, cache):
    path, data = arrays
    rates = {0: 0.5}  # class 0 kept at half rate
    spec = _spec(path, {"class_rates": rates, "shift": "tint", "shift_params": {"alpha": 0.3, "spurious_p": 1.0}})
    info = split_info(spec, "source_train", cache)
    subset = np.arange(0, N_TRAIN, 2)  # even examples: classes 0 and 2
    expected = np.intersect1d(info.indices, subset)
    assert len(info.indices) < N_TRAIN and 0 < (data["train_labels"][info.indices] == 0).sum() < N_TRAIN // CLASSES
    config = LoaderConfig(batch_size=5, num_workers=1, flip=True, translate=2, cutout=3)
    loader = split_loader(spec, "source_train", cache, config, train=True, indices=subset, seed=7)
    assert len(loader) == len(expected) // 5  # last partial batch dropped in training

    def epoch():
        return [tuple(t.clone() for t in batch) for batch in loader]

    first, second = epoch(), epoch()
    seen = torch.cat([b[2] for b in first])
    assert len(set(seen.tolist())) == len(seen) and set(seen.tolist()) <= set(expected.tolist())
    assert [b[2].tolist() for b in first] != [b[2].tolist() for b in second]  # reshuffled each epoch
    loader.set_epoch(0)  # a resumed run replays epoch 0 exactly: same order, same augmentations
    for (x0, y0, i0), (x1, y1, i1) in zip(first, epoch()):
        assert torch.equal(i0, i1) and torch.equal(y0, y1) and torch.equal(x0, x1)

    # Without augmentation the batch is exactly the shift applied to the stored pixels.
    plain = split_loader(spec, "source_train", cache, LoaderConfig(batch_size=64, num_workers=1), train=False)
    images, labels, indices = next(iter(plain))
    raw = torch.as_tensor(data["train_images"][indices.numpy()]).permute(0, 3, 1, 2).float() / 255
    shift = make_shift("tint", CLASSES, {"alpha": 0.3, "spurious_p": 1.0})
    torch.testing.assert_close(images, shift(raw, labels, indices))
    assert indices.tolist() == info.indices.tolist()


def _epochs(loader, n: int) -> list[list[tuple[torch.Tensor, ...]]]:
    return [[tuple(t.clone() for t in batch) for batch in loader] for _ in range(n)]


def test_a_pooled_loader_reused_for_other_examples_and_seed_yields_what_a_fresh_one_yields(arrays, cache, monkeypatch):
    from askshift.lib.data.loaders import LoaderPool

    path, _ = arrays
    spec = _spec(path)
    config = LoaderConfig(batch_size=6, num_workers=1, flip=True)
    pool = LoaderPool()
    first = split_loader(spec, "source_train", cache, config, train=True, indices=np.arange(0, N_TRAIN, 2), seed=3,
                         pool=pool)
    _epochs(first, 1)
    compiled = first.loader
    first.close()  # back to the pool, compiled
    assert (pool.stats.built, pool.stats.reused, len(pool)) == (1, 0, 1)
    other = np.arange(1, N_TRAIN - 5)  # more examples (the last batch is partial), another seed
    again = split_loader(spec, "source_train", cache, config, train=True, indices=other, seed=11, pool=pool)
    assert again.loader is compiled and (pool.stats.built, pool.stats.reused) == (1, 1)
    pooled = _epochs(again, 2)
    pooled_len = len(again)
    again.close()

    # Without a pool, a loader is built afresh and handed to no pool when closed.
    with split_loader(spec, "source_train", cache, config, train=True, indices=other, seed=11) as fresh_loader:
        assert fresh_loader.loader is not compiled
        fresh = _epochs(fresh_loader, 2)
        assert pooled_len == len(fresh_loader) == len(other) // 6
    assert (pool.stats.built, pool.stats.reused, len(pool)) == (1, 1, 1)
    assert [[b[2].tolist() for b in e] for e in pooled] == [[b[2].tolist() for b in e] for e in fresh]
    for pooled_epoch, fresh_epoch in zip(pooled, fresh):
        for (x0, y0, _), (x1, y1, _) in zip(pooled_epoch, fresh_epoch):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)

    # ASKSHIFT_LOADER_POOL=0 turns a given pool off: its idle loader stays unused.
    monkeypatch.setenv("ASKSHIFT_LOADER_POOL", "0")
    with split_loader(spec, "source_train", cache, config, train=True, indices=other, seed=11, pool=pool) as off:
        assert off.loader is not compiled
    assert (pool.stats.built, pool.stats.reused, len(pool)) == (1, 1, 1)

    # An evaluation loader is another key (sequential order, every example): never handed a training loader.
    monkeypatch.delenv("ASKSHIFT_LOADER_POOL")
    with split_loader(spec, "source_train", cache, config, train=False, pool=pool) as evaluation:
        assert evaluation.loader is not compiled
        assert torch.cat([b[2] for b in evaluation]).tolist() == list(range(N_TRAIN))


def test_jpg_beton_with_crop_decoder_resizes_and_evaluates_center_crop(arrays, cache):
    path, data = arrays
    spec = _spec(path, {"write_mode": "jpg"})
    config = LoaderConfig(batch_size=32, num_workers=1, decoder="random_crop", resolution=12, channels_last=True)
    images, labels, _ = next(iter(split_loader(spec, "source_val", cache, config, train=False)))
    assert images.shape == (N_VAL, 3, 12, 12) and images.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= images.min() and images.max() <= 1
    np.testing.assert_array_equal(labels.numpy(), data["val_labels"])


def test_cli_data_write_prints_path_and_record_count(arrays, tmp_path, capsys):
    from askshift.cli.main import main

    path, _ = arrays
    assert main(["data", "write", "npz", "--split", "val", "--root", str(path), "--out", str(tmp_path), "--num-workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].endswith(".beton") and out[0].startswith(str(tmp_path)) and out[1] == f"records: {N_VAL}"
    assert main(["data", "write", "npz", "--split", "val", "--root", str(tmp_path / "missing.npz"), "--out", str(tmp_path)]) == 2
    assert "missing file" in capsys.readouterr().err


def test_cli_lists_datasets_and_shifts(capsys):
    from askshift.cli.main import main

    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("digits", "cifar10", "imagenet-r", "wilds:<name>", "npz"))
    assert main(["shifts"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("out_of_support", "tint_p=0.9", "label_p=0.1", "tint", "vflip", "blur"))


def test_classes_filter_restricts_a_split_to_chosen_classes(arrays, cache):
    path, data = arrays
    spec = _spec(path, {"classes": [1, 3]})
    info = split_info(spec, "source_val", cache)
    expected = np.flatnonzero(np.isin(data["val_labels"], [1, 3]))
    assert info.indices.tolist() == expected.tolist() and info.num_examples == len(expected)
    assert len(info.groups) == N_VAL  # groups stay indexed by example index


def test_the_loader_pool_is_bounded_in_loaders_per_key_and_in_keys():
    from askshift.lib.data.loaders import LoaderPool

    pool = LoaderPool(max_idle_per_key=2, max_keys=3)
    for key in range(5):
        for copy in range(3):
            pool.give_back(("file", key), f"loader {key}.{copy}")
    assert len(pool) == 3 * 2  # three newest keys, two loaders each
    assert pool.take(("file", 0)) is None and pool.take(("file", 4)) == "loader 4.1"
