"""Tags of askshift's Prefect tasks, read by the cluster backends."""

# Tasks tagged "gpu" hold one Dask GPU resource slot on GPU workers (askshift.flows.cluster, askshift.flows.backends).
GPU_TAG = "gpu"
