"""The domain classifier's plumbing: image sources (in memory, streaming), reproducible fits in threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from askshift.lib.support import ratios as support
from askshift.lib.support.classifier import InMemoryImages, StreamingImages, fit_domain_classifier, score_positions


def coloured_sets(n_ref=48, n_shift=24, size=8, seed=0):
    """Reference images dark, shifted images bright: an easy domain signal."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 100, (n_ref, 3, size, size), dtype=np.uint8)
    shift = rng.integers(150, 255, (n_shift, 3, size, size), dtype=np.uint8)
    data = support.build_domain_data(np.arange(n_ref), np.arange(n_shift))
    return data, ref, shift


def test_fits_running_in_parallel_threads_match_a_sequential_fit(tmp_path):
    data, ref, shift = coloured_sets()
    images = InMemoryImages(torch.from_numpy(np.concatenate([ref, shift])), data.domain)
    config = support.DomainClassifierConfig(model="cnn:tiny", epochs=1, batch_size=16, lrs=(1e-2,), seed=3)
    plan = support.fold_plan(data, 3, seed=0)
    fold = plan[0]
    quiet = lambda *_: None  # noqa: E731

    def fit(tag):
        model = fit_domain_classifier(images, fold.train, config, 1e-2, tmp_path / tag, log=quiet)
        return score_positions(model, images, fold.heldout)

    sequential = fit("seq")
    results = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, fit(t))) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(results["a"], sequential, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results["b"], sequential, rtol=1e-5, atol=1e-5)
    # the model learnt the (easy) domain signal on examples it never saw
    assert support.auroc(data.domain[fold.heldout], sequential) > 0.9


def fake_reader(images: np.ndarray):
    """A stand-in for an FFCV split reader: (indices, train, seed, batch) -> (images, labels, indices) batches."""

    def read(indices, train, seed, batch_size):
        order = np.random.default_rng(seed).permutation(indices) if train else np.sort(indices)
        for b in range(0, order.size, batch_size):
            chosen = order[b:b + batch_size]
            yield torch.from_numpy(images[chosen]).float() / 255, torch.zeros(chosen.size), torch.from_numpy(chosen)

    return read


def test_streaming_batches_mix_both_sets_and_keep_positions():
    data, ref, shift = coloured_sets(n_ref=40, n_shift=20)
    stream = StreamingImages(data, fake_reader(ref), fake_reader(shift))
    positions = np.arange(len(data))[::2]  # some positions of both sets
    batches = list(stream.train_batches(positions, batch_size=10, seed=0))
    assert len(batches) == len(stream.train_batches(positions, 10, 0))
    for x, labels, pos in batches:
        assert set(labels.tolist()) == {0, 1}  # every batch holds both domains
        assert (labels.numpy() == data.domain[pos.numpy()]).all()
        assert set(pos.tolist()) <= set(positions.tolist())
    seen = np.concatenate([p.numpy() for _, _, p in stream.eval_batches(positions, batch_size=7)])
    assert sorted(seen.tolist()) == sorted(positions.tolist())
    # an evaluation batch's images are the images of its positions
    x, labels, pos = next(iter(stream.eval_batches(positions, batch_size=7)))
    expected = np.concatenate([ref, shift])[pos.numpy()]
    np.testing.assert_allclose(x.numpy(), expected / 255, atol=1e-6)


def test_in_memory_batches_cover_positions_without_repeats():
    data, ref, shift = coloured_sets()
    images = InMemoryImages(torch.from_numpy(np.concatenate([ref, shift])), data.domain)
    positions = np.arange(0, len(data), 3)
    seen = np.concatenate([p.numpy() for _, _, p in images.eval_batches(positions, 5)])
    assert seen.tolist() == positions.tolist()
    train = [p.numpy() for _, _, p in images.train_batches(positions, 5, seed=1)]
    flat = np.concatenate(train)
    assert len(set(flat.tolist())) == flat.size and set(flat.tolist()) <= set(positions.tolist())


def test_training_and_heldout_positions_may_not_overlap(tmp_path):
    from askshift.lib.data.specs import get_spec
    from askshift.lib.support.classifier import DomainSetup, fit_and_score

    data, ref, shift = coloured_sets()
    setup = DomainSetup(spec=get_spec("out_of_support"), shifted_split="tint_val", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="overlap"):
        fit_and_score(setup, data, None, np.array([1, 2, 3]), np.array([3, 4]), 1e-3, tmp_path)


def test_the_domain_image_cache_reads_each_key_once_and_keeps_the_newest_entries():
    from askshift.lib.support.classifier import DomainImageCache

    cache, reads = DomainImageCache(max_entries=2), []

    def reader(key):
        return lambda: reads.append(key) or f"images {key}"

    for key in ("a", "a", "b", "a", "c", "b"):
        assert cache.get_or_read(key, reader(key)) == f"images {key}"
    assert reads == ["a", "b", "c", "b"]  # "b" was the least recently used when "c" came in
    assert len(cache) == 2
