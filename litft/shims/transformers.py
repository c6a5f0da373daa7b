"""transformers internals litft relies on (checked against transformers 5.25)."""

from __future__ import annotations

import torch

LOADED_FLAG = "_is_hf_initialized"
"""Attribute ``from_pretrained`` sets on each parameter it fills from the checkpoint, just before assigning it to
its module (transformers 5: ``core_model_loading.set_param_for_module``), so that weight initialisation skips it.
Parameters the checkpoint lacks are assigned without it and initialised afterwards."""


def loaded_from_checkpoint(param: torch.Tensor) -> bool:
    """Whether ``from_pretrained`` filled ``param`` from the checkpoint (False: not, or not known)."""
    return bool(getattr(param, LOADED_FLAG, False))
