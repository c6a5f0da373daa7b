"""DeepSpeed ZeRO-3 details the loss needs about a partitioned output head (one shim for DeepSpeed internals).

Public API used: ``deepspeed.zero.GatheredParameters``. Internal attributes read (checked against the installed
DeepSpeed by tests/test_loss.py): ``param.ds_id`` (the parameter is ZeRO-3 managed), ``param.ds_shape`` (its full
shape), ``param.ds_status`` (``ZeroParamStatus``: NOT_AVAILABLE = partitioned now, AVAILABLE = gathered, e.g. a
small parameter DeepSpeed keeps whole under ``stage3_param_persistence_threshold``, INFLIGHT = being prefetched).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch


def is_partitioned(module: torch.nn.Module) -> bool:
    """Whether the module's own parameters are managed by ZeRO-3."""
    return any(hasattr(p, "ds_id") for p in module.parameters(recurse=False))


def full_rows(weight: torch.Tensor) -> int:
    """Rows of a (possibly partitioned) weight: the vocabulary size of an output head."""
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def gather_once(module: torch.nn.Module) -> Optional[contextlib.AbstractContextManager]:
    """A context in which the module's ZeRO-3 parameters are whole, entered with one all-gather, or None when that
    cannot be done safely (some parameter is already gathered or being prefetched: the caller then calls the module
    itself, whose hooks gather). The status of a parameter evolves the same way on every rank (same module calls),
    so every rank makes the same choice."""
    params = list(module.parameters(recurse=False))
    if not params or not all(hasattr(p, "ds_id") for p in params):
        return None
    if any(getattr(p.ds_status, "name", None) != "NOT_AVAILABLE" for p in params):
        return None
    import deepspeed  # optional, heavy: only for ZeRO-3 partitioned parameters

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
