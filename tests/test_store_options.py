"""Every flow config nests one StoreOptions (store root and cache folder), resolved in one place."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest


def _configs():
    from askshift.flows.baseline import BaselineConfig
    from askshift.flows.demo_config import DemoConfig
    from askshift.flows.finetune import FinetuneConfig
    from askshift.flows.report import ReportConfig
    from askshift.flows.split import SplitConfig
    from askshift.lib.data.specs import get_spec

    return {
        "baseline": (BaselineConfig, {}, "store"),
        "finetune": (FinetuneConfig, {}, "store"),
        "split": (SplitConfig, {"spec": get_spec("out_of_support")}, "store"),
        "report": (ReportConfig, {"experiment": "e"}, "store"),
        "demo": (DemoConfig, {}, "askshift-store"),
    }


@pytest.mark.parametrize("name", ["baseline", "finetune", "split", "report", "demo"])
def test_every_flow_config_takes_a_store_path_and_a_top_level_cache_dir_into_its_store_options(name, tmp_path):
    from askshift.lib.store import StoreOptions

    cls, required, default_root = _configs()[name]
    assert "cache_dir" not in cls.model_fields and cls.model_fields["store"].annotation is StoreOptions
    config = cls(**required, store=str(tmp_path / "s"), cache_dir=str(tmp_path / "c"))
    assert config.store == StoreOptions(root=str(tmp_path / "s"), cache_dir=str(tmp_path / "c"))
    # A store mapping without a root, or a cache folder alone, keeps the config's own default root.
    assert cls(**required, store={"cache_dir": "c"}).store == StoreOptions(root=default_root, cache_dir="c")
    assert cls(**required, cache_dir="c").store == StoreOptions(root=default_root, cache_dir="c")
    assert cls.model_validate_json(config.model_dump_json()) == config


def test_store_options_resolve_root_and_cache_against_the_working_directory(tmp_path, monkeypatch):
    from askshift.lib.store import CACHE_FOLDER, StoreOptions

    monkeypatch.chdir(tmp_path)
    store = StoreOptions(root="s")
    assert store.resolved_root() == tmp_path / "s"
    assert store.resolved_cache_dir() == tmp_path / "s" / CACHE_FOLDER
    assert store.experiment("e").root == tmp_path / "s" / "e"
    assert StoreOptions(root="s", cache_dir="~/c").resolved_cache_dir() == Path("~/c").expanduser()
    # What a flow hands the flows it starts: the same folders, absolute.
    assert store.resolved() == StoreOptions(root=str(tmp_path / "s"))
    assert StoreOptions(root="s", cache_dir="c").resolved().cache_dir == str(tmp_path / "c")


def test_baseline_store_flags_override_the_config_files_store_field_by_field():
    from askshift.cli.commands.run_baseline import _with_store_flags

    file = {"store": {"root": "from-file", "cache_dir": "file-cache"}, "epochs": 2}
    flags = argparse.Namespace(store="from-flag", cache_dir=None)
    assert _with_store_flags(file, flags) == {"store": {"root": "from-flag", "cache_dir": "file-cache"}, "epochs": 2}
    legacy = {"store": "from-file", "cache_dir": "file-cache"}
    flags = argparse.Namespace(store=None, cache_dir="flag-cache")
    assert _with_store_flags(legacy, flags) == {"store": {"root": "from-file", "cache_dir": "flag-cache"}}
