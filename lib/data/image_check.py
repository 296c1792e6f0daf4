"""Which image files of a folder dataset cannot be decoded: checked before compute, remembered per file."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from askshift.lib.store import atomic_write_text

# A JPEG decoded at 1/8 scale (PIL's draft mode: DCT scaling) still reads every byte of its entropy-coded data, so
# truncated and garbage files fail, at a few per cent of a full decode's cost.
DRAFT_SIDE = 32


class UnreadableImagesError(ValueError):
    """Some image files of a dataset cannot be decoded; the message names them and gives the count."""


def decode_error(path: str | os.PathLike) -> str | None:
    """None when ``path`` decodes as an image, else why not (one line)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))
            im.load()
    except Exception as exc:  # noqa: BLE001 -- PIL raises OSError, SyntaxError, ValueError... for broken files
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _signature(path: Path) -> str:
    """A short key of the file's identity and version: a changed or replaced file gets a new one."""
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _known_good(cache_dir: Path | None) -> tuple[Path | None, set[str]]:
    if cache_dir is None:
        return None, set()
    record = cache_dir / "decodable-images.json"
    try:
        return record, set(json.loads(record.read_text()))
    except (OSError, ValueError):
        return record, set()


def _remember(record: Path, good: set[str]) -> None:
    try:
        atomic_write_text(record, json.dumps(sorted(good)))
    except OSError:
        pass  # a read-only cache only costs the next check its time


def unreadable_images(paths: list[Path], cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None) -> dict[Path, str]:
    """{path: reason} for the files that do not decode. Files checked before (same path, size and mtime) are
    skipped when ``cache_dir`` is given, so a re-run over a large folder costs one ``stat`` per file."""
    record, good = _known_good(Path(cache_dir) if cache_dir else None)
    signatures = {p: _signature(p) for p in paths}
    todo = [p for p in paths if signatures[p] not in good]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        errors = dict(zip(todo, pool.map(decode_error, todo)))
    bad = {p: e for p, e in errors.items() if e is not None}
    if record is not None and todo and not bad:  # a refused check writes nothing
        good |= {signatures[p] for p in todo}
        _remember(record, good)
    return bad


def check_images_readable(paths: list[Path], what: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Refuse a dataset with undecodable files, naming them and their count: training on a silently shrunk set,
    or failing in a retried task after the server started, would both hide it."""
    bad = unreadable_images(paths, cache_dir)
    if not bad:
        return
    shown = ", ".join(f"{p} ({reason})" for p, reason in list(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise UnreadableImagesError(f"{what}: {len(bad)} of {len(paths)} image files cannot be decoded: {shown}{more}; "
                                f"remove or replace them")


__all__ = ["UnreadableImagesError", "check_images_readable", "decode_error", "unreadable_images"]
