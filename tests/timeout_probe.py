"""A callback for the timeout test: one rank stalls before the first step and again after a later step; every rank
records, per step, the timeout of each of its process groups (read back through litft.shims.torch)."""

from __future__ import annotations

import json
import os
import time

import lightning.pytorch as pl


class Stall(pl.Callback):
    def __init__(self, record_dir: str, rank: int = 1, before_first_s: float = 0.0, at_step: int = -1,
                 stall_s: float = 0.0):
        self.record_dir, self.rank = record_dir, rank
        self.before_first_s, self.at_step, self.stall_s = before_first_s, at_step, stall_s

    def _record(self, trainer, **entry) -> None:
        with open(os.path.join(self.record_dir, f"rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps({"time": time.time(), "step": trainer.global_step, **entry}) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from litft.shims.torch import group_timeout, process_groups

        timeouts = [t.total_seconds() for t in map(group_timeout, process_groups()) if t is not None]
        self._record(trainer, event="batch", timeouts=timeouts)
        if trainer.global_rank != self.rank:
            return
        if trainer.global_step == 0 and batch_idx == 0 and self.before_first_s:
            self._record(trainer, event="stall", seconds=self.before_first_s)
            time.sleep(self.before_first_s)
        elif trainer.global_step == self.at_step:
            self._record(trainer, event="stall", seconds=self.stall_s)
            time.sleep(self.stall_s)
