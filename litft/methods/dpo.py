"""DPO (Rafailov et al. 2023) and its IPO, hinge and robust variants: pairs scored against the reference model (the
base with adapters off).

Per pair, with summed log-probabilities of the chosen and rejected replies under the policy and the reference,
``c = logp_c - ref_c`` and ``r = logp_r - ref_r``, ``d = c - r``:

- sigmoid: ``-(1 - eps) log s(beta d) - eps log s(-beta d)`` (eps = label_smoothing: conservative DPO; eps = 0 is
  TRL 1.16's ``sigmoid``, eps > 0 TRL's pre-1.0 ``sigmoid`` and LLaMA-Factory's ``dpo_label_smoothing``);
- robust: ``(-(1 - eps) log s(beta d) + eps log s(-beta d)) / (1 - 2 eps)`` (TRL's ``robust``);
- hinge: ``relu(1 - beta d)`` (SLiC; TRL's ``hinge``);
- ipo: ``(c / n_c - r / n_r - 1 / (2 beta))^2`` with n the reply's trained tokens (TRL 1.16's length-normalised IPO).

rewards/chosen = ``beta c``, rewards/rejected = ``beta r`` (TRL's definition, for every variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from litft.methods.base import check_range


@dataclass
class DPOConfig:
    """DPO: the policy's log-ratio to the reference, chosen vs rejected (model.method: dpo)."""

    beta: float = 0.1
    """Inverse strength of the pull toward the reference (IPO: its tau); higher = closer to the base model."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """sigmoid (DPO), ipo (length-normalised IPO), hinge (SLiC) or robust (robust DPO; needs label_smoothing)."""
    label_smoothing: float = 0.0
    """Probability that a pair's labels are flipped, in [0, 0.5): sigmoid = conservative DPO, robust = robust DPO."""
    sft_weight: float = 0.0
    """Weight of an SFT term: the chosen reply's mean token NLL per pair (LLaMA-Factory's pref_ftx); 0 = none."""
    precompute_reference: bool = False
    """Score the training pairs with the reference once, cached beside the tokenized data: one forward per step."""

    def __post_init__(self):
        check_range("model.dpo.beta", self.beta, low=0, low_open=True)
        check_range("model.dpo.label_smoothing", self.label_smoothing, low=0, high=0.5, high_open=True)
        check_range("model.dpo.sft_weight", self.sft_weight, low=0)

    def pair_losses(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                    ref_rejected_logps: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss per pair, rewards/chosen per pair, rewards/rejected per pair) without the SFT term."""
        c = chosen_logps - ref_chosen_logps
        r = rejected_logps - ref_rejected_logps
        d = c - r
        eps, beta = self.label_smoothing, self.beta
        if self.loss_type == "sigmoid":
            losses = -(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)
        elif self.loss_type == "robust":
            losses = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
        elif self.loss_type == "hinge":
            losses = torch.relu(1 - beta * d)
        elif self.loss_type == "ipo":
            delta = c / chosen_tokens.clamp(min=1) - r / rejected_tokens.clamp(min=1)
            losses = (delta - 1 / (2 * beta)) ** 2
        else:  # the Literal keeps the CLI from getting here
            raise ValueError(f"unknown DPO loss_type {self.loss_type!r}")
        return losses, beta * c.detach(), beta * r.detach()
