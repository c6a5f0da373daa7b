"""Exact totals of (summed loss, trained tokens) over steps and ranks, with no float64 tensor on an accelerator.

Validation loss is sum(loss) / sum(tokens) over the whole validation set and every rank. Accumulating it in a
float64 tensor on the device and all-reducing that is exact, but NPUs (HCCL) support float64 poorly. Here:

- each step's values stay on the device as they are (the float32 loss sum, the integer token count) and are
  moved to the host every ``flush_every`` steps (one synchronisation per flush, not per step), where the loss is
  added up in Python floats (float64) and the tokens in Python ints (exact);
- across ranks, each rank's float64 loss total travels as two float32 numbers (hi = float32(x),
  lo = float32(x - hi)) and its token count as two float32 numbers as well (exact below 2**48 tokens); the
  pairs are all-gathered, not all-reduced, and added on the host in float64.

Precision: every step's loss sum is as exact as the float32 loss computation that produced it; adding steps and
ranks loses at most ~2**-48 relative (the hi/lo split) plus float64 rounding, far below float32's 2**-24.
"""

from __future__ import annotations

from typing import Any

import torch


def split_float32(value: float) -> tuple[float, float]:
    """``value`` as two float32 numbers whose float64 sum is ``value`` to ~2**-48 relative."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
    return hi, lo


class LossTotals:
    """Running (loss sum, token count) of one validation epoch on this rank; :meth:`total` sums over ranks."""

    def __init__(self, flush_every: int = 256):
        self.flush_every = flush_every
        self.loss = 0.0  # host float64
        self.tokens = 0  # host int
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, loss_sum: torch.Tensor, n_tokens: torch.Tensor) -> None:
        """Record one step (device tensors, left on the device until the next flush)."""
        self._pending.append((loss_sum.detach().reshape(()), torch.as_tensor(n_tokens).detach().reshape(())))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Move the pending steps to the host: one device-to-host copy, then float64 / int sums on the CPU."""
        if not self._pending:
            return
        losses = torch.stack([loss for loss, _ in self._pending]).cpu()  # copy first: no float64 on the device
        counts = torch.stack([count for _, count in self._pending]).cpu()
        self.loss += float(losses.double().sum())
        self.tokens += int(counts.double().sum().round()) if counts.is_floating_point() else int(counts.sum())
        self._pending.clear()

    def total(self, strategy: Any, device: torch.device) -> tuple[float, int]:
        """(loss sum, token count) over all ranks: every rank must call it (one all-gather of 4 float32)."""
        self.flush()
        if getattr(strategy, "world_size", 1) <= 1:
            return self.loss, self.tokens
        tokens_hi = float(torch.tensor(float(self.tokens), dtype=torch.float32))
        mine = torch.tensor([*split_float32(self.loss), tokens_hi, float(self.tokens - int(tokens_hi))],
                            dtype=torch.float32, device=device)
        gathered = strategy.all_gather(mine).reshape(-1, 4).cpu().double()
        loss = float(gathered[:, 0].sum() + gathered[:, 1].sum())
        tokens = int(gathered[:, 2].sum().item()) + int(gathered[:, 3].sum().item())
        return loss, tokens


__all__ = ["LossTotals", "split_float32"]
