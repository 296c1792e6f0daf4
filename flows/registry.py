"""Every askshift flow, once: its CLI name, the Prefect flow, its config model, its deployment and entry flow.

``askshift run NAME`` builds its sub-commands from here (the flag parsing lives in ``askshift.cli.commands.run_NAME``),
``deployments/prefect.yaml`` declares one deployment per entry, and the tests check each entry against both.  Import
paths are strings, so reading the registry (``askshift --help``) imports neither Prefect nor torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from askshift.lib.registry import Registry


@dataclass(frozen=True)
class FlowEntry:
    """One flow: ``flow`` and ``config`` are ``module:attribute`` paths; ``entry`` is the deployment's entry flow in
    ``askshift.flows.deployed`` (the flow's parameters plus ``execution``); ``cli`` is False for a flow with a
    command of its own (``askshift demo``)."""

    flow: str
    config: str | None
    deployment: str
    entry: str
    help: str
    cli: bool = True

    def load_flow(self) -> Any:
        return _load(self.flow)

    def load_config(self) -> Any:
        return _load(self.config) if self.config else None

    def load_entry(self) -> Any:
        return _load(f"askshift.flows.deployed:{self.entry}")


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


FLOWS: Registry[FlowEntry] = Registry("flow")


def register_flow(name: str, entry: FlowEntry) -> None:
    FLOWS.add(name, entry, entry.help)


register_flow("baseline", FlowEntry(
    flow="askshift.flows.baseline:synthetic_shift_baseline", config="askshift.flows.baseline:BaselineConfig",
    deployment="baseline", entry="run_baseline",
    help="train from-scratch baseline models on a shift's reference data (epoch checkpoints x train fractions), "
         "predict them on every split and write metrics, ER tables and the report"))
register_flow("finetune", FlowEntry(
    flow="askshift.flows.finetune:pretrained_finetune", config="askshift.flows.finetune:FinetuneConfig",
    deployment="finetune", entry="run_finetune",
    help="fine-tune pre-trained models (FT, LP, LP-FT, ZS-FT + a same-architecture scratch control) on a shift's "
         "reference data: LR sweep, best LR by reference-validation accuracy, copies, ER against the baseline line"))
register_flow("hparam", FlowEntry(
    flow="askshift.flows.finetune:hparam_ablation", config="askshift.flows.finetune:AblationConfig",
    deployment="hparam-ablation", entry="run_hparam_ablation",
    help="hyper-parameter ablation: fine-tune (or reuse) one model and strategy, then vary epochs, learning rate, "
         "batch size and weight decay one at a time around the selected config and report ER per value"))
register_flow("split", FlowEntry(
    flow="askshift.flows.split:split_shift", config="askshift.flows.split:SplitConfig",
    deployment="split", entry="run_split",
    help="split a shifted data set into the part the reference distribution covers (in-support) and the part it "
         "does not (out-of-support) with a cross-fitted, calibrated domain classifier; write the membership, "
         "split sizes per epsilon, ER per part and a report section"))
register_flow("zoo-evaluate", FlowEntry(
    flow="askshift.flows.zoo:zoo_evaluate", config="askshift.flows.zoo:ZooConfig",
    deployment="zoo-evaluation", entry="run_zoo_evaluation",
    help="predict published timm classifiers (weights in local files) on a reference and a shifted data set with "
         "each model's own evaluation transform, split the shifted set into in-support and out-of-support parts (as "
         "`run split`) and report the effective robustness of the pretrained vs the baseline models on each part"))
register_flow("report", FlowEntry(
    flow="askshift.flows.report:report", config=None,
    deployment="report", entry="run_report",
    help="metrics from stored predictions, effective robustness of every shifted split against source_val "
         "(full-range and comparable-baseline fits), plots and report.md, published as Prefect artifacts"))
register_flow("ask", FlowEntry(
    flow="askshift.flows.ask:ask", config="askshift.flows.ask:AskConfig",
    deployment="ask", entry="run_ask",
    help="will pre-training help on this shift? a reference data set and a folder of shifted images (no labels "
         "needed) -> in-support / out-of-support split, the verdict, its evidence and a label-free ER estimate"))
register_flow("demo", FlowEntry(
    flow="askshift.flows.demo:demo", config="askshift.flows.demo_config:DemoConfig",
    deployment="demo", entry="run_demo", cli=False,
    help="the paper's experiment in miniature on the bundled digits: baselines, a pre-trained stand-in fine-tuned, "
         "ER per shift and a split of a mixed shift (`askshift demo`)"))


def cli_module(name: str) -> str:
    """The module of ``askshift run NAME``'s flags and execution."""
    return f"askshift.cli.commands.run_{name.replace('-', '_')}"


__all__ = ["FLOWS", "FlowEntry", "cli_module", "register_flow"]
