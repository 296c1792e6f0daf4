"""Dataset splits written once to FFCV .beton files, cached by a hash of their inputs, checked before reading.

Each split becomes three files in ``CACHE/<dataset>/``::

    <split>-<hash>.beton           fields image (RGBImageField), label (IntField), index (IntField)
    <split>-<hash>.meta.parquet    one row per record: index, label, group (-1 = none), metadata columns
    <split>-<hash>.manifest.json   record count, byte size, checksums, class names, class mask

The .beton is written to a temporary name and renamed into place, and the manifest is written last,
so a file without a matching manifest (killed writer, truncated copy, flipped bytes) is detected
and rewritten -- never handed to a loader.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lib.datasets import ImageDataset, load_dataset, to_rgb_array
from lib.store import atomic_path, atomic_write_json, atomic_write_parquet, content_hash, read_json, safe_name

FORMAT_VERSION = 1
# Files up to this size are fully re-hashed before each first read in a process; bigger ones
# (ImageNet) are checked by size, header, and hashes of their first and last MiB.
FULL_CHECK_MAX_BYTES = 1 << 30
_EDGE = 1 << 20


class BetonOptions(BaseModel):
    """How a split is stored.  ``None`` means "the dataset's default" (raw for small arrays, jpg for folders)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    write_mode: Literal["raw", "jpg", "smart"] | None = Field(None, description="raw pixels (exact) or JPEG")
    max_resolution: int | None = Field(None, ge=1, description="longest side is resized down to this before writing")
    jpeg_quality: int = Field(90, ge=1, le=100)
    dataset_options: dict[str, Any] = Field(default_factory=dict, description="passed to the dataset builder (e.g. digits size)")
    num_workers: int = Field(0, ge=0, description="writer processes; 0 = all cores", json_schema_extra={"hash": False})


@dataclass(frozen=True)
class BetonFile:
    """A verified .beton with its sidecar files and what the manifest records."""

    path: Path
    manifest: dict[str, Any]

    @property
    def meta_path(self) -> Path:
        return sidecar(self.path, "meta.parquet")

    @property
    def num_records(self) -> int:
        return int(self.manifest["records"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def class_mask(self) -> np.ndarray | None:
        present = self.manifest.get("class_mask")
        if present is None:
            return None
        mask = np.zeros(self.num_classes, dtype=bool)
        mask[present] = True
        return mask

    def metadata(self):
        """Polars DataFrame, one row per record: index, label, group, and the dataset's metadata columns."""
        import polars as pl

        return pl.read_parquet(self.meta_path)

    def labels(self) -> np.ndarray:
        return self.metadata()["label"].to_numpy().astype(np.int64)

    def groups(self) -> np.ndarray | None:
        if not self.manifest.get("has_groups"):
            return None
        return self.metadata()["group"].to_numpy().astype(np.int64)


def sidecar(beton: Path, suffix: str) -> Path:
    return beton.with_name(beton.name[: -len(".beton")] + "." + suffix)


def resolve_root(root: str | os.PathLike | None) -> str | None:
    return None if root is None else str(Path(root).expanduser().resolve())


def beton_key(dataset: str, split: str, root: str | os.PathLike | None, options: BetonOptions) -> dict[str, Any]:
    """What identifies a written split: its cache file name is a hash of this."""
    opts = options.model_dump(mode="json")
    opts.pop("num_workers")
    return {"format": FORMAT_VERSION, "dataset": dataset, "split": split, "root": resolve_root(root), "options": opts}


def beton_path(cache_dir: str | os.PathLike, dataset: str, split: str, root: str | os.PathLike | None,
               options: BetonOptions | None = None) -> Path:
    options = options or BetonOptions()
    key = content_hash(beton_key(dataset, split, root, options))
    return Path(cache_dir).expanduser().resolve() / safe_name(dataset) / f"{safe_name(split)}-{key}.beton"


# --- checking -----------------------------------------------------------------------------------

_verified: dict[tuple[str, int, int], dict[str, Any]] = {}


def _edge_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(_EDGE))
        if size > _EDGE:
            fh.seek(max(_EDGE, size - _EDGE))
            digest.update(fh.read())
    return digest.hexdigest()


def _full_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _header_records(path: Path) -> int:
    from ffcv.types import HeaderType

    with open(path, "rb") as fh:
        raw = fh.read(HeaderType.itemsize)
    if len(raw) < HeaderType.itemsize:
        raise ValueError("file shorter than an FFCV header")
    return int(np.frombuffer(raw, dtype=HeaderType)[0]["num_samples"])


def check_beton(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "ok")`` when the .beton matches its manifest, else ``(None, reason)``."""
    path = Path(path)
    manifest_path = sidecar(path, "manifest.json")
    if not path.exists():
        return None, "missing"
    if not manifest_path.exists():
        return None, "no manifest (the writer did not finish)"
    try:
        manifest = read_json(manifest_path)
    except ValueError:
        return None, "unreadable manifest"
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key in _verified and _verified[memo_key] == manifest:
        return manifest, "ok"
    if manifest.get("format") != FORMAT_VERSION:
        return None, f"format {manifest.get('format')} != {FORMAT_VERSION}"
    if stat.st_size != manifest.get("size"):
        return None, f"size {stat.st_size} bytes, manifest says {manifest.get('size')} (truncated or replaced)"
    try:
        records = _header_records(path)
    except ValueError as exc:
        return None, str(exc)
    if records != manifest.get("records"):
        return None, f"header says {records} records, manifest says {manifest.get('records')}"
    if stat.st_size <= FULL_CHECK_MAX_BYTES:
        if _full_hash(path) != manifest.get("sha256"):
            return None, "checksum mismatch (corrupted)"
    elif _edge_hash(path, stat.st_size) != manifest.get("edge_sha256"):
        return None, "checksum of first/last MiB mismatch (corrupted)"
    meta = sidecar(path, "meta.parquet")
    if not meta.exists():
        return None, "metadata table missing"
    _verified[memo_key] = manifest
    return manifest, "ok"


# --- writing -------------------------------------------------------------------------------------


class _WriterSource:
    """What DatasetWriter workers index: ``i -> (image HWC uint8, label, i)``.

    A failing image would kill a writer process and leave FFCV waiting forever for its records, so
    errors are recorded in a file and a 1x1 placeholder is written instead; the caller then raises.
    """

    def __init__(self, dataset: ImageDataset, error_file: Path):
        self.dataset = dataset
        self.error_file = error_file

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image = to_rgb_array(self.dataset.load_image(int(index)))
        except Exception as exc:  # noqa: BLE001 -- reported to the parent after the write
            with open(self.error_file, "a") as fh:
                fh.write(f"example {index}: {type(exc).__name__}: {exc}\n")
            image = np.zeros((1, 1, 3), np.uint8)
        return image, int(self.dataset.labels[index]), int(index)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock so parallel tasks asking for the same split write it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _meta_table(dataset: ImageDataset):
    import polars as pl

    n = len(dataset)
    columns: dict[str, Any] = {
        "index": np.arange(n, dtype=np.int64),
        "label": dataset.labels,
        "group": dataset.groups if dataset.groups is not None else np.full(n, -1, np.int64),
    }
    for name, values in dataset.metadata.items():
        if name not in columns:
            columns[name] = np.asarray(values)
    return pl.DataFrame(columns)


def write_dataset_beton(dataset: ImageDataset, path: str | os.PathLike, options: BetonOptions | None = None,
                        key: dict[str, Any] | None = None) -> BetonFile:
    """Write ``dataset`` to ``path`` (temp name + rename) with its metadata table and manifest."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    options = options or BetonOptions()
    path = Path(path)
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} split {dataset.split!r} is empty; nothing to write")
    write_mode = options.write_mode or dataset.default_write_mode
    max_resolution = options.max_resolution or dataset.default_max_resolution
    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=options.jpeg_quality),
        "label": IntField(),
        "index": IntField(),
    }
    workers = options.num_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(dataset)))
    sidecar(path, "manifest.json").unlink(missing_ok=True)  # the old manifest must never vouch for a new file
    atomic_write_parquet(sidecar(path, "meta.parquet"), _meta_table(dataset))
    with atomic_path(path) as tmp:
        error_file = tmp.with_name(tmp.name + ".errors")
        error_file.unlink(missing_ok=True)
        try:
            writer = DatasetWriter(str(tmp), fields, num_workers=workers)
            writer.from_indexed_dataset(_WriterSource(dataset, error_file), chunksize=max(1, min(100, len(dataset) // workers)))
            if error_file.exists():
                errors = error_file.read_text().splitlines()
                raise OSError(f"{len(errors)} images of {dataset.name}/{dataset.split} could not be read, first: {errors[0]}")
        finally:
            error_file.unlink(missing_ok=True)
        size = tmp.stat().st_size
        sha = _full_hash(tmp) if size <= FULL_CHECK_MAX_BYTES else None
        edge = _edge_hash(tmp, size)
        records = _header_records(tmp)
    mask = dataset.class_mask
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "dataset": dataset.name,
        "split": dataset.split,
        "records": records,
        "size": size,
        "sha256": sha,
        "edge_sha256": edge,
        "write_mode": write_mode,
        "max_resolution": max_resolution,
        "class_names": list(dataset.class_names),
        "class_mask": None if mask is None else [int(i) for i in np.flatnonzero(mask)],
        "has_groups": dataset.groups is not None,
        "extra": dataset.extra,
    }
    if records != len(dataset):
        raise OSError(f"wrote {records} records for {len(dataset)} examples to {path}")
    atomic_write_json(sidecar(path, "manifest.json"), manifest)
    return BetonFile(path, manifest)


def ensure_beton(dataset: str, split: str, cache_dir: str | os.PathLike, root: str | os.PathLike | None = None,
                 options: BetonOptions | None = None, log=print) -> BetonFile:
    """The verified .beton of ``dataset``/``split``: reused when it checks out, (re)written otherwise."""
    options = options or BetonOptions()
    path = beton_path(cache_dir, dataset, split, root, options)
    manifest, _ = check_beton(path)
    if manifest is not None:
        return BetonFile(path, manifest)
    with _lock(path):
        manifest, reason = check_beton(path)  # another process may have written it meanwhile
        if manifest is not None:
            return BetonFile(path, manifest)
        if reason != "missing" and log is not None:
            log(f"rewriting {path}: {reason}")
        data = load_dataset(dataset, split, root, **options.dataset_options)
        return write_dataset_beton(data, path, options, key=beton_key(dataset, split, root, options))


__all__ = ["BetonFile", "BetonOptions", "beton_path", "check_beton", "ensure_beton", "write_dataset_beton"]
