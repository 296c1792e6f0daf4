"""Deployment entry flows: each askshift flow with its own typed parameters plus ``execution`` (where its tasks run).

``askshift run FLOW --backend B --profile P`` chooses the task runner on the command line; a deployment triggered
from the Prefect UI or a schedule chooses it with the ``execution`` parameter instead. Each entry flow checks that
choice, starts the backend and runs the real flow as a subflow on it. The run the user opened (the deployment
run) gets that flow's result note (``KEY-result``: one line of result, a link to the report artifact, absolute
paths of the report and tables) and its progress bar; the report and tables themselves are artifacts of the
subflows that made them (by key on the Artifacts page too; ``askshift.tasks.reporting``: the key rule).

Run names say what a run does (``baseline digits tint_p=0.5 ep6 (local)``, ``askshift.flows.naming``); a name typed in
the UI's Custom run form is kept.

The signatures are written out (not generated) because Prefect builds the UI form from them, and ``prefect deploy``
reads them from this file's source. Flows that the chosen flow calls in turn (demo's stages; the baseline flow of
finetune, the finetune flow of hparam-ablation) run their tasks on the same cluster (``askshift.flows.backends.on_caller_backend``).
"""
from __future__ import annotations

from typing import Any

from prefect import Flow, flow, get_run_logger

from askshift.flows import naming
from askshift.flows.ask import AskConfig, ask
from askshift.flows.baseline import BaselineConfig, synthetic_shift_baseline
from askshift.flows.demo import demo
from askshift.flows.demo_config import DemoConfig
from askshift.flows.execution import Execution
from askshift.flows.finetune import AblationConfig, FinetuneConfig, hparam_ablation, pretrained_finetune
from askshift.flows.naming import run_name
from askshift.flows.report import ReportConfig, report
from askshift.flows.split import SplitConfig, split_shift
from askshift.flows.zoo import ZooConfig, zoo_evaluate
from askshift.lib.report.markdown import ReportResult
from askshift.tasks.reporting import reset_result_run, set_result_run


def run_on_backend(target: Flow, execution: Execution, **parameters: Any) -> Any:
    """Run ``target(**parameters)`` as a subflow of the current flow run, its tasks on ``execution``'s backend."""
    from prefect.context import FlowRunContext

    where = execution.backend + (f" (profile {execution.profile})" if execution.profile else "")
    get_run_logger().info("running flow %r with its tasks on backend %s", target.name, where)
    ctx = FlowRunContext.get()
    # The subflow's result note and progress bar go on this run: the one the user opened.
    token = set_result_run(ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None)
    try:
        with execution.task_runner() as runner:
            return target.with_options(task_runner=runner)(**parameters)
    finally:
        reset_result_run(token)


@flow(name="run-baseline", flow_run_name=run_name(naming.baseline_name))
def run_baseline(config: BaselineConfig, execution: Execution = Execution()) -> str:
    """From-scratch baselines (flow synthetic-shift-baseline) on the chosen backend.

    Args:
        config: settings of the from-scratch baselines (dataset, shift, models, training, store)
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            baseline --backend B --profile P
    """
    return run_on_backend(synthetic_shift_baseline, execution, config=config)


@flow(name="run-finetune", flow_run_name=run_name(naming.finetune_name))
def run_finetune(config: FinetuneConfig, execution: Execution = Execution()) -> dict:
    """Fine-tuning of pre-trained models (flow pretrained-finetune) on the chosen backend.

    Args:
        config: settings of the fine-tuning experiment (dataset, shift, models, strategies, recipe, store)
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            finetune --backend B --profile P
    """
    return run_on_backend(pretrained_finetune, execution, config=config)


@flow(name="run-hparam-ablation", flow_run_name=run_name(naming.ablation_name))
def run_hparam_ablation(config: AblationConfig, execution: Execution = Execution()) -> dict:
    """Fine-tuning hyper-parameter ablation (flow hparam-ablation) on the chosen backend.

    Args:
        config: the base fine-tuning experiment and the hyper-parameter values to try
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            hparam-ablation --backend B --profile P
    """
    return run_on_backend(hparam_ablation, execution, config=config)


@flow(name="run-split", flow_run_name=run_name(naming.split_name))
def run_split(config: SplitConfig, execution: Execution = Execution()) -> dict[str, dict[str, Any]]:
    """In-support / out-of-support split of a shift (flow split_shift) on the chosen backend.

    Args:
        config: the data to split (spec: reference distribution and shifted targets), the domain classifier and
            the store
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            split --backend B --profile P
    """
    return run_on_backend(split_shift, execution, config=config)


@flow(name="run-zoo-evaluation", flow_run_name=run_name(naming.zoo_name))
def run_zoo_evaluation(config: ZooConfig, execution: Execution = Execution()) -> dict[str, Any]:
    """A zoo of published models on both sub-splits (flow zoo_evaluate) on the chosen backend.

    Args:
        config: the zoo's models and weights, and the split settings (data, store) they are evaluated on
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            zoo-evaluate --backend B --profile P
    """
    return run_on_backend(zoo_evaluate, execution, config=config)


@flow(name="run-report", flow_run_name=run_name(naming.report_name))
def run_report(config: ReportConfig, execution: Execution = Execution()) -> ReportResult:
    """Effective-robustness report of one experiment folder (flow report) on the chosen backend.

    Args:
        config: the experiment folder (store.root: an absolute path, askshift serve shows the default store resolved;
            experiment: what the baseline flow prints), how ER is computed and judged (er) and whether to publish
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift run
            report --backend B --profile P
    """
    return run_on_backend(report, execution, config=config)


@flow(name="run-ask", flow_run_name=run_name(naming.ask_name))
def run_ask(config: AskConfig, execution: Execution = Execution()) -> dict[str, Any]:
    """Will pre-training help on this shift? (flow ask) on the chosen backend.

    Args:
        config: the reference data and the folder of shifted images (split.spec, target 'shifted'), the domain
            classifier, epsilon and the store; models_from names trained models for a label-free ER estimate
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift ask
            --backend B --profile P
    """
    return run_on_backend(ask, execution, config=config)


@flow(name="run-demo", flow_run_name=run_name(naming.demo_name))
def run_demo(config: DemoConfig = DemoConfig(), execution: Execution = Execution()) -> str:
    """The paper's experiment in miniature (flow demo) on the chosen backend.

    Args:
        config: the demo's settings (quick variant, seed, store; the rest are the miniature experiment's sizes)
        execution: where the flow's tasks run: local, dask or slurm (slurm needs a profile), like askshift demo
    """
    return run_on_backend(demo, execution, config=config)
