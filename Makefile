# askshift: the two commands of the README's quick start, plus helpers.
# Every target first runs .ci/bootstrap.sh: it creates .venv/ and installs everything
# (Debian packages included) the first time, and takes ~0.1 s when nothing changed.
.PHONY: demo test test-fast bootstrap zoo serve slurm-up slurm-down bench clean-store

STORE ?= askshift-store
SEED ?= 0
PYTEST_ARGS ?=

bootstrap:
	@bash .ci/bootstrap.sh

demo: bootstrap  ## the main job: the paper's experiment in miniature (CPU, minutes)
	@.venv/bin/askshift demo --seed $(SEED) --store $(STORE)

TEST_WORKERS ?= 2

test: bootstrap  ## lint (ruff: pyflakes + import order), then the whole test suite (starts its own Prefect API and single-node SLURM cluster), 2 worker processes
	@.venv/bin/ruff check .
	@.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: bootstrap  ## lint, then the suite without the end-to-end flows
	@.venv/bin/ruff check .
	@.venv/bin/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

zoo: bootstrap  ## does pre-training help on ImageNet-Sketch? (~1,500 published timm models)
	@.venv/bin/askshift zoo --results ../shared/data/timm-results --shift sketch --store $(STORE)

serve: bootstrap  ## local Prefect server on 127.0.0.1 with every deployment and a worker
	@.venv/bin/askshift serve

slurm-up: bootstrap
	@bash deployments/slurm/local-cluster.sh up

slurm-down:
	@bash deployments/slurm/local-cluster.sh down

bench: bootstrap
	@.venv/bin/python benchmarks/loader.py
	@.venv/bin/python benchmarks/orchestration.py
	@.venv/bin/python benchmarks/loader_pool.py

clean-store:
	rm -rf $(STORE)
