"""Deployment entry flows: each askshift flow with its own typed parameters plus ``execution`` (where its tasks run).

``askshift run FLOW --backend B --profile P`` chooses the task runner on the command line; a deployment triggered
from the Prefect UI or a schedule chooses it with the ``execution`` parameter instead. Each entry flow checks that
choice, starts the backend and runs the real flow as a subflow on it, so the flow's tables, reports and artifacts
belong to that subflow run (the parent run's "Subflow runs" tab; artifacts also by key on the Artifacts page).

The signatures are written out (not generated) because Prefect builds the UI form from them, and ``prefect deploy``
reads them from this file's source. Flows that the chosen flow calls in turn (demo's stages; the baseline flow of
finetune, the finetune flow of hparam-ablation) run their tasks on the same cluster (``flows.backends.on_caller_backend``).
"""
from __future__ import annotations

from typing import Any

from prefect import Flow, flow, get_run_logger

from flows.baseline import BaselineConfig, synthetic_shift_baseline
from flows.demo import demo
from flows.execution import Execution
from flows.finetune import AblationConfig, FinetuneConfig, hparam_ablation, pretrained_finetune
from flows.report import report
from flows.split import SplitConfig, split_shift
from flows.zoo import ZooConfig, zoo_evaluate
from lib.demo import DemoConfig
from lib.report import ReportResult


def run_on_backend(target: Flow, execution: Execution, **parameters: Any) -> Any:
    """Run ``target(**parameters)`` as a subflow of the current flow run, its tasks on ``execution``'s backend."""
    where = execution.backend + (f" (profile {execution.profile})" if execution.profile else "")
    get_run_logger().info("running flow %r with its tasks on backend %s", target.name, where)
    with execution.task_runner() as runner:
        return target.with_options(task_runner=runner)(**parameters)


@flow(name="run-baseline", flow_run_name="baseline on {execution.backend}")
def run_baseline(config: BaselineConfig, execution: Execution = Execution()) -> str:
    """From-scratch baselines (flow synthetic-shift-baseline) on the chosen backend."""
    return run_on_backend(synthetic_shift_baseline, execution, config=config)


@flow(name="run-finetune", flow_run_name="finetune on {execution.backend}")
def run_finetune(config: FinetuneConfig, execution: Execution = Execution()) -> dict:
    """Fine-tuning of pre-trained models (flow pretrained-finetune) on the chosen backend."""
    return run_on_backend(pretrained_finetune, execution, config=config)


@flow(name="run-hparam-ablation", flow_run_name="hparam ablation on {execution.backend}")
def run_hparam_ablation(config: AblationConfig, execution: Execution = Execution()) -> dict:
    """Fine-tuning hyper-parameter ablation (flow hparam-ablation) on the chosen backend."""
    return run_on_backend(hparam_ablation, execution, config=config)


@flow(name="run-split", flow_run_name="split on {execution.backend}")
def run_split(config: SplitConfig, execution: Execution = Execution()) -> dict[str, dict[str, Any]]:
    """In-support / out-of-support split of a shift (flow split_shift) on the chosen backend."""
    return run_on_backend(split_shift, execution, config=config)


@flow(name="run-zoo-evaluation", flow_run_name="zoo evaluation on {execution.backend}")
def run_zoo_evaluation(config: ZooConfig, execution: Execution = Execution()) -> dict[str, Any]:
    """A zoo of published models on both sub-splits (flow zoo_evaluate) on the chosen backend."""
    return run_on_backend(zoo_evaluate, execution, config=config)


@flow(name="run-report", flow_run_name="report {experiment} on {execution.backend}")
def run_report(
    store: str,
    experiment: str,
    fit_range: tuple[float, float] | None = None,
    scale: str = "probit",
    metric: str = "accuracy",
    baseline_group: str = "baseline",
    bootstrap: int = 0,
    binomial: bool = False,
    publish: bool = True,
    bootstrap_examples: int = 0,
    seed: int = 0,
    execution: Execution = Execution(),
) -> ReportResult:
    """Effective-robustness report of one experiment folder (flow report) on the chosen backend."""
    return run_on_backend(report, execution, store=store, experiment=experiment, fit_range=fit_range, scale=scale,
                          metric=metric, baseline_group=baseline_group, bootstrap=bootstrap, binomial=binomial,
                          publish=publish, bootstrap_examples=bootstrap_examples, seed=seed)


@flow(name="run-demo", flow_run_name="demo on {execution.backend}")
def run_demo(config: DemoConfig = DemoConfig(), execution: Execution = Execution()) -> str:
    """The paper's experiment in miniature (flow demo) on the chosen backend."""
    return run_on_backend(demo, execution, config=config)
