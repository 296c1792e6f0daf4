"""The results store: one folder per experiment, Parquet tables, atomic writes, content-addressed runs.

Layout of a store root::

    STORE/
      <experiment>/
        config.json                      resolved experiment config
        runs/<run_id>/                   one trained model (content-addressed by its config)
            config.json  checkpoints/  done  .lock (held while the run trains)
        predictions/<model>/<split>.parquet   logits per (model, split)
        subsplits/<split>.parquet        in/out-of-support membership per example (split flow)
        tables/<name>.parquet            metrics, ER, ... (Polars reads them in one line)
        tables/<name>.config.json        resolved config beside each table
        plots/<name>.png
        report.md

Every write goes to a temporary file in the same folder and is renamed into place, so a
killed process never leaves a half-written file under a final name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: str) -> str:
    """A file-system-safe version of a model or split name (``timm:vit.augreg`` -> ``timm_vit.augreg``)."""
    cleaned = _SAFE.sub("_", name).strip("._")
    if not cleaned:
        raise ValueError(f"name {name!r} has no usable characters")
    return cleaned


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, pydantic models, paths, enums, numpy scalars and tuples into JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return to_jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def content_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a config (sorted JSON), used to name runs and cache results."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# A temporary file whose writer cannot be asked (another host, or a name from before the pid was recorded) is
# left alone this long: far longer than any write or checksum of one file takes.
STALE_TMP_SECONDS = 24 * 3600


# mkstemp's random part has no "~" or ".", nor has the host hash, so the last three "~" fields are unambiguous;
# ".tmp.errors" and the like are the writer's own side files.
_TEMP_NAME = re.compile(r"\.(?P<target>.+)~(?P<host>[^~]*)~(?P<pid>\d+)~[^~.]+\.tmp(?:\..*)?")


def _host() -> str:
    """This host as temp names record it: a short hash of hostname and pid namespace (a container sharing the
    hostname and the file system but not the pids is another host, judged by age), fixed-length so long host
    names cannot push a temporary name over the file system's limit."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _temp_writer(tmp: Path, target: str) -> tuple[str, int] | None:
    """``(host, pid)`` recorded in a temporary name of ``target`` (``.NAME~HOST~PID~RANDOM.tmp``), else None."""
    match = _TEMP_NAME.fullmatch(tmp.name)
    if match is None or match["target"] != target:
        return None
    return match["host"], int(match["pid"])


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers; returns what was deleted.

    A file is stale when its writer ran on this host and that pid is gone, or, when the writer cannot be checked
    (another host sharing the file system, an old-style name), when it has not changed for ``STALE_TMP_SECONDS``.
    A live writer's file is never touched: its pid answers, and it keeps its mtime fresh while it writes.
    """
    path = Path(path)
    removed = []
    host, now = _host(), time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}[.~]*.tmp*"):
        writer = _temp_writer(tmp, path.name)
        try:
            if writer is not None and writer[0] == host:
                stale = not _pid_alive(writer[1])
            else:
                stale = now - tmp.stat().st_mtime > STALE_TMP_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another cleaner got there first
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    The temporary name records host and pid, so the next write of ``path`` can tell a killed writer's leftover
    (removed) from a live writer's file (kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}~{_host()}~{os.getpid()}~", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the final file the usual umask-derived mode so a store or
    # .beton cache on a shared cluster file system stays readable by the group.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; a second holder, in this process
    or another, waits.  The kernel drops it when its process dies, so a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; a file that already holds exactly this JSON is left untouched, so its
    mtime says when its content last changed (what staleness checks of derived tables compare against)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    try:
        if Path(path).read_text() == text:
            return Path(path)
    except (OSError, UnicodeDecodeError):
        pass
    return atomic_write_text(path, text)


def atomic_write_parquet(path: str | os.PathLike, df: Any) -> Path:
    """Write a Polars (or pandas) DataFrame as Parquet atomically."""
    import polars as pl

    if not isinstance(df, pl.DataFrame):
        df = pl.from_pandas(df) if hasattr(df, "to_records") else pl.DataFrame(df)
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def atomic_save_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint safely: tensors and plain containers only (``weights_only=True``); ``mmap`` maps the file
    instead of reading it (large published weights)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


CACHE_FOLDER = "_cache"


class Store:
    """A store root holding one folder per experiment."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def experiment(self, name: str) -> "ExperimentStore":
        return ExperimentStore(self.root / safe_name(name))

    def cache_dir(self, override: str | os.PathLike | None = None) -> Path:
        """Where .beton files, decodability records and pre-trained stand-ins are cached: ``override`` when given,
        else ``STORE/_cache`` (the one definition every flow and command uses)."""
        return Path(override).expanduser().resolve() if override else self.root / CACHE_FOLDER

    def experiments(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


class StoreOptions(BaseModel):
    """Where a flow's results and cache live; the flow configs nest it as ``store`` and resolve both folders here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = Field("store", description="results store root STORE; experiments land in STORE/EXPERIMENT/. A "
                                           "relative path is resolved when the run starts, against the working "
                                           "directory of the process running it (askshift serve: where serve was "
                                           "started)")
    cache_dir: str | None = Field(None, description="cache of .beton files, decodability records and pre-trained "
                                                    "stand-ins; default STORE/_cache")

    def store(self) -> Store:
        return Store(self.root)

    def resolved_root(self) -> Path:
        return self.store().root

    def resolved_cache_dir(self) -> Path:
        return self.store().cache_dir(self.cache_dir)

    def experiment(self, name: str) -> "ExperimentStore":
        return self.store().experiment(name)

    def resolved(self) -> "StoreOptions":
        """The same folders as absolute paths: what a flow hands to the flows it starts (one folder whatever
        directory they run in)."""
        return StoreOptions(root=str(self.resolved_root()),
                            cache_dir=str(self.resolved_cache_dir()) if self.cache_dir else None)


def fold_store_input(cls: type[BaseModel], values: Any) -> Any:
    """A config's raw input with ``store`` as StoreOptions input: ``store="PATH"`` is the root, a ``store`` mapping
    without a root gets the config's default root, and a top-level ``cache_dir`` moves into ``store``."""
    if not isinstance(values, dict) or ("store" not in values and "cache_dir" not in values):
        return values
    store, cache_dir = values.get("store"), values.get("cache_dir")
    if isinstance(store, (str, os.PathLike)):
        store = {"root": os.fspath(store)}
    elif isinstance(store, StoreOptions):
        store = store.model_dump()
    elif store is None:
        store = {}
    elif not isinstance(store, dict):
        return values  # pydantic names the wrong type
    if "root" not in store and (store or cache_dir is not None):
        default = cls.model_fields["store"].get_default(call_default_factory=True)
        store = {"root": default.root if isinstance(default, StoreOptions) else StoreOptions().root, **store}
    if cache_dir is not None:
        store = {**store, "cache_dir": os.fspath(cache_dir)}
    values = {k: v for k, v in values.items() if k not in ("cache_dir", "store")}
    if store:
        values["store"] = store
    return values


def store_options_validator():
    """``_store = store_options_validator()`` in a config with a ``store: StoreOptions`` field: its ``mode="before"``
    validator (``fold_store_input``), so ``store="PATH"`` and a top-level ``cache_dir=`` still validate."""
    return model_validator(mode="before")(classmethod(fold_store_input))


@dataclasses.dataclass(frozen=True)
class ExperimentStore:
    """One experiment's folder; all paths below are derived here so every module agrees on them."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    # --- configs -------------------------------------------------------------------------
    def write_config(self, config: Any, name: str = "config") -> Path:
        return atomic_write_json(self.root / f"{name}.json", config)

    def read_config(self, name: str = "config") -> Any:
        return read_json(self.root / f"{name}.json")

    # --- runs (trained models, content-addressed) -----------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / safe_name(run_id)

    def is_done(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "done").exists()

    def run_lock(self, run_id: str):
        """Held while a run decides whether to train and trains: an identical run started meanwhile (same store,
        same config) waits, then finds it done and reuses it instead of training it twice."""
        return file_lock(self.run_dir(run_id) / ".lock")

    def mark_done(self, run_id: str, info: Any = None) -> None:
        atomic_write_json(self.run_dir(run_id) / "done", info if info is not None else {})

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "checkpoints"

    # --- models of the experiment (one JSON per model, so parallel tasks never race) ---------
    def register_model(self, model: str, group: str, **info: Any) -> Path:
        """Record that ``model`` belongs to ``group`` ("baseline", "ft", "lp-ft", ...) with free-form info."""
        return atomic_write_json(self.root / "models" / f"{safe_name(model)}.json", {"model": model, "group": group, **info})

    def models(self):
        """A Polars DataFrame with one row per registered model: model, group, info (JSON text)."""
        import polars as pl

        rows = []
        for path in sorted((self.root / "models").glob("*.json")):
            record = read_json(path)
            rows.append({"model": record.pop("model"), "group": record.pop("group"), "info": json.dumps(record, sort_keys=True)})
        return pl.DataFrame(rows, schema={"model": pl.String, "group": pl.String, "info": pl.String})

    # --- predictions per (model, split) ---------------------------------------------------
    def predictions_path(self, model: str, split: str) -> Path:
        return self.root / "predictions" / safe_name(model) / f"{safe_name(split)}.parquet"

    def write_predictions(
        self,
        model: str,
        split: str,
        logits: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        groups: np.ndarray | None = None,
    ) -> Path:
        """Store logits (n, classes) with labels, example indices and groups (-1 = no group)."""
        import polars as pl

        logits = np.asarray(logits, dtype=np.float32)
        n = len(labels)
        if logits.ndim != 2 or logits.shape[0] != n:
            raise ValueError(f"logits shape {logits.shape} does not match {n} labels")
        df = pl.DataFrame(
            {
                "index": np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64),
                "label": np.asarray(labels, dtype=np.int64),
                "group": np.full(n, -1, np.int64) if groups is None else np.asarray(groups, dtype=np.int64),
                "prediction": logits.argmax(1).astype(np.int64),
                "logits": logits,
            }
        )
        return atomic_write_parquet(self.predictions_path(model, split), df)

    def has_predictions(self, model: str, split: str) -> bool:
        return self.predictions_path(model, split).exists()

    def read_predictions(self, model: str, split: str):
        """A Polars DataFrame with columns index, label, group, prediction, logits (array)."""
        import polars as pl

        path = self.predictions_path(model, split)
        if not path.exists():
            raise FileNotFoundError(f"no predictions for model {model!r} on split {split!r} ({path})")
        return pl.read_parquet(path)

    def logits(self, model: str, split: str) -> np.ndarray:
        return self.read_predictions(model, split)["logits"].to_numpy().astype(np.float32)

    # --- sub-splits (in/out-of-support membership, written by the split flow) ---------------
    def subsplit_path(self, split: str) -> Path:
        return self.root / "subsplits" / f"{safe_name(split)}.parquet"

    def write_subsplit(self, split: str, df: Any) -> Path:
        """``df`` has columns ``index`` and ``support`` ("in" / "out"), plus whatever else (ratio, p)."""
        return atomic_write_parquet(self.subsplit_path(split), df)

    def read_subsplit(self, split: str):
        import polars as pl

        path = self.subsplit_path(split)
        if not path.exists():
            raise FileNotFoundError(
                f"split {split!r} has not been divided into in/out-of-support parts yet "
                f"(run the split flow first; expected {path})"
            )
        return pl.read_parquet(path)

    # --- tables, plots, report ------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.root / "tables" / f"{safe_name(name)}.parquet"

    def write_table(self, name: str, df: Any, config: Any = None) -> Path:
        path = atomic_write_parquet(self.table_path(name), df)
        if config is not None:
            atomic_write_json(path.with_suffix(".config.json"), config)
        return path

    def read_table(self, name: str):
        import polars as pl

        return pl.read_parquet(self.table_path(name))

    def has_table(self, name: str) -> bool:
        return self.table_path(name).exists()

    def plot_path(self, name: str) -> Path:
        path = self.root / "plots" / f"{safe_name(name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def report_path(self) -> Path:
        return self.root / "report.md"


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result over ``path`` (for libraries that write files)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
