"""KTO (Ethayarajh et al. 2024): single replies judged desirable or undesirable, scored against the reference model
(the base with adapters off) and a KL baseline.

Per example, with ``l = logp - ref_logp`` (summed over the reply's trained tokens) and the baseline ``kl``:
desirable ``w_d (1 - s(beta (l - kl)))``, undesirable ``w_u (1 - s(beta (kl - l)))`` (TRL's ``loss_type="kto"``).
``kl`` is estimated without gradients from the mismatched KL rows of the micro-batch (row i = prompt i + reply i-1,
TRL's pairing): the mean of ``logp - ref_logp`` over those rows on all ranks, clamped at 0. rewards/chosen and
rewards/rejected are the means of ``beta l`` over the desirable and the undesirable examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from litft.errors import LitFTError
from litft.methods.base import check_range


@dataclass
class KTOConfig:
    """KTO: desirable / undesirable single replies against the reference and a KL baseline (model.method: kto)."""

    beta: float = 0.1
    """Inverse strength of the pull toward the reference; higher = closer to the base model."""
    desirable_weight: float = 1.0
    """Weight of desirable examples' losses (raise it when they are the minority; the paper keeps
    desirable_weight x desirable / (undesirable_weight x undesirable) in [1, 4/3])."""
    undesirable_weight: float = 1.0
    """Weight of undesirable examples' losses."""
    sft_weight: float = 0.0
    """Weight of an SFT term on desirable examples: their reply's mean token NLL per example; 0 = none."""
    precompute_reference: bool = False
    """Not available for KTO (must stay false): its KL rows pair each example with its shuffled micro-batch neighbour."""

    def __post_init__(self):
        if self.precompute_reference:
            raise LitFTError(
                "model.kto.precompute_reference: KTO's KL rows pair each example's prompt with the reply of the example "
                "before it in the micro-batch, which the shuffle changes every epoch, so their reference "
                "log-probabilities cannot be computed once per dataset; set it to false (model.dpo has it)")
        check_range("model.kto.beta", self.beta, low=0, low_open=True)
        check_range("model.kto.desirable_weight", self.desirable_weight, low=0)
        check_range("model.kto.undesirable_weight", self.undesirable_weight, low=0)
        check_range("model.kto.sft_weight", self.sft_weight, low=0)

    def example_losses(self, logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
                       kl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss per example, reward ``beta l`` per example), SFT term excluded; ``kl`` is a detached scalar."""
        logratio = logps - ref_logps
        good = self.desirable_weight * (1 - torch.sigmoid(self.beta * (logratio - kl)))
        bad = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - logratio)))
        return torch.where(desirable, good, bad), self.beta * logratio.detach()
