"""The `model:` sub-configs. Each field's docstring is what `--help` and `--print_config` show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass
class QuantizationConfig:
    """bitsandbytes quantization of the frozen base model (QLoRA), through transformers' BitsAndBytesConfig."""

    bits: Literal[4, 8] = 4
    """4 (QLoRA, Linear4bit) or 8 (LLM.int8, Linear8bitLt)."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: nf4 (normal float, the QLoRA default) or fp4."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per parameter)."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the matmuls on dequantized weights; auto = the model's dtype."""
    quant_storage: Literal["auto", "uint8", "float32", "bfloat16", "float16"] = "auto"
    """Storage dtype of 4-bit weights; auto = uint8, or the compute dtype under ZeRO-3 (which shards it, and refuses
    any other storage)."""


@dataclass
class LoraConfig:
    """PEFT LoRA adapters on the frozen base model."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: Union[str, list[str]] = "all"
    """Module names to adapt; "all" = every linear layer except the output head."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Biases trained too: none, all (every bias of the model), or lora_only (biases of the adapted layers)."""
    modules_to_save: list[str] | None = None
    """Extra modules trained in full and saved with the adapter (e.g. ["lm_head"])."""


@dataclass
class OptimizerConfig:
    """AdamW and its memory-saving variants, or plain SGD."""

    name: Literal[
        "adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit",
        "adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_32bit", "sgd",
    ] = "adamw"
    """adamw (torch), or bitsandbytes' 8-bit and/or paged AdamW (CUDA). transformers' names are accepted too:
    adamw_torch and adamw_torch_fused (= adamw), adamw_bnb_8bit (= adamw_8bit), paged_adamw_32bit (= paged_adamw).
    sgd: torch SGD without momentum (the update is lr x gradient, which makes gradient scale visible, e.g. when
    comparing strategies)."""
    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine or linear to min_lr_ratio, or constant."""
    warmup_ratio: float = 0.0
    """Fraction of the total optimizer steps spent warming up linearly from 0."""
    warmup_steps: int | None = None
    """Warmup length in steps; overrides warmup_ratio when set."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak (cosine and linear)."""
