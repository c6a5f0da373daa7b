"""One micro-batch of a pairwise method (DPO, ORPO, SimPO): chosen and rejected rows in one forward.

The batch is :class:`litft.data.collate.PairCollator`'s ``(2B, L)`` layout: rows ``0..B-1`` chosen, ``B..2B-1``
rejected, pair i = rows i and B + i. The policy scores all 2B rows in one forward; DPO's reference scores them in a
second one (adapters off, no gradients), unless the batch carries them (``reference_logps`` ``(2B,)``, precomputed
once per dataset: :mod:`litft.methods.precompute`). The loss is per pair (summed here; the training step divides by the pairs
of the optimizer step on all ranks).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from litft.data.collate import REFERENCE_LOGPS
from litft.methods.base import StepOutput, detached
from litft.methods.dpo import DPOConfig
from litft.methods.logps import layout
from litft.methods.orpo import ORPOConfig
from litft.methods.simpo import SimPOConfig

PairConfig = Union[DPOConfig, ORPOConfig, SimPOConfig]


def pair_step(config: PairConfig, batch: dict, policy: Callable, reference: Optional[Callable] = None) -> StepOutput:
    """Loss sum and metrics of one preference micro-batch. ``policy`` / ``reference`` are scorers
    (:class:`litft.methods.logps.Scorer`); ``reference`` is needed by DPO only."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    extra = layout(batch)  # one row per pair (data.share_prompt): positions and reply segments
    logps, tokens = policy(ids, mask, labels, **extra)
    b = logps.shape[0] // 2
    chosen, rejected = logps[:b], logps[b:]
    n_chosen, n_rejected = tokens[:b], tokens[b:]
    chosen_avg, rejected_avg = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
    metrics = {}
    if isinstance(config, DPOConfig):
        if REFERENCE_LOGPS in batch:  # precomputed once per dataset (litft.methods.precompute): no second forward
            ref = batch[REFERENCE_LOGPS].to(device=logps.device, dtype=logps.dtype)
        elif reference is None:
            raise ValueError("DPO needs a reference scorer")
        else:
            ref, _ = reference(ids, mask, labels, **extra)
        losses, rewards_c, rewards_r = config.pair_losses(chosen, rejected, ref[:b], ref[b:], n_chosen, n_rejected)
        sft_weight, shown_c, shown_r = config.sft_weight, chosen, rejected  # TRL logs summed log-probabilities
    elif isinstance(config, SimPOConfig):
        losses, rewards_c, rewards_r = config.pair_losses(chosen_avg, rejected_avg)
        sft_weight, shown_c, shown_r = config.sft_weight, chosen_avg, rejected_avg  # TRL's CPO logs the means
    elif isinstance(config, ORPOConfig):
        losses, rewards_c, rewards_r, log_odds = config.pair_losses(chosen_avg, rejected_avg)
        sft_weight, shown_c, shown_r = 1.0, chosen_avg, rejected_avg
        metrics["log_odds_ratio"] = detached(F.logsigmoid(log_odds).sum(), b)
        metrics["log_odds_chosen"] = detached(log_odds.sum(), b)
    else:
        raise TypeError(f"not a pairwise method config: {type(config).__name__}")
    if sft_weight:
        nll = -chosen_avg
        losses = losses + sft_weight * nll
        metrics["nll_loss"] = detached(nll.sum(), b)
    metrics.update({
        "rewards/chosen": detached(rewards_c.sum(), b),
        "rewards/rejected": detached(rewards_r.sum(), b),
        "rewards/accuracies": detached((rewards_c > rewards_r).float().sum(), b),
        "logps/chosen": detached(shown_c.sum(), b),
        "logps/rejected": detached(shown_r.sum(), b),
    })
    return StepOutput(losses.sum(), torch.tensor(b, device=losses.device), metrics)
