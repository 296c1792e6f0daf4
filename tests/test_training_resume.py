"""A training run killed mid-epoch and restarted reaches bit-identical weights to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EPOCHS = 3
BATCHES = 8


def _config():
    from askshift.lib.models.training import TrainConfig

    # Everything that carries state across epochs: AdamW moments, a warm-up that ends mid-epoch, cosine decay,
    # clipping, label smoothing, BatchNorm running statistics.
    return TrainConfig(epochs=EPOCHS, lr=3e-3, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
                       grad_clip=1.0, batch_size=32, keep_epochs=(2, 3), seed=3)


class NoisyLoader:
    """In-memory batches whose order follows epoch_seed; noise and flips draw on torch's and numpy's global RNGs,
    so only a resume that restores those states reproduces the uninterrupted run."""

    def __init__(self, images, labels, epoch, seed, progress: Path | None, delay: float):
        import torch

        from askshift.lib.models.training import epoch_seed

        self.images, self.labels, self.epoch = images, labels, epoch
        self.order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        self.progress, self.delay = progress, delay

    def __len__(self):
        return BATCHES

    def __iter__(self):
        import numpy as np
        import torch

        size = len(self.labels) // BATCHES
        for i in range(BATCHES):
            if self.progress is not None:
                self.progress.write_text(f"{self.epoch} {i}")
                time.sleep(self.delay)
            idx = self.order[i * size:(i + 1) * size]
            x = self.images[idx] + 0.05 * torch.rand_like(self.images[idx])
            if np.random.rand() < 0.5:
                x = x.flip(3)
            yield x.clamp(0, 1), self.labels[idx], idx


def train_in_this_process(checkpoint_dir: Path, out: Path, progress: Path | None = None, delay: float = 0.0):
    import torch

    from askshift.lib.models.families import build_model
    from askshift.lib.models.training import seed_everything, train_model

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(256, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 4, (256,), generator=gen)
    config = _config()
    seed_everything(config.seed)
    model = build_model("cnn:tiny", 4)
    train_model(model, lambda e: NoisyLoader(images, labels, e, config.seed, progress, delay), config,
                checkpoint_dir, device="cpu", log=lambda line: print(line, flush=True))
    torch.save(model.state_dict(), out)


def _run(checkpoint_dir, out, progress=None, delay=0.0):
    args = [sys.executable, __file__, str(checkpoint_dir), str(out)] + ([str(progress), str(delay)] if progress else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(condition, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_resume_after_kill_continues_from_last_epoch_with_identical_weights(tmp_path):
    import torch

    # The interrupted run slows down per batch so the kill lands in the middle of epoch 2.
    progress = tmp_path / "progress"
    killed = _run(tmp_path / "interrupted", tmp_path / "never.pt", progress, delay=0.15)
    # Meanwhile the uninterrupted reference trains here (same code, same thread count: same arithmetic).
    threads = torch.get_num_threads()
    try:
        train_in_this_process(tmp_path / "uninterrupted", tmp_path / "uninterrupted.pt")
    finally:
        torch.set_num_threads(threads)
    _wait_until(lambda: (tmp_path / "interrupted" / "epoch_1.pt").exists(), 120, "the first checkpoint", killed)
    _wait_until(lambda: progress.exists() and progress.read_text().split() >= ["1", "3"], 60,
                "the middle of epoch 2", killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "interrupted" / "epoch_2.pt").exists()

    resumed = _run(tmp_path / "interrupted", tmp_path / "resumed.pt")
    resumed_out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_out
    assert "resuming from epoch 1/3" in resumed_out
    assert not any(line.startswith("epoch 1/3") for line in resumed_out.splitlines())  # not trained again

    want = torch.load(tmp_path / "uninterrupted.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f"weights differ after resume: {different}"
    # The kept (baseline) checkpoints agree too, not just the last weights.
    for epoch in (2, 3):
        a = torch.load(tmp_path / "uninterrupted" / "kept" / f"epoch_{epoch}.pt", weights_only=True)
        b = torch.load(tmp_path / "interrupted" / "kept" / f"epoch_{epoch}.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    checkpoint_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    progress = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    train_in_this_process(checkpoint_dir, out, progress, delay)
