"""The one place that knows how the strategies scale the training-step loss and where the gradient norm lives.

litft's training step returns ``loss_sum / step_tokens * loss_multiplier(trainer)`` where ``step_tokens`` is the
number of trained tokens in the optimizer step (all micro-batches of the accumulation group, all ranks). What the
strategies do to that value:

- Lightning divides it by ``accumulate_grad_batches`` for every strategy (litft's DeepSpeed strategy turns off
  DeepSpeed's own division, ``scale_wrt_gas``, and its own micro-step counting, so the groups are Lightning's);
- DDP and DeepSpeed average gradients over the ``world_size`` data-parallel ranks.

So the gradient of the step is exactly d(sum of token losses of the step)/d(weights) / step_tokens: the same as
one process with the same global batch, whatever the strategy, accumulation, number of ranks or epoch boundary.
"""

from __future__ import annotations

from typing import Any

import torch

from litft.errors import LitFTError
from litft.strategies.deepspeed import LitFTDeepSpeedStrategy, is_deepspeed


def loss_multiplier(trainer: Any) -> int:
    """Undoes Lightning's division by ``accumulate_grad_batches`` and the gradient average over ranks."""
    if is_deepspeed(trainer.strategy) and not isinstance(trainer.strategy, LitFTDeepSpeedStrategy):
        raise LitFTError(
            f"trainer.strategy: {type(trainer.strategy).__name__} scales the loss its own way; use litft's "
            "(deepspeed_stage_2/3 or class_path: litft.strategies.LitFTDeepSpeedStrategy)"
        )
    return int(trainer.world_size) * int(trainer.accumulate_grad_batches)


def grad_norm_after_step(strategy: Any) -> bool:
    """True when the gradient norm is only known after the optimizer step (DeepSpeed computes it in ``step()``,
    on gradients that are partitioned or still being reduced before it)."""
    return is_deepspeed(strategy)


def local_grad_norm(module: torch.nn.Module) -> torch.Tensor | None:
    """Total 2-norm of the trainable parameters' ``.grad`` (after DDP's all-reduce, every rank holds the whole
    averaged gradient, so no collective is needed); None when no parameter has a gradient."""
    grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def strategy_grad_norm(strategy: Any) -> float | None:
    """Gradient norm (before clipping) of the last step, from a strategy that computes it itself (DeepSpeed)."""
    getter = getattr(strategy, "grad_norm", None)
    return getter() if callable(getter) else None
