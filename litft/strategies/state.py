"""Trainable (adapter) weights of a model, whole, under any strategy — ZeRO-3 included."""

from __future__ import annotations

import torch


def gathered_trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: cpu tensor}`` of the parameters that require grad, gathered from all ranks under ZeRO-3.

    Under ZeRO-3 each rank holds a shard and the parameter itself is an empty placeholder (the cause of
    empty adapter files after ZeRO-3 in other tools); this gathers them. Collective under ZeRO-3: call it
    on every rank. Names are as in ``model.named_parameters()``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    partitioned = [p for _, p in named if hasattr(p, "ds_id")]
    if not partitioned:
        return {n: p.detach().cpu().clone() for n, p in named}
    import deepspeed  # optional, heavy: only for ZeRO-3 partitioned parameters

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        return {n: p.detach().cpu().clone() for n, p in named}
