"""What every method's step returns, and the checks its config shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from litft.errors import LitFTError

Metrics = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""name -> (sum over this micro-batch's units, number of units), both detached; the mean over an optimizer step
(or a validation epoch) is sum of sums / sum of counts over micro-batches and ranks."""


@dataclass
class StepOutput:
    """One micro-batch of a preference method on this rank.

    loss_sum: the per-unit losses summed over the micro-batch (with gradients). A unit is a pair (DPO, ORPO, SimPO)
        or an example (KTO); the training step divides by the units of the whole optimizer step on all ranks.
    units: the units in this micro-batch (a 0-d tensor).
    metrics: see :data:`Metrics`; every rank reports the same names (they are reduced together).
    """

    loss_sum: torch.Tensor
    units: torch.Tensor
    metrics: Metrics = field(default_factory=dict)


def check_range(key: str, value: float, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """One-line LitFTError naming ``key`` when ``value`` is outside the interval."""
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high))
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise LitFTError(f"{key}: {value} is out of range (must be {' and '.join(x for x in (lo, hi) if x)})")


def detached(total: torch.Tensor, count: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """A metric entry: (sum, count) as detached float32 tensors on the sum's device."""
    total = total.detach().float().reshape(())
    return total, torch.as_tensor(count, dtype=torch.float32, device=total.device).reshape(())
