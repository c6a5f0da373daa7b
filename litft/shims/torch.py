"""torch.distributed internals litft relies on (run on torch 2.13; read in the 2.6-2.9 sources).

torch has no public way to list a process's process groups or to read a group's timeout, and changing a group's
timeout after creation is public only from torch 2.9 (``ProcessGroup.set_timeout``); before, it is
``torch.distributed.distributed_c10d._set_pg_timeout`` (torch >= 2.3, gloo and nccl only). tests/test_shims.py
checks every name used here on the installed torch.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d


def process_groups() -> list:
    """Every process group this process belongs to: the default one and those made by ``new_group`` (DeepSpeed's
    data-parallel groups, for one). ``distributed_c10d._world.pg_map`` is private (torch 2.0 to 2.13 at least)."""
    if not (dist.is_available() and dist.is_initialized()):
        return []
    return [group for group in list(c10d._world.pg_map) if not c10d._rank_not_in_group(group)]


def set_group_timeout(group, timeout: timedelta) -> bool:
    """Set the timeout of the collectives that ``group`` starts from now on; False where its backend cannot change it
    (a backend without ``setTimeout``, e.g. a device plugin's)."""
    setter = getattr(group, "set_timeout", None)  # ProcessGroup.set_timeout: public, torch >= 2.9, every backend
    try:
        if setter is not None:
            setter(timeout)
        else:
            with warnings.catch_warnings():
                # torch 2.6-2.8 warn ("only supported for either nccl or gloo") and do nothing for other backends.
                warnings.simplefilter("error")
                c10d._set_pg_timeout(timeout, group)
    except (RuntimeError, NotImplementedError, ValueError, UserWarning):
        return False
    return True


def group_timeout(group) -> timedelta | None:
    """The timeout ``group``'s collectives start with now (its first backend's ``options._timeout``), None where the
    backend does not tell."""
    for device in group._device_types:
        try:
            options = group._get_backend(torch.device(device)).options
            return options._timeout
        except (RuntimeError, AttributeError):
            continue
    return None
