"""PEFT adapters (LoRA, DoRA, rsLoRA) on a frozen base model."""

from __future__ import annotations

import torch

from litft.errors import LitFTError
from litft.model.config import LoraConfig


def all_linear_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of every linear layer (plain, 4-bit or 8-bit) except the output head."""
    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb  # heavy (~4 s): only to recognise quantized linears

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except Exception:  # bitsandbytes missing or without a backend: plain linears only
        pass
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear_types) and module is not head
    }
    if not names:
        raise LitFTError("model.lora.target_modules: 'all' found no linear layer in this model")
    return sorted(names)


def apply_lora(model, lora: LoraConfig, *, autocast_adapter_dtype: bool = True):
    """Wrap ``model`` in a PeftModel with LoRA adapters; only the adapters (and modules_to_save) train."""
    # heavy (peft: ~6 s): imported when adapters are applied, so that litft slurm does not pay it
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = all_linear_names(model) if lora.target_modules == "all" else lora.target_modules
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        bias=lora.bias,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config, autocast_adapter_dtype=autocast_adapter_dtype)
    except ValueError as err:  # e.g. a target module that does not exist
        raise LitFTError(f"model.lora: {err}") from None
