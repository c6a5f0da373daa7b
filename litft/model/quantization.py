"""bitsandbytes quantization of the frozen base model (QLoRA), through transformers' BitsAndBytesConfig."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

from litft.model.config import QuantizationConfig
from litft.model.dtypes import FLOAT_DTYPES, STORAGE_DTYPES
from litft.versions import check



def bnb_config(quant: QuantizationConfig, *, model_dtype: torch.dtype, sharded: bool = False):
    """transformers.BitsAndBytesConfig for ``quant``.

    sharded: ZeRO-3 shards the quantized weights, which needs them stored in the compute dtype
        (:func:`litft.strategies.check_quantization` refuses any other storage there).
    """
    check("bitsandbytes")  # litft/versions.py
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = model_dtype if quant.compute_dtype == "auto" else FLOAT_DTYPES[quant.compute_dtype]
    if quant.quant_storage == "auto":
        storage = compute if sharded else torch.uint8
    else:
        storage = STORAGE_DTYPES[quant.quant_storage]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
    )
