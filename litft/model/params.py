"""Parameter counts that hold under sharding and quantization."""

from __future__ import annotations

import torch


def logical_numel(param: torch.Tensor) -> int:
    """Elements of the parameter as the model sees it, whatever holds it here.

    - DeepSpeed ZeRO-3 replaces a partitioned parameter by an empty placeholder (``numel() == 0``) and keeps
      the full size in ``ds_numel``;
    - bitsandbytes 4-bit weights are packed (two values per byte) and keep the logical shape in ``quant_state``.
    """
    ds_numel = getattr(param, "ds_numel", None)
    if ds_numel is not None:
        return int(ds_numel)
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None:
        return int(torch.Size(quant_state.shape).numel())
    return int(param.numel())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters), counted with :func:`logical_numel`."""
    total = trainable = 0
    for p in model.parameters():
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable
