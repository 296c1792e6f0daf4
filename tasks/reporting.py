"""Prefect tasks that publish results as artifacts: a table (NaN -> None) and markdown with inlined plots."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = _KEY_CHARS.sub("-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "artifact"


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

    from lib.report import inline_images

    key = artifact_key(key)
    if base_dir is not None:
        markdown = inline_images(markdown, Path(base_dir))
    create_markdown_artifact(markdown, key=key, description=description)
    return key


__all__ = ["artifact_key", "publish_markdown", "publish_table", "table_rows"]
