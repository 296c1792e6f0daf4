"""Prefect task "predict one zoo model on one split": a published timm classifier's logits into the store."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lib.specs import ExperimentSpec
from lib.store import Store


@task(name="predict one zoo model", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE,
      task_run_name="zoo {model} on {split}")
def predict_zoo_model(store: str, experiment: str, model: str, split: str, spec: ExperimentSpec, cache_dir: str,
                      weights_dir: str | None = None, num_classes: int | None = None, device: str = "cpu",
                      batch_size: int = 256, num_workers: int = 1, input_size: int | None = None) -> str:
    """Predict ``model`` (timm ``arch.tag``) on ``split``; skipped when its predictions exist."""
    import numpy as np

    from lib.evaluation import predict
    from lib.loaders import LoaderConfig, split_info, split_loader
    from lib.paper_zoo import load_zoo_model

    exp = Store(store).experiment(experiment)
    if exp.has_predictions(model, split):
        return str(exp.predictions_path(model, split))
    net = load_zoo_model(model, weights_dir, num_classes, input_size)
    config = LoaderConfig(batch_size=batch_size, num_workers=num_workers, device=device)
    logits, labels, indices = predict(net, split_loader(spec, split, cache_dir, config, train=False), device)
    info = split_info(spec, split, cache_dir)
    if info.class_mask is not None and logits.shape[1] == len(info.class_mask):
        # A set that covers only some classes (ImageNet-R): predict among those, as the paper did.
        logits[:, ~np.asarray(info.class_mask, bool)] = -1e4
    groups = np.asarray(info.groups)[indices] if info.groups is not None else None
    path = exp.write_predictions(model, split, logits, labels, indices, groups)
    get_run_logger().info(f"{model} on {split}: accuracy {float((logits.argmax(1) == labels).mean()):.4f}")
    return str(path)
