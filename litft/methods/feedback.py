"""One micro-batch of KTO: labelled single replies, and the mismatched KL rows its baseline is estimated from.

Batch layout: :class:`litft.data.collate.FeedbackCollator` (``input_ids``/``labels``/``attention_mask`` (B, L),
``label`` (B,) desirable, ``kl_*`` (B, L')). Forwards, in TRL's order: the policy on the KL rows (no gradients), the
policy on the examples, the reference (adapters off) on the KL rows and on the examples. The loss is per example.
"""

from __future__ import annotations

from typing import Callable

import torch

from litft.methods.base import StepOutput, detached
from litft.methods.kto import KTOConfig


def kl_baseline(policy_kl: torch.Tensor, reference_kl: torch.Tensor, reduce_sum: Callable) -> torch.Tensor:
    """KTO's KL estimate: mean of ``policy - reference`` log-probabilities over the KL rows of all ranks (one
    all-reduce of two numbers), clamped at 0, detached."""
    stats = torch.stack([(policy_kl - reference_kl).detach().float().sum(),
                         torch.tensor(float(policy_kl.shape[0]), device=policy_kl.device)])
    stats = reduce_sum(stats)
    return (stats[0] / stats[1].clamp(min=1)).clamp(min=0)


def feedback_step(config: KTOConfig, batch: dict, policy: Callable, reference: Callable,
                  reduce_sum: Callable = lambda t: t) -> StepOutput:
    """Loss sum and metrics of one KTO micro-batch; ``reduce_sum`` sums a tensor over ranks (every rank calls it)."""
    desirable = batch["label"].to(torch.bool)
    with torch.no_grad():
        policy_kl, _ = policy(batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"])
    logps, tokens = policy(batch["input_ids"], batch["attention_mask"], batch["labels"])
    reference_kl, _ = reference(batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"])
    ref, _ = reference(batch["input_ids"], batch["attention_mask"], batch["labels"])
    kl = kl_baseline(policy_kl, reference_kl, reduce_sum)
    losses, rewards = config.example_losses(logps, ref, desirable.to(logps.device), kl)
    good = desirable.to(logps.device)
    n_good, n_bad = good.sum(), (~good).sum()
    metrics = {
        "rewards/chosen": detached(torch.where(good, rewards, 0).sum(), n_good),
        "rewards/rejected": detached(torch.where(good, 0, rewards).sum(), n_bad),
        "logps/chosen": detached(torch.where(good, logps.detach(), 0).sum(), n_good),
        "logps/rejected": detached(torch.where(good, 0, logps.detach()).sum(), n_bad),
        "kl": detached(kl, 1),
    }
    if config.sft_weight:
        nll = torch.where(good, -logps / tokens.clamp(min=1), 0)
        losses = losses + config.sft_weight * nll
        metrics["nll_loss"] = detached(nll.sum(), n_good)
    return StepOutput(losses.sum(), torch.tensor(logps.shape[0], device=losses.device), metrics)
