"""Gradient (activation) checkpointing: which mode of ``torch.utils.checkpoint`` each run uses, and turning it on.

One decision, :func:`use_reentrant`, for every strategy and every kind of training:

=====================  ==============================  ===============================================================
strategy               LoRA / QLoRA (frozen base)      full fine-tuning (every parameter trains)
=====================  ==============================  ===============================================================
single device          non-reentrant                   non-reentrant
DDP                    non-reentrant                   non-reentrant
DeepSpeed ZeRO-1/2     non-reentrant                   non-reentrant
DeepSpeed ZeRO-3       non-reentrant (DeepSpeed >=     non-reentrant
                       0.19.3); reentrant before
=====================  ==============================  ===============================================================

Why non-reentrant: it is PyTorch's recommended mode; it computes the gradients of the parameters inside a
checkpointed block whether or not the block's input requires a gradient (reentrant checkpointing gives the adapters
inside a block *no* gradient when the frozen embeddings feed it a tensor without ``requires_grad``, unless the
embedding output is forced to require one: ``enable_input_require_grads``); and it works with DDP's reducer
(reentrant backward passes fire DDP's hooks out of order unless the graph is static).

Why the ZeRO-3 exception, and why it no longer applies: ZeRO-3 releases (re-partitions) a parameter after its
module's forward. The recomputation of a non-reentrant checkpoint re-runs those forward hooks, and before DeepSpeed
0.19.3 the release also emptied *frozen* parameters that the checkpoint had saved by reference, so backward failed
with ``CheckpointError: Recomputed values ... have different metadata`` (shape [n] vs [0]) — every LoRA/QLoRA run
with gradient checkpointing under ZeRO-3 (transformers issue 47254). TRL forces reentrant checkpointing for PEFT +
ZeRO-3 for that reason. DeepSpeed 0.19.3 (PR 8148) keeps frozen parameters gathered during a recompute, and litft
requires DeepSpeed >= 0.19.5 for its gradient accumulation, so ZeRO-3 uses non-reentrant checkpointing too (measured
on CPU, 2 processes, DeepSpeed 0.19.8, bf16: per-step losses with checkpointing on equal to those with it off, LoRA
and QLoRA). The reentrant branch stays for an older DeepSpeed (the version is read, not assumed), with the embedding
output made to require a gradient as reentrant checkpointing needs.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from packaging.version import Version

from litft.strategies import is_zero3

ZERO3_FROZEN_NON_REENTRANT = (0, 19, 3)
"""First DeepSpeed release whose ZeRO-3 keeps frozen parameters whole during a checkpoint's recomputation."""


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string; local and pre-release tags ignored (0.19.3+cpu -> (0, 19, 3))."""
    return Version(version).release[:3]


def use_reentrant(strategy: Any, *, frozen_base: bool, deepspeed_version: Optional[str] = None) -> bool:
    """Whether gradient checkpointing runs reentrant (True) or not (False) for this run (see the module's table).

    strategy: the trainer's strategy (None: one process, no trainer).
    frozen_base: the base model is frozen (LoRA / QLoRA); False for full fine-tuning.
    deepspeed_version: the installed DeepSpeed's version (default: read it when the strategy is ZeRO-3).
    """
    if strategy is None or not frozen_base or not is_zero3(strategy):
        return False
    if deepspeed_version is None:
        import deepspeed  # optional, heavy: read only under ZeRO-3

        deepspeed_version = deepspeed.__version__
    return _release(deepspeed_version) < ZERO3_FROZEN_NON_REENTRANT


def enable(model: torch.nn.Module, *, reentrant: bool, offload: bool = False) -> None:
    """Checkpoint every decoder layer of the transformers ``model`` in the given mode.

    offload: hold each layer's checkpointed input in host memory (transformers' ``offload``, torch's
        ``save_on_cpu``; :mod:`litft.model.long_context` checks that the installed transformers has it).

    Reentrant checkpointing needs the embedding output to require a gradient (frozen embeddings give it none, and
    the adapters inside every checkpointed layer would then get no gradient): ``enable_input_require_grads``.
    """
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5's name
        extra = {"offload": True} if offload else {}
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **extra)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if reentrant:
        model.enable_input_require_grads()
