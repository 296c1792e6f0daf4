"""Prefect tasks that publish results as artifacts: a table (NaN -> None), markdown with inlined plots, the result
note on the run the user opened, progress bars; and the artifact key rule.

Key rule: Prefect keys hold lowercase letters, digits and '-' only, so every other character run becomes one '-':
experiment ``digits-tint_p=0.5`` publishes ``digits-tint-p-0-5-report``, ``digits-tint-p-0-5-er``,
``digits-tint-p-0-5-er-summary`` and ``digits-tint-p-0-5-result``.  A store other than the flow's default adds a
six-character hash of its absolute path after the experiment (``digits-tint-p-0-5-3f9a1c-report``), so reports of
two stores never hide each other.
"""
from __future__ import annotations

import contextvars
import hashlib
import math
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from askshift.lib.report.markdown import inline_images

_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = _KEY_CHARS.sub("-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "artifact"


def store_tag(store: str | Path, default: str | Path = "store") -> str | None:
    """Six hex characters naming ``store`` (its absolute path); None when it is the default store (``default``
    resolved against the working directory, as the flows resolve it)."""
    root = Path(store).expanduser().resolve()
    if root == Path(default).expanduser().resolve():
        return None
    return hashlib.sha256(str(root).encode()).hexdigest()[:6]


def experiment_key(experiment: str, store: str | Path, default_store: str | Path = "store") -> str:
    """The key stem of an experiment's artifacts: its slug, plus the store's hash when the store is not the default."""
    tag = store_tag(store, default_store)
    return artifact_key(experiment if tag is None else f"{experiment}-{tag}")


def store_words(store: str | Path) -> str:
    """``store /abs/path`` for artifact descriptions (the store every key and path belongs to)."""
    return f"store {Path(store).expanduser().resolve()}"


def artifact_url(key: str | None = None, artifact_id: Any = None) -> str:
    """The UI page of an artifact (by id, else the latest version of a key): absolute when the UI address is known."""
    from prefect.settings import PREFECT_UI_URL

    path = f"/artifacts/artifact/{artifact_id}" if artifact_id is not None else f"/artifacts/key/{key}"
    base = PREFECT_UI_URL.value()
    return f"{str(base).rstrip('/')}{path}" if base else path


# The deployment run (flows/deployed.py) whose direct subflow is the flow the user asked for: that subflow's result
# note belongs on the deployment run, the run the user opened from the UI.
_RESULT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("askshift_result_run", default=None)


def set_result_run(flow_run_id: Any) -> contextvars.Token:
    return _RESULT_RUN.set(str(flow_run_id) if flow_run_id is not None else None)


def reset_result_run(token: contextvars.Token) -> None:
    _RESULT_RUN.reset(token)


def result_run_id() -> str | None:
    """Where the current flow's result note goes: its own run when it is a top-level run (``askshift run``), the
    deployment run when it is that run's direct subflow, None when another askshift flow called it (the caller
    publishes the note)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    if ctx.flow_run.parent_task_run_id is None:
        return str(ctx.flow_run.id)
    wrapper = _RESULT_RUN.get()
    if wrapper is None:
        return None
    from prefect.runtime import flow_run

    return wrapper if flow_run.get_parent_flow_run_id() == wrapper else None


def publish_result(key: str, markdown: str, description: str, link: str | None = None,
                   link_text: str | None = None) -> bool:
    """The result note of the current flow (markdown: one line of result, then where the report and tables are)
    and, with ``link``, a link artifact to the report, on the run ``result_run_id`` names; the flow's own run gets
    an unkeyed copy when that is another run.  Never fails the flow: artifacts are a view of the store."""
    from prefect.artifacts import LinkArtifact, MarkdownArtifact
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    try:
        target = result_run_id()
        if target is None:
            return False
        key = artifact_key(key)
        own = str(FlowRunContext.get().flow_run.id)
        MarkdownArtifact(key=key, markdown=markdown, description=description, flow_run_id=target).create(_sync=True)
        if link:
            LinkArtifact(key=f"{key}-link", link=link, link_text=link_text or link,
                         description=f"link to the report: {description}", flow_run_id=target).create(_sync=True)
        if own != target:
            MarkdownArtifact(markdown=markdown, description=description, flow_run_id=own).create(_sync=True)
        return True
    except Exception as exc:  # noqa: BLE001 -- the store holds the results; a missing note must not fail the run
        get_run_logger().warning(f"could not publish the result artifact {key}: {exc}")
        return False


class ProgressBar:
    """A progress artifact (0-100 %) on the run the user opened (``result_run_id``, else the current flow run),
    updated as work finishes; silent when Prefect cannot record it (artifacts are a view: the terminal has the lines)."""

    def __init__(self, key: str, description: str, total: int):
        self.key, self.description, self.total, self.done = artifact_key(key), description, max(1, total), 0
        self.value, self.artifact_id = 0.0, None
        try:
            from prefect.artifacts import ProgressArtifact
            from prefect.context import FlowRunContext

            # On the run the user opened (the deployment run), else this flow's own run.
            target = result_run_id() or str(FlowRunContext.get().flow_run.id)
            self.artifact_id = ProgressArtifact(key=self.key, description=description, progress=0.0,
                                                flow_run_id=target).create(_sync=True).id
        except Exception:  # noqa: BLE001
            self.artifact_id = None

    def set(self, percent: float, description: str | None = None) -> None:
        """Move the bar to ``percent`` (never backwards)."""
        self.value = max(self.value, min(100.0, float(percent)))
        if self.artifact_id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, self.value, description=description)
        except Exception:  # noqa: BLE001
            pass

    def advance(self, steps: int = 1, what: str | None = None) -> None:
        """``steps`` more of ``total`` finished; the description says how many (and what finished last)."""
        self.done = min(self.total, self.done + steps)
        text = f"{self.description}: {self.done} of {self.total} done" + (f" (last: {what})" if what else "")
        self.set(100.0 * self.done / self.total, text)


def _clean(value: Any) -> Any:
    # Prefect refuses NaN/inf in tables (not JSON); None renders as an empty cell.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_rows(df) -> list[dict[str, Any]]:
    """Rows of a Polars DataFrame as JSON-safe dicts (NaN/inf -> None; lists/arrays dropped)."""
    import polars as pl

    scalar = [c for c, t in df.schema.items() if not isinstance(t, (pl.List, pl.Array, pl.Struct, pl.Object))]
    return [{k: _clean(v) for k, v in row.items()} for row in df.select(scalar).to_dicts()]


@task(name="publish table artifact", cache_policy=NO_CACHE, task_run_name="publish table {key}")
def publish_table(key: str, df, description: str | None = None) -> str:
    """Create a table artifact from a Polars DataFrame; returns the (sanitised) key."""
    from prefect.artifacts import create_table_artifact

    key = artifact_key(key)
    create_table_artifact(table_rows(df), key=key, description=description)
    return key


@task(name="publish markdown artifact", cache_policy=NO_CACHE, task_run_name="publish markdown {key}")
def publish_markdown(key: str, markdown: str, base_dir: str | None = None, description: str | None = None) -> str:
    """Create a markdown artifact; images linked relative to ``base_dir`` are embedded as base64 data URIs."""
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(key)
    if base_dir is not None:
        markdown = inline_images(markdown, Path(base_dir))
    create_markdown_artifact(markdown, key=key, description=description)
    return key


__all__ = ["ProgressBar", "artifact_key", "artifact_url", "experiment_key", "publish_markdown", "publish_result",
           "publish_table", "result_run_id", "store_tag", "store_words", "table_rows"]
