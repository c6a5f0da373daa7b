"""Preemption as a flag (litft/callbacks/preemption.py) and resume from the newest checkpoint (litft/resume.py).

Real LoRA runs of a tiny Llama on CPU; the signals are real (os.kill to this process) and arrive at moments the
tests choose: in the middle of a step's forward, and while the model is being set up (before training).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from tests.helpers import write_alpaca


class SignalAt(pl.Callback):
    """Sends ``sig`` to this process at the start of the batch of optimizer step ``step`` (inside the step), or
    in ``setup`` (model loading has not started yet) when step is None."""

    def __init__(self, sig: int, step=None):
        self.sig, self.step = sig, step

    def setup(self, trainer, pl_module, stage):
        if self.step is None:
            os.kill(os.getpid(), self.sig)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)
            self.step = None


class Losses(pl.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"]).hex()


def _fit(tmp_path: Path, model: str, out: str, *, callbacks=(), ckpt_path=None, max_steps=4):
    from litft.cli import LitFTCLI

    config = {
        "output_dir": str(tmp_path / out),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 2, "alpha": 4, "dropout": 0.1},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "cosine", "warmup_steps": 1}},
        "data": {"dataset": str(write_alpaca(tmp_path / "a.json", n=40)), "cutoff_len": 48, "batch_size": 4},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LitFTCLI(args=["--config", str(path)], run=False)
    rec = Losses()
    cli.trainer.callbacks.extend([*callbacks, rec])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli.trainer, tmp_path / out, rec.losses


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.slow
def test_signal_mid_step_saves_at_the_next_step_boundary_and_resume_is_exact(tmp_path, tiny_llama):
    before = signal.getsignal(signal.SIGUSR1)
    _, full_out, full = _fit(tmp_path, tiny_llama, "full")
    # SIGUSR1 during step 2's forward: the step finishes, the checkpoint is written at step 2, training stops.
    trainer, out, cut = _fit(tmp_path, tiny_llama, "cut", callbacks=[SignalAt(signal.SIGUSR1, step=1)])
    assert trainer.global_step == 2 and _step(out / "checkpoints" / "last.ckpt") == 2
    assert not (out / "adapter").exists()  # the resumed run writes it
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers restored after fit
    # --ckpt_path last: continues at step 3 on the same numbers as the uninterrupted run, same adapter bytes.
    _, _, resumed = _fit(tmp_path, tiny_llama, "cut", ckpt_path="last")
    assert {**cut, **resumed} == full and min(resumed) == 3
    adapter = "adapter/adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (full_out / adapter).read_bytes()


def test_sigterm_while_the_model_loads_is_honoured_when_training_starts(tmp_path, tiny_llama):
    trainer, out, losses = _fit(tmp_path, tiny_llama, "early", callbacks=[SignalAt(signal.SIGTERM)])
    # Not fatal, not lost: training started and stopped before any step ran; nothing to save at step 0 (the
    # requeued job starts from step 0 exactly as this one did), no adapter.
    assert trainer.global_step == 0 and losses == {}
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists()


def test_resume_picks_the_newest_loadable_checkpoint_by_step(tmp_path, caplog):
    from litft.resume import newest_checkpoint, resolve_ckpt_path

    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)

    def save(path: Path, step: int) -> Path:
        torch.save({"global_step": step}, path)
        return path

    save(root / "hpc_ckpt_1.ckpt", 40)
    last = save(root / "checkpoints" / "last.ckpt", 50)
    os.utime(last, (1, 1))  # older on disk than the hpc checkpoint: the step decides, not the time
    save(root / "checkpoints" / "step=30.ckpt", 30)
    (root / "checkpoints" / "step=60.ckpt").write_bytes(b"truncated")  # newest step but does not load
    save(root / ".hpc_ckpt_2.ckpt.abc9999.tmp", 70)  # leftover of a killed write: never a candidate
    with caplog.at_level(logging.WARNING, logger="litft"):
        assert newest_checkpoint(root) == (last, 50)
    assert "Skipping checkpoint" in caplog.text and "step=60.ckpt" in caplog.text
    assert resolve_ckpt_path("last", root, in_slurm=False) == str(last)
    assert resolve_ckpt_path(None, root, in_slurm=True) == str(last)
    assert resolve_ckpt_path(None, root, in_slurm=False) is None
    assert resolve_ckpt_path("x.ckpt", root, in_slurm=True) == "x.ckpt"
    # Nothing loadable inside SLURM: start at step 0, and Lightning's own hpc scan finds nothing to trip on.
    for p in [last, root / "checkpoints" / "step=30.ckpt", root / "hpc_ckpt_1.ckpt"]:
        p.write_bytes(b"")
    assert resolve_ckpt_path(None, root, in_slurm=True) is None
    assert not [p for p in root.iterdir() if "hpc_ckpt_" in p.name]
    assert (root / "unloadable-checkpoints" / "hpc_ckpt_1.ckpt").is_file()
