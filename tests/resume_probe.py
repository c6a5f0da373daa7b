"""A callback for the resume tests: appends each optimizer step's loss (as float.hex) to a file, and can
SIGKILL its own process at the start of a given step (a crash no Python code gets to see)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class StepRecorder(pl.Callback):
    def __init__(self, path: str, kill_at_step: int = -1, key: str = "train/loss"):
        self.path, self.kill_at_step, self.key = path, kill_at_step, key
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last or self.key not in trainer.callback_metrics:
            return
        self._last = step
        with open(self.path, "a") as f:
            f.write(f"{step} {float(trainer.callback_metrics[self.key]).hex()}\n")
            f.flush()
            os.fsync(f.fileno())
