"""ORPO (Hong et al. 2024): SFT on the chosen reply plus an odds-ratio penalty, no reference model.

Per pair, with ``a_c``, ``a_r`` the mean log-probability per trained token of the chosen and rejected replies,
``log_odds = (a_c - a_r) - (log(1 - exp a_c) - log(1 - exp a_r))``, the loss is ``-a_c - beta log s(log_odds)``:
the chosen reply's mean token NLL (the paper's L_SFT, LLaMA-Factory's form) plus beta (the paper's lambda) times
the odds-ratio term (TRL's ``odds_ratio_loss``). rewards/chosen = ``beta a_c``, rewards/rejected = ``beta a_r``.

TRL's ORPOTrainer differs in the NLL term only: it averages the NLL over the micro-batch's tokens of the whole
chosen row, prompt included; litft's is per pair and on the reply (the trained span), so it is normalised exactly
across micro-batches and ranks like every other per-pair loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from litft.methods.base import check_range


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (two branches split at -ln 2)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass
class ORPOConfig:
    """ORPO: SFT plus an odds-ratio preference term, no reference model (model.method: orpo)."""

    beta: float = 0.1
    """Weight of the odds-ratio term (lambda in the paper; beta in TRL and LLaMA-Factory)."""

    def __post_init__(self):
        check_range("model.orpo.beta", self.beta, low=0, low_open=True)

    def pair_losses(self, chosen_avg: torch.Tensor, rejected_avg: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(odds-ratio loss per pair ``-beta log s(log_odds)``, rewards/chosen, rewards/rejected, log_odds); the SFT
        term ``-a_c`` is added by the caller."""
        chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
        log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
        losses = -self.beta * F.logsigmoid(log_odds)
        return losses, self.beta * chosen_avg.detach(), self.beta * rejected_avg.detach(), log_odds
