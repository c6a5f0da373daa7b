"""Stop at the first NaN/inf loss, before it reaches the weights, with one clear line.

The check runs before the backward pass, so the optimizer never steps on a non-finite loss: the last checkpoint
already on disk stays the last good one, and no later checkpoint or adapter is written from poisoned weights.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from litft.errors import LitFTError


class NonFiniteLossError(LitFTError):
    """The training loss became NaN or infinite."""


class NanGuard(pl.Callback):
    """Raise :class:`NonFiniteLossError` when the training loss is NaN or ±inf."""

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        value = loss.detach().float().reshape(-1)[0].item()
        last = None
        for cb in trainer.checkpoint_callbacks:
            last = getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or last
        kept = f"last good checkpoint: {last} (resume with --ckpt_path last)" if last and Path(last).exists() \
            else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1}); stopped, {kept}. "
            "Try a lower learning rate, bf16 instead of fp16, or check the data."
        )
