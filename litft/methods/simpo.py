"""SimPO (Meng et al. 2024): a reference-free margin on the length-normalised log-probabilities; with
``sft_weight`` > 0 it is CPO-SimPO.

Per pair, with ``a_c``, ``a_r`` the mean log-probability per trained token of the chosen and rejected replies:
``z = beta (a_c - a_r) - gamma``, loss ``-(1 - eps) log s(z) - eps log s(-z)`` (TRL's CPO ``loss_type="simpo"``,
whose ``simpo_gamma`` is gamma). rewards/chosen = ``beta a_c``, rewards/rejected = ``beta a_r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from litft.methods.base import check_range


@dataclass
class SimPOConfig:
    """SimPO: no reference model, a target margin between mean token log-probabilities (model.method: simpo)."""

    beta: float = 2.0
    """Scale of the reward (mean token log-probability); the SimPO paper uses 2.0-2.5 (TRL's CPO default is 0.1)."""
    gamma: float = 1.0
    """Target reward margin between chosen and rejected; the paper sets gamma / beta around 0.5."""
    label_smoothing: float = 0.0
    """Probability that a pair's labels are flipped, in [0, 0.5) (conservative loss)."""
    sft_weight: float = 0.0
    """CPO-SimPO's SFT term weight (TRL's cpo_alpha): the chosen reply's mean token NLL per pair; 0 = plain SimPO."""

    def __post_init__(self):
        check_range("model.simpo.beta", self.beta, low=0, low_open=True)
        check_range("model.simpo.gamma", self.gamma, low=0)
        check_range("model.simpo.label_smoothing", self.label_smoothing, low=0, high=0.5, high_open=True)
        check_range("model.simpo.sft_weight", self.sft_weight, low=0)

    def pair_losses(self, chosen_avg: torch.Tensor, rejected_avg: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss per pair, rewards/chosen, rewards/rejected) from mean token log-probabilities, SFT term excluded."""
        z = self.beta * (chosen_avg - rejected_avg) - self.gamma
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return losses, self.beta * chosen_avg.detach(), self.beta * rejected_avg.detach()
