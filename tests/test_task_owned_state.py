"""The tasks' process-wide state (the loader pool, the domain-classifier image cache) travels to a Dask worker as a
reference to that worker's own object: Dask pickles a Prefect task's function by value, with the globals it reads."""
from __future__ import annotations

import pickle

import cloudpickle

from askshift.tasks import loader_pool, support, training


def test_the_pool_and_the_image_cache_pickle_as_the_receiving_process_own():
    for owned in (loader_pool.LOADER_POOL, support.DOMAIN_IMAGES):
        assert pickle.loads(pickle.dumps(owned)) is owned
        assert cloudpickle.loads(cloudpickle.dumps(owned)) is owned


def test_a_flow_that_runs_tasks_reading_the_pool_pickles_by_value():
    """What distributed does when it ships a flow run's context to a SLURM worker: a Prefect flow's or task's
    function is not importable under its own name (the name is the Prefect object), so cloudpickle sends it by value
    with the globals it reads: the tasks, their functions, and through them the pool and the image cache."""
    from askshift.flows import baseline, split

    for module, flow in ((baseline, baseline.synthetic_shift_baseline), (split, split.split_shift)):
        cloudpickle.register_pickle_by_value(module)
        try:
            restored = cloudpickle.loads(cloudpickle.dumps(flow.fn))
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        assert restored is not flow.fn and restored.__name__ == flow.fn.__name__
    assert "LOADER_POOL" in training.train_one_model.fn.__code__.co_names or \
        "LOADER_POOL" in training.train_one_model.fn.__globals__
