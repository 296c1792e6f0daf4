"""Nothing lost, safer loading: sidecar checks, stale temp files, per-run locks, orphaned servers, CIFAR pickles."""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import askshift.lib.data.beton as beton
from askshift.lib.data.beton import BetonOptions, check_beton, ensure_beton, sidecar
from askshift.lib.store import STALE_TMP_SECONDS, Store, atomic_path, atomic_write_bytes, file_lock, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
OPTIONS = BetonOptions(num_workers=1)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(path, train_images=rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), train_labels=np.arange(24) % 3,
             val_images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), val_labels=np.arange(12) % 3)
    return path


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A child interpreter running ``code`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True, **kwargs)


# --- cache sidecars ------------------------------------------------------------------------------


def test_garbage_meta_parquet_beside_a_sound_beton_is_detected_and_rebuilt_alone(npz, tmp_path):
    first = ensure_beton("npz", "train", tmp_path, npz, OPTIONS)
    meta = first.meta_path
    good_labels = first.labels()
    data_stat = first.path.stat()
    meta.write_bytes(b"PAR1 this is not a parquet file")
    manifest, reason = check_beton(first.path)
    assert manifest is None and "metadata table" in reason and "corrupted" in reason

    said = []
    healed = ensure_beton("npz", "train", tmp_path, npz, OPTIONS, log=said.append)
    assert check_beton(healed.path)[1] == "ok"
    np.testing.assert_array_equal(healed.labels(), good_labels)
    assert len(said) == 1 and "meta.parquet" in said[0] and "corrupted" in said[0]
    # Only the table was rewritten: the .beton is the same file, untouched.
    assert (healed.path.stat().st_ino, healed.path.stat().st_mtime_ns) == (data_stat.st_ino, data_stat.st_mtime_ns)


def test_manifest_from_before_meta_checksums_still_catches_a_garbage_table(npz, tmp_path):
    from askshift.lib.store import atomic_write_json, read_json

    first = ensure_beton("npz", "val", tmp_path, npz, OPTIONS)
    manifest_path = sidecar(first.path, "manifest.json")
    old = read_json(manifest_path)
    old.pop("meta_sha256")
    atomic_write_json(manifest_path, old)
    assert check_beton(first.path)[1] == "ok"  # an intact table passes on its row count
    first.meta_path.write_bytes(b"garbage")
    assert "unreadable" in check_beton(first.path)[1]
    healed = ensure_beton("npz", "val", tmp_path, npz, OPTIONS, log=None)
    assert check_beton(healed.path)[1] == "ok" and "meta_sha256" in healed.manifest
    assert len(healed.labels()) == 12


# --- .beton checksums of big files ---------------------------------------------------------------


def test_big_beton_is_checked_chunk_by_chunk_so_a_flipped_byte_in_the_middle_is_caught(npz, tmp_path, monkeypatch):
    # "Big" is lowered to 1 MiB: the file (two 8 MiB FFCV pages) is then hashed in 1 MiB chunks.
    monkeypatch.setattr(beton, "FULL_CHECK_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(beton, "CHUNK_BYTES", 1 << 20)
    written = ensure_beton("npz", "train", tmp_path, npz, OPTIONS)
    size = written.path.stat().st_size
    assert written.manifest["sha256"] is None and len(written.manifest["chunk_sha256"]) == -(-size // (1 << 20))
    assert check_beton(written.path)[1] == "ok"

    from ffcv.reader import Reader

    middle = int(Reader(str(written.path)).metadata[0][0]["data_ptr"]) + 5  # inside the first image's pixels
    assert beton._EDGE < middle < size - beton._EDGE  # where the old first/last-MiB hash never looked
    edge_before = beton._edge_hash(written.path, size)
    with open(written.path, "r+b") as fh:
        fh.seek(middle)
        byte = fh.read(1)
        fh.seek(middle)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert beton._edge_hash(written.path, size) == edge_before
    reason = check_beton(written.path)[1]
    assert "checksum mismatch in bytes" in reason and f"{(middle >> 20) << 20}.." in reason
    said = []
    ensure_beton("npz", "train", tmp_path, npz, OPTIONS, log=said.append)
    assert check_beton(written.path)[1] == "ok" and "checksum" in said[0]


# --- stale temporary files -----------------------------------------------------------------------

HOLD_TEMP = """
import sys, time
from askshift.lib.store import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a file")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _killed_writer_temp(target: Path) -> Path:
    """The temporary file a writer of ``target`` leaves when it is SIGKILLed mid-write."""
    writer = _python(HOLD_TEMP, str(target))
    tmp = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait()
    assert tmp.exists()
    return tmp


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "table.parquet"
    leftover = _killed_writer_temp(target)
    errors = leftover.with_name(leftover.name + ".errors")  # the .beton writer's side file
    errors.write_text("example 3: OSError\n")
    atomic_write_bytes(target, b"whole file")
    assert target.read_bytes() == b"whole file"
    assert not leftover.exists() and not errors.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_temp_files_of_live_or_unknown_writers_are_kept_until_stale(tmp_path):
    target = tmp_path / "x.beton"
    target.write_bytes(b"")
    other = tmp_path / "x.beton.config.json"  # another target sharing the prefix
    with atomic_path(target) as live:  # this process is writing it right now
        remote = tmp_path / ".x.beton~otherhost~1~abc123.tmp"  # another node: its pid cannot be asked
        legacy = tmp_path / ".x.beton.k2j4h5.tmp"  # a name from before pids were recorded
        old_remote = tmp_path / ".x.beton~otherhost~2~def456.tmp"
        neighbour = tmp_path / f".{other.name}~otherhost~3~ghi789.tmp"
        for path in (remote, legacy, old_remote, neighbour):
            path.write_bytes(b"partial")
        long_ago = time.time() - STALE_TMP_SECONDS - 60
        os.utime(old_remote, (long_ago, long_ago))
        assert remove_stale_temps(target) == [old_remote]
        assert live.exists() and remote.exists() and legacy.exists() and neighbour.exists()
        live.write_bytes(b"done")
    assert target.read_bytes() == b"done"


def test_ensure_beton_removes_a_killed_beton_writers_temp_file_even_when_the_split_is_cached(npz, tmp_path):
    cached = ensure_beton("npz", "val", tmp_path, npz, OPTIONS)
    leftover = _killed_writer_temp(cached.path)
    again = ensure_beton("npz", "val", tmp_path, npz, OPTIONS)
    assert again.path == cached.path and check_beton(again.path)[1] == "ok"
    assert not leftover.exists()


# --- one run trained once ------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from askshift.lib.store import file_lock
with file_lock(sys.argv[1]):
    print(time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
    print(time.time(), flush=True)
"""


def test_file_lock_lets_one_process_at_a_time_in(tmp_path):
    lock = tmp_path / "run" / ".lock"
    first = _python(HOLD_LOCK, str(lock), "1.0")
    first_in = float(first.stdout.readline())
    second = _python(HOLD_LOCK, str(lock), "0")
    second_in, _ = (float(line) for line in second.communicate(timeout=60)[0].split())
    first_out = float(first.communicate(timeout=60)[0])
    assert first_in < first_out <= second_in


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path):
    lock = tmp_path / ".lock"
    holder = _python(HOLD_LOCK, str(lock), "60")
    holder.stdout.readline()
    holder.kill()
    holder.wait()
    done = threading.Event()
    threading.Thread(target=lambda: (file_lock(lock).__enter__(), done.set()), daemon=True).start()
    assert done.wait(10)


FIRST_RUN = """
import sys, time
from askshift.lib.store import Store
store, run_id, model_id = sys.argv[1:]
exp = Store(store).experiment("e")
with exp.run_lock(run_id):  # what train_run holds while it trains
    print("training", flush=True)
    time.sleep(1.5)
    exp.mark_done(run_id, {"models": [model_id]})
"""


def test_identical_run_started_meanwhile_waits_and_reuses_the_finished_result(tmp_path):
    from askshift.lib.models.training import RunConfig, TrainConfig, train_run

    run = RunConfig(shift="tint_p=0.5", architecture="cnn:tiny", train=TrainConfig(epochs=1))
    first = _python(FIRST_RUN, str(tmp_path / "store"), run.run_id(), run.model_id(1))
    assert first.stdout.readline().strip() == "training"
    exp = Store(tmp_path / "store").experiment("e")
    said = []
    started = time.monotonic()
    models = train_run(exp, run, tmp_path / "cache", device="cpu", log=said.append)
    waited = time.monotonic() - started
    assert first.wait(30) == 0
    assert models == [run.model_id(1)] and said == [] and waited > 0.5  # waited, then trained nothing
    assert not (tmp_path / "cache").exists() and not exp.checkpoint_dir(run.run_id()).exists()


@pytest.mark.slow
def test_two_identical_runs_at_once_train_once(npz, tmp_path):
    import torch

    from askshift.lib.models.training import RunConfig, TrainConfig, train_run

    torch.set_num_threads(1)
    run = RunConfig(dataset="npz", root=str(npz), shift="tint_p=0.5", architecture="cnn:tiny",
                    train=TrainConfig(epochs=1, batch_size=8))
    exp = Store(tmp_path / "store").experiment("e")
    said, results = [], []
    runs = [threading.Thread(target=lambda: results.append(
        train_run(exp, run, tmp_path / "cache", device="cpu", log=said.append))) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    assert results == [[run.model_id(1)]] * 2
    assert sum(line.startswith("training") for line in said) == 1


# --- temporary Prefect servers -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().split("\0")
    except OSError:
        return []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may never reap it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command, server_words", [
    (["run", "baseline", "--epochs", "1", "--train-fractions", "0.25", "--device", "cpu"], ["uvicorn"]),
    (["serve", "--port", "{port}"], ["server", "start"]),
], ids=["run baseline (temporary server)", "serve"])
def test_sigkilled_cli_does_not_leave_its_prefect_server_running(command, server_words, tmp_path):
    from askshift.flows.server import free_port

    port = free_port()
    argv = [str(Path(sys.executable).with_name("askshift")), *(a.replace("{port}", str(port)) for a in command)]
    if command[0] == "run":
        argv += ["--store", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the CLI starts its own server
    cli = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 180
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = next((c for c in _children(cli.pid) if all(w in _cmdline(c) for w in server_words)), None)
            time.sleep(0.2)
        assert server is not None, "the command started no Prefect server"
        cmd = _cmdline(server)
        server_port = int(cmd[cmd.index("--port") + 1])
        while not _listening(server_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listening(server_port)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        gone_by = time.monotonic() + 15
        while _running(server) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _running(server), f"server {server} outlived its SIGKILLed command"
        assert not _listening(server_port)
    finally:
        if cli.poll() is None:
            cli.kill()
        if server is not None and _running(server):
            os.kill(server, signal.SIGKILL)


# --- CIFAR-10 pickles ----------------------------------------------------------------------------


def _cifar_pickle(obj, python2_names: bool = False) -> bytes:
    data = pickle.dumps(obj, protocol=2)
    if python2_names:  # the real files were written by Python 2 and numpy 1: numpy.core.multiarray
        data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return data


def _cifar_root(tmp_path: Path, python2_names: bool) -> Path:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(x) for x in rng.integers(0, 10, 4)],
                 b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 4}
        (base / name).write_bytes(_cifar_pickle(batch, python2_names))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": 4, b"num_vis": 3072}
    (base / "batches.meta").write_bytes(_cifar_pickle(meta, python2_names))
    return tmp_path


@pytest.mark.parametrize("python2_names", [False, True], ids=["numpy2 names", "numpy.core names"])
def test_cifar_batches_load_with_the_restricted_unpickler(tmp_path, python2_names):
    from askshift.lib.data.datasets import load_dataset

    root = _cifar_root(tmp_path, python2_names)
    expected = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    val = load_dataset("cifar10", "val", str(root))
    assert len(val) == 4 and val.class_names[0] == "class0"
    assert val.labels.tolist() == expected[b"labels"]
    np.testing.assert_array_equal(val.load_image(1), expected[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0))


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload, named", [("system", "system"), ("eval", "builtins.eval")])
def test_a_cifar_file_referring_to_other_globals_is_refused_naming_the_file(tmp_path, payload, named):
    from askshift.lib.data.datasets import DatasetLayoutError, load_dataset

    root = _cifar_root(tmp_path, python2_names=True)
    marker = tmp_path / "ran"
    evil = _RunsACommand(marker) if payload == "system" else _CallsEval()
    bad = root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": evil, b"labels": []}, protocol=2))
    with pytest.raises(DatasetLayoutError) as info:
        load_dataset("cifar10", "val", str(root))
    message = str(info.value)
    assert str(bad) in message and named in message and "refused" in message
    assert not marker.exists()
