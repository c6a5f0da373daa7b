"""Memory measures for long sequences: a tiled MLP and checkpointed activations held on the host.

``model.tiled_mlp: <shards>`` (:func:`apply_tiled_mlp`): every decoder layer's MLP runs through DeepSpeed's
``TiledMLP`` (Arctic Long Sequence Training, ``deepspeed.runtime.sequence_parallel.ulysses_sp``): the forward runs
the MLP on ``shards`` slices of the sequence without autograd and keeps only its input; the backward recomputes each
slice with autograd and back-propagates it alone. The MLP's intermediate activations (``3 x intermediate_size`` per
token for a gated MLP, usually the largest a decoder layer makes) then exist for one slice at a time instead of the
whole sequence. The MLP is applied token by token, so the result is the same up to float summation order (the
gradients of its weights are summed slice by slice). The cost: one more MLP forward per step.

``model.gradient_checkpointing_offload: true`` (:func:`check_offload`, passed to
:func:`litft.model.grad_checkpointing.enable`): transformers' own ``activation_checkpointing_enable(offload=True)``
(torch's ``save_on_cpu`` around each checkpointed decoder layer): the one activation a checkpointed layer keeps for
its recomputation (its input hidden states, ``layers x sequence x hidden`` in all) is held in pinned host memory
instead of on the accelerator, and copied back in the backward. On a host without an accelerator the activations
already live on the host and transformers' offload cannot pin memory (it raises): there the key is ignored with a
warning (:func:`offload_applies`). Checked on CPU: equal losses and gradients through the same transformers path with
unpinned host copies; its memory saving needs an accelerator and was not measured.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any, Optional

import torch
import transformers

from litft.errors import LitFTError

log = logging.getLogger(__name__)

_MOE_ATTRIBUTES = ("experts", "router", "gate")
"""Attributes of a mixture-of-experts block (a router, a tuple output): not a token-wise dense MLP TiledMLP can tile."""


def even_shards(rows: int, requested: int) -> int:
    """The number of slices ``torch.chunk`` really makes of ``rows`` rows when asked for at most ``requested``.

    ``torch.chunk`` can make fewer slices than asked (9 rows in 4 -> 3 slices of 3). DeepSpeed's ``TiledMLP`` tells
    ZeRO a weight's gradient is complete after slice number ``shards``; with fewer slices it would never say so.
    """
    k = max(1, min(requested, rows))
    while True:
        size = -(-rows // k)
        made = -(-rows // size)
        if made == k:
            return k
        k = made


def _tiled_forward(shards: int, original):
    """An MLP ``forward(x)`` that runs ``original`` through ``TiledMLP`` in ``shards`` slices when training."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP  # optional, heavy (deepspeed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return original(x)
        # TiledMLP's backward recomputes outside the forward's autocast region: recompute under the same state
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else None

        def compute(_module, piece: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype, enabled=autocast):
                return original(piece)

        n = even_shards(x.numel() // max(x.shape[-1], 1), shards)
        params = [p for p in self.parameters() if p.requires_grad]
        return TiledMLP.apply(compute, self, x, n, params)

    return forward


def decoder_mlps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``mlp`` module of every decoder layer of a transformers model (layers: modules with an ``mlp`` and a
    ``self_attn``)."""
    return [m.mlp for m in model.modules() if isinstance(getattr(m, "mlp", None), torch.nn.Module)
            and hasattr(m, "self_attn")]


def apply_tiled_mlp(model: torch.nn.Module, shards: Optional[int]) -> int:
    """Make every decoder layer's MLP run tiled in ``shards`` sequence slices when training (None: leave the model
    as it is). Returns the number of MLPs changed. Evaluation and generation (no gradient) run the MLP as before."""
    if shards is None:
        return 0
    check_tiled_mlp(shards)
    mlps = decoder_mlps(model)
    if not mlps:
        raise LitFTError(f"model.tiled_mlp: {type(model).__name__} has no decoder layer with an `mlp` module to tile")
    for mlp in mlps:
        moe = [a for a in _MOE_ATTRIBUTES if hasattr(mlp, a)]
        if moe:
            raise LitFTError(f"model.tiled_mlp: {type(mlp).__name__} is a mixture-of-experts block ({moe[0]}); "
                             "only dense MLPs can be tiled (set model.tiled_mlp: null)")
    for mlp in mlps:
        mlp.forward = types.MethodType(_tiled_forward(shards, mlp.forward), mlp)
    return len(mlps)


def check_tiled_mlp(shards: Any) -> None:
    """One line when ``model.tiled_mlp`` is not None or a positive whole number; DeepSpeed must be installed."""
    if shards is None:
        return
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise LitFTError(f"model.tiled_mlp: expected a number of sequence slices >= 1 or null, got {shards!r}")
    try:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP  # noqa: F401  (optional: deepspeed)
    except ImportError:
        raise LitFTError("model.tiled_mlp needs DeepSpeed's TiledMLP: pip install 'litft[deepspeed]'") from None


def check_offload(offload: bool, *, gradient_checkpointing: bool, model: Optional[torch.nn.Module] = None) -> None:
    """One line when ``model.gradient_checkpointing_offload`` cannot apply: it needs gradient checkpointing, and (read
    on ``model``, the transformers model, when given) a transformers whose ``activation_checkpointing_enable`` takes
    ``offload`` (5.25 does)."""
    if not offload:
        return
    if not gradient_checkpointing:
        raise LitFTError("model.gradient_checkpointing_offload needs model.gradient_checkpointing: true "
                         "(it offloads what checkpointing keeps)")
    if model is None:
        return
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None or "offload" not in inspect.signature(enable).parameters:
        raise LitFTError(f"model.gradient_checkpointing_offload: transformers {transformers.__version__} cannot "
                         "offload checkpointed activations (activation_checkpointing_enable(offload=...)): upgrade it")


def offload_applies(offload: bool) -> bool:
    """Whether checkpointed activations are offloaded: ``offload`` asked for and an accelerator present (transformers
    offloads from ``torch.accelerator.current_accelerator()``; without one there is nothing to move, and pinning
    host memory fails). Logs once when the key is ignored."""
    if not offload:
        return False
    try:
        present = torch.accelerator.current_accelerator() is not None
    except (AttributeError, RuntimeError):  # torch without torch.accelerator, or 2.6's raise when none
        present = False
    if not present:
        log.warning("model.gradient_checkpointing_offload: no accelerator on this host, activations already live in "
                    "host memory: not offloading")
    return present
