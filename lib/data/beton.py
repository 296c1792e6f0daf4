"""Dataset splits written once to FFCV .beton files, cached by a hash of their inputs, checked before reading.

Each split becomes three files in ``CACHE/<dataset>/``::

    <split>-<hash>.beton           fields image (RGBImageField), label (IntField), index (IntField)
    <split>-<hash>.meta.parquet    one row per record: index, label, group (-1 = none), metadata columns
    <split>-<hash>.manifest.json   record count, byte size, checksums (of the .beton and the metadata table),
                                   class names, class mask

The .beton is written to a temporary name and renamed into place, and the manifest is written last,
so a file without a matching manifest (killed writer, truncated copy, flipped bytes) is detected
and rewritten -- never handed to a loader.  A damaged metadata table beside a sound .beton is rebuilt alone.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from askshift.lib.data.datasets import ImageDataset, load_dataset, to_rgb_array
from askshift.lib.store import (
    atomic_path,
    atomic_write_json,
    atomic_write_parquet,
    content_hash,
    file_lock,
    read_json,
    remove_stale_temps,
    safe_name,
)

FORMAT_VERSION = 1
# Every byte is re-hashed before each first read in a process.  Files up to this size get one SHA-256; bigger
# ones (ImageNet) one SHA-256 per CHUNK_BYTES, hashed by parallel threads (hashlib releases the GIL), so a check
# runs at disk speed times the cores instead of one core's hashing speed.
FULL_CHECK_MAX_BYTES = 1 << 30
CHUNK_BYTES = 64 << 20
_EDGE = 1 << 20  # manifests written before chunk digests only vouch for a big file's first and last MiB


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


def _chunk_hash(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while length > 0:
            block = fh.read(min(1 << 22, length))
            if not block:
                break
            digest.update(block)
            length -= len(block)
    return digest.hexdigest()


def _chunk_hashes(path: Path, size: int, chunk: int) -> list[str]:
    """SHA-256 of each ``chunk`` bytes of the file, in order."""
    offsets = range(0, size, chunk)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(offsets)))) as pool:
        return list(pool.map(lambda offset: _chunk_hash(path, offset, chunk), offsets))


def _content_mismatch(path: Path, size: int, manifest: dict[str, Any]) -> str | None:
    """Why the bytes of ``path`` differ from what the manifest vouches for, or None."""
    if manifest.get("sha256"):
        return None if _full_hash(path) == manifest["sha256"] else "checksum mismatch (corrupted)"
    chunks = manifest.get("chunk_sha256")
    if chunks:
        chunk = int(manifest["chunk_bytes"])
        for number, (got, want) in enumerate(zip(_chunk_hashes(path, size, chunk), chunks)):
            if got != want:
                return f"checksum mismatch in bytes {number * chunk}..{min(size, (number + 1) * chunk)} (corrupted)"
        return None if len(chunks) == len(range(0, size, chunk)) else "checksum list does not match the size"
    if _edge_hash(path, size) != manifest.get("edge_sha256"):
        return "checksum of first/last MiB mismatch (corrupted)"
    return None


def _header_records(path: Path) -> int:
    from ffcv.types import HeaderType

    with open(path, "rb") as fh:
        raw = fh.read(HeaderType.itemsize)
    if len(raw) < HeaderType.itemsize:
        raise ValueError("file shorter than an FFCV header")
    return int(np.frombuffer(raw, dtype=HeaderType)[0]["num_samples"])


def check_beton(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "ok")`` when the .beton and its metadata table match the manifest, else ``(None, reason)``."""
    manifest, reason = _check_data(Path(path))
    if manifest is None:
        return None, reason
    reason = _check_meta(Path(path), manifest)
    return (None, reason) if reason else (manifest, "ok")


def _check_data(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "ok")`` when the .beton itself matches its manifest, else ``(None, reason)``."""
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
    mismatch = _content_mismatch(path, stat.st_size, manifest)
    if mismatch:
        return None, mismatch
    _verified[memo_key] = manifest
    return manifest, "ok"


_meta_verified: dict[tuple[str, int, int], str] = {}


def _check_meta(path: Path, manifest: dict[str, Any]) -> str | None:
    """Why the metadata table beside ``path`` cannot be used with ``manifest``, or None when it can."""
    meta = sidecar(path, "meta.parquet")
    if not meta.exists():
        return "metadata table missing"
    stat = meta.stat()
    memo_key = (str(meta), stat.st_size, stat.st_mtime_ns)
    want = manifest.get("meta_sha256")
    if want is not None and _meta_verified.get(memo_key) == want:
        return None
    if want is not None:
        if _full_hash(meta) != want:
            return "metadata table checksum mismatch (corrupted)"
        _meta_verified[memo_key] = want
        return None
    # A manifest from before metadata checksums: the table must at least parse and have one row per record.
    import polars as pl

    try:
        rows = pl.scan_parquet(meta).select(pl.len()).collect().item()
    except Exception as exc:  # noqa: BLE001 -- polars raises several types for a garbage file
        return f"metadata table unreadable ({type(exc).__name__})"
    if rows != manifest.get("records"):
        return f"metadata table has {rows} rows for {manifest.get('records')} records"
    return None


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


def _lock(path: Path):
    """An exclusive lock so parallel tasks asking for the same split write it once."""
    return file_lock(path.with_name(path.name + ".lock"))


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
        chunks = None if sha else _chunk_hashes(tmp, size, CHUNK_BYTES)
        edge = _edge_hash(tmp, size)  # what older askshift versions check big files by
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
        "chunk_sha256": chunks,
        "chunk_bytes": CHUNK_BYTES if chunks else None,
        "edge_sha256": edge,
        "meta_sha256": _full_hash(sidecar(path, "meta.parquet")),
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
    remove_stale_temps(path)  # a killed writer's half-written .beton (tens of MB to GB) is never renamed into place
    manifest, _ = check_beton(path)
    if manifest is not None:
        return BetonFile(path, manifest)
    with _lock(path):
        manifest, reason = _check_data(path)  # another process may have written it meanwhile
        data = None
        if manifest is not None:
            reason = _check_meta(path, manifest)
            if reason is None:
                return BetonFile(path, manifest)
            if log is not None:
                log(f"rewriting {sidecar(path, 'meta.parquet')}: {reason}")
            data = load_dataset(dataset, split, root, **options.dataset_options)
            repaired = _rewrite_meta(path, manifest, data)
            if repaired is not None:
                return repaired
            reason = "its metadata table no longer matches the dataset"
        if reason != "missing" and log is not None:
            log(f"rewriting {path}: {reason}")
        if data is None:
            data = load_dataset(dataset, split, root, **options.dataset_options)
        return write_dataset_beton(data, path, options, key=beton_key(dataset, split, root, options))


def _rewrite_meta(path: Path, manifest: dict[str, Any], dataset: ImageDataset) -> BetonFile | None:
    """Rebuild the metadata table of a sound .beton from ``dataset`` and re-vouch for it in the manifest; None when
    the dataset's labels no longer match the .beton's (the data changed: the whole split must be rewritten)."""
    from ffcv.reader import Reader

    table = _meta_table(dataset)
    stored = Reader(str(path)).metadata
    labels = stored[stored.dtype.names[1]]  # fields are image, label, index, in that order
    if table.height != len(stored) or not np.array_equal(table["label"].to_numpy(), labels):
        return None
    meta = sidecar(path, "meta.parquet")
    atomic_write_parquet(meta, table)
    manifest = {**manifest, "meta_sha256": _full_hash(meta)}
    atomic_write_json(sidecar(path, "manifest.json"), manifest)
    return BetonFile(path, manifest)


__all__ = ["BetonFile", "BetonOptions", "beton_path", "check_beton", "ensure_beton", "write_dataset_beton"]
