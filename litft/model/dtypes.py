"""The dtype names config keys take (``model.dtype``, ``model.quantization.compute_dtype`` / ``quant_storage``)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Weights and compute: ``model.dtype``, ``quantization.compute_dtype``."""

STORAGE_DTYPES = {**FLOAT_DTYPES, "uint8": torch.uint8}
"""Where 4-bit weights are stored: ``quantization.quant_storage``."""
