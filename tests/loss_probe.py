"""A callback for the ZeRO-3 loss test: lowers the loss chunk size, masks every label of one rank's batch at
given steps (that rank then holds no trained token in the step), and records each rank's trained tokens."""

from __future__ import annotations

import os

import lightning.pytorch as pl


class UnevenLoss(pl.Callback):
    def __init__(self, record_dir: str, chunk_size: int = 4, empty_rank: int = 1, empty_steps: tuple = (1,)):
        self.record_dir, self.chunk_size = record_dir, chunk_size
        self.empty_rank, self.empty_steps = empty_rank, tuple(empty_steps)

    def setup(self, trainer, pl_module, stage) -> None:
        pl_module.loss_chunk_size = self.chunk_size

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.empty_rank and trainer.global_step in self.empty_steps:
            batch["labels"].fill_(-100)
            if "num_target_tokens" in batch:  # this rank's share of the step's count (accumulation 1)
                batch["num_target_tokens"].zero_()
        trained = int((batch["labels"][:, 1:] != -100).sum())
        with open(os.path.join(self.record_dir, f"tokens-rank{trainer.global_rank}.txt"), "a") as f:
            f.write(f"{trainer.global_step} {trained}\n")
