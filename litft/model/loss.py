"""Causal-LM loss on trained positions only, computed from hidden states.

Positions whose (shifted) label is -100 are dropped *before* the output projection, so the
vocabulary-wide head runs only where a token is trained, in chunks to bound the fp32 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def target_count(labels: torch.Tensor) -> torch.Tensor:
    """Number of trained positions after the causal shift."""
    return (labels[..., 1:] != IGNORE_INDEX).sum()


def lm_loss_from_hidden(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, *, chunk_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of trained positions) for hidden states ``(B, T, H)``."""
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    selected = hidden[..., :-1, :][mask]
    wanted = targets[mask]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.numel(), chunk_size):
        logits = head(selected[start : start + chunk_size]).float()
        total = total + F.cross_entropy(logits, wanted[start : start + chunk_size], reduction="sum")
    return total, mask.sum()


def lm_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of trained positions) for logits ``(B, T, V)``."""
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits[..., :-1, :][mask].float(), targets[mask], reduction="sum")
    return loss, mask.sum()
