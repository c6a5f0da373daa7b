"""A preference method bound to the training module: its loss per micro-batch and its metrics' totals.

The module (``LitFTModule``) keeps SFT's path as it is; for ``model.method`` other than sft it asks the objective for
each micro-batch's (loss sum, units) and normalises it exactly as SFT's (loss sum, trained tokens): divided by the
units of the whole optimizer step on all ranks (the loader's ``num_target_tokens``, all-reduced), times
:func:`litft.strategies.scale.loss_multiplier`. Metrics are reduced once per optimizer step (one all-reduce) and once
per validation epoch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from litft.errors import LitFTError
from litft.methods import METHODS, run_step
from litft.methods.base import StepOutput
from litft.methods.reference import reference_scorer
from litft.methods.totals import EpochTotals, StepTotals


class PreferenceObjective:
    """``method`` (dpo, orpo, simpo or kto) with its config; see :mod:`litft.methods`."""

    def __init__(self, method: str, config: Any, *, lora: bool):
        if method not in METHODS or METHODS[method].config is None:
            raise LitFTError(f"model.method: '{method}' is not a preference method ({', '.join(METHODS)})")
        if not isinstance(config, METHODS[method].config):
            raise LitFTError(f"model.{method}: expected {METHODS[method].config.__name__}, got {type(config).__name__}")
        self.method, self.config = method, config
        self.needs_reference = METHODS[method].needs_reference
        if self.needs_reference and not lora:
            raise LitFTError(f"model.method={method} needs a reference model: the base with the adapters off. Set "
                             "model.lora (LoRA or QLoRA); full fine-tuning (model.lora: null) has no reference here")
        self.train_totals = StepTotals()
        self.val_totals = EpochTotals()

    def step(self, batch: dict, model: torch.nn.Module, score: Callable,
             reduce_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> StepOutput:
        """One micro-batch: ``score`` is the module's scorer (policy); the reference is the same scorer with
        ``model``'s adapters off. ``reduce_sum`` sums over ranks (KTO's KL baseline)."""
        reference = reference_scorer(model, score) if self.needs_reference else None
        return run_step(self.method, self.config, batch, score, reference, reduce_sum or (lambda t: t))
