"""The layers of the tree: dependencies point one way (cli -> flows -> tasks -> lib), lib has no Prefect, and
lib's subpackages read like the method (data -> models -> robustness -> support -> report)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"lib": 0, "tasks": 1, "flows": 2, "cli": 3}
# Within lib, a subpackage may import only those before it (and lib's top-level modules: registry, store, names).
LIB_ORDER = {"data": 0, "models": 1, "robustness": 2, "support": 3, "report": 4}


def parse(path: Path) -> ast.Module:
    """``ast.parse``, once more when CPython 3.11's AST constructor reports a depth mismatch: its depth counter is
    kept per interpreter and can go out of step (cpython gh-106905, seen in threaded programs; the worker runs Prefect
    and Dask threads left by earlier tests), failing a parse of a file that is fine: one clean-clone run hit it on an
    unchanged module."""
    text = path.read_text()
    try:
        return ast.parse(text, str(path))
    except SystemError as exc:
        if "recursion depth mismatch" not in str(exc):
            raise
        return ast.parse(text, str(path))


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (module level and inside functions), with its line."""
    found = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def sources(layer: str) -> list[Path]:
    return sorted((REPO / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = []
    for path in sources(layer):
        for module, line in imports(path):
            parts = module.split(".")
            if parts[0] == "askshift" and len(parts) > 1 and parts[1] in LAYERS and LAYERS[parts[1]] > LAYERS[layer]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
            if parts[0] in LAYERS and parts[0] != "askshift":  # the old top-level names are gone
                wrong.append(f"{path.relative_to(REPO)}:{line} imports top-level {module}")
    assert not wrong, "\n".join(wrong)


def test_lib_never_imports_prefect():
    wrong = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in sources("lib") for m, line in imports(p)
             if m.split(".")[0] in ("prefect", "prefect_dask", "dask_jobqueue")]
    assert not wrong, "\n".join(wrong)


def test_lib_subpackages_import_only_earlier_steps_of_the_method():
    wrong = []
    for sub, rank in LIB_ORDER.items():
        for path in sorted((REPO / "lib" / sub).rglob("*.py")):
            for module, line in imports(path):
                parts = module.split(".")
                if parts[:2] == ["askshift", "lib"] and len(parts) > 2 and LIB_ORDER.get(parts[2], -1) > rank:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
