"""Exact means of a method's metrics over an optimizer step (training) or an epoch (validation), over ranks.

Each micro-batch reports (sum, count) per metric (:data:`litft.methods.base.Metrics`); the mean is the sum of sums
over the count of counts, over all micro-batches and ranks, as ``train/loss`` is. ``rewards/margins`` is derived at
the end as ``rewards/chosen - rewards/rejected`` (for pairs the same as the mean margin; for KTO, TRL's definition).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from litft.methods.base import Metrics
from litft.model.loss_totals import LossTotals


def _with_margins(means: dict[str, float | torch.Tensor]) -> dict:
    if "rewards/chosen" in means and "rewards/rejected" in means:
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
    return means


class StepTotals:
    """A training step's metrics: added per micro-batch, reduced once per optimizer step (one all-reduce)."""

    def __init__(self):
        self._sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, metrics: Metrics) -> None:
        for name, (total, count) in metrics.items():
            old = self._sums.get(name)
            self._sums[name] = (total, count) if old is None else (old[0] + total, old[1] + count)

    def __bool__(self) -> bool:
        return bool(self._sums)

    def pop(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Means over the step and all ranks (every rank must call it, with the same metric names). A metric whose
        count is 0 (KTO's rewards/chosen in a step without desirable examples) is NaN: logged as such, not left out
        (Lightning would show its previous step's value again)."""
        names = sorted(self._sums)
        self._sums, sums = {}, self._sums
        if not names:
            return {}
        stacked = reduce_sum(torch.stack([torch.stack(sums[n]) for n in names]))  # (k, 2): sums, counts
        counts = stacked[:, 1].tolist()  # one device-to-host copy
        nan = torch.full_like(stacked[0, 0], float("nan"))
        return _with_margins({n: stacked[i, 0] / counts[i] if counts[i] > 0 else nan for i, n in enumerate(names)})


class EpochTotals:
    """A validation epoch's loss and metrics: exact host-side totals (:class:`LossTotals`) per metric."""

    def __init__(self):
        self._totals: dict[str, LossTotals] = {}

    def add(self, metrics: Metrics) -> None:
        for name, (total, count) in metrics.items():
            self._totals.setdefault(name, LossTotals()).add(total, count)

    def means(self, strategy: Any, device: torch.device) -> dict[str, float]:
        """Means over the epoch and all ranks (every rank must call it, with the same metric names)."""
        out = {}
        for name in sorted(self._totals):
            total, count = self._totals[name].total(strategy, device)
            if count > 0:
                out[name] = total / count
        return _with_margins(out)
