"""Prefect task "predict one zoo model on one split": a published timm classifier's logits into the store."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from askshift.lib.data.specs import ExperimentSpec
from askshift.lib.data.transforms import decoding
from askshift.lib.store import Store
from askshift.tasks.loader_pool import LOADER_POOL
from askshift.tasks.retry import retry_if_transient
from askshift.tasks.tags import GPU_TAG


@task(name="predict one zoo model", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, tags=[GPU_TAG],
      retry_condition_fn=retry_if_transient,
      task_run_name="zoo {model} on {split}")
def predict_zoo_model(store: str, experiment: str, model: str, split: str, spec: ExperimentSpec, cache_dir: str,
                      weights_dir: str | None = None, num_classes: int | None = None, device: str = "cpu",
                      batch_size: int = 256, num_workers: int = 1, resolution: int | None = None,
                      targets: tuple[str, ...] | None = None) -> str:
    """Predict ``model`` (timm ``arch.tag``) on ``split``; skipped when its predictions exist.

    Images are read as timm's evaluation transform of the model says (photos: centre crop with its crop_pct at its
    resolution, or ``resolution``; same-size arrays as stored, resized only to ``resolution``).  When the shifted sets
    (``targets``, default every target of the spec) cover only some classes (ImageNet-R), predictions on every split
    are taken among those classes and only the examples of those classes are kept (``askshift.lib.data.class_subset.among_classes``).
    """
    import numpy as np

    from askshift.lib.data.class_subset import among_classes, spec_class_subset
    from askshift.lib.data.loaders import LoaderConfig, split_info, split_loader
    from askshift.lib.models.evaluation import predict
    from askshift.lib.models.families import timm_transform
    from askshift.lib.robustness.paper_zoo import load_zoo_model

    exp = Store(store).experiment(experiment)
    if exp.has_predictions(model, split):
        return str(exp.predictions_path(model, split))
    net = load_zoo_model(model, weights_dir, num_classes)
    dist, _ = spec.distribution(split)
    reading = decoding(dist.dataset, timm_transform(model), train=False, resolution=resolution)
    config = LoaderConfig(batch_size=batch_size, num_workers=num_workers, device=device, **reading.loader_fields())
    loader = split_loader(spec, split, cache_dir, config, train=False, pool=LOADER_POOL)
    try:
        logits, labels, indices = predict(net, loader, device)
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()  # hands the compiled FFCV loader back to the pool
    logits, keep = among_classes(logits, labels, spec_class_subset(spec, cache_dir, targets))
    if not keep.all():
        logits, labels, indices = logits[keep], labels[keep], indices[keep]
    info = split_info(spec, split, cache_dir)
    groups = np.asarray(info.groups)[indices] if info.groups is not None else None
    path = exp.write_predictions(model, split, logits, labels, indices, groups)
    get_run_logger().info(f"{model} on {split} ({reading.decoder} at {reading.resolution or 'stored size'} px): "
                          f"accuracy {float((logits.argmax(1) == labels).mean()):.4f}")
    return str(path)
