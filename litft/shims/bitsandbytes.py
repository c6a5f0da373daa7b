"""bitsandbytes internals litft relies on (checked against bitsandbytes 0.50.2)."""

from __future__ import annotations

import torch

CPU_PACKING_FLAG = "support_avx512bf16_for_cpu"
"""``Linear4bit`` instance attribute: on CPUs with AVX512-BF16, an eval-mode forward repacks the 4-bit weight
into an inference-only layout (``quant_state.packing_format_for_cpu``) and never packs it back. A later
training forward then runs ``gemv_4bit``, which has no autograd: gradients stop at the base layer (adapters
below it get none) and layers with a bias fail with "a view of a leaf Variable ... in-place operation"."""


def keep_4bit_weights_trainable(model: torch.nn.Module) -> int:
    """Turn off the eval-time CPU repacking on every 4-bit layer of ``model``; returns how many layers."""
    from bitsandbytes.nn import Linear4bit  # heavy (bitsandbytes: ~4 s): only for a quantized model

    n = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and hasattr(module, CPU_PACKING_FLAG):
            setattr(module, CPU_PACKING_FLAG, False)
            n += 1
    return n
