"""The one model builder, for training and inference: a typed spec of the base model, the dtype its weights take,
and plain functions that load it (hub id / local folder / GGUF, bitsandbytes quantization, device, ZeRO-3
partitions) as the model to train (:func:`training_model`) or to generate with (:func:`inference_model`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from transformers import AutoModelForCausalLM

from litft.accelerators import accelerator_name, default_precision, precision_dtype
from litft.errors import LitFTError
from litft.model import grad_checkpointing, long_context, partition
from litft.model.adapters import apply_lora
from litft.model.config import LoraConfig, QuantizationConfig
from litft.model.dtypes import FLOAT_DTYPES, STORAGE_DTYPES
from litft.model.loading import check_attn_implementation, check_attn_name, resolve_model_path
from litft.model.params import count_parameters
from litft.model.quantization import bnb_config
from litft.shims.bitsandbytes import keep_4bit_weights_trainable
from litft.strategies import check_quantization, is_zero3

log = logging.getLogger(__name__)

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
AttnImplementation = str
"""sdpa, eager, flash_attention_2, flash_attention_3, or a hub kernel id (:func:`check_attn_name`)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the base model is: where its weights come from and how they are loaded (``model:`` keys of the same
    names; :class:`litft.model.module.LitFTModule` holds one as ``spec``)."""

    name_or_path: str
    """Hub id (e.g. Qwen/Qwen2.5-7B-Instruct), local folder, or ``pkg:<python package>`` folder."""
    gguf_file: Optional[str] = None
    """A GGUF file inside name_or_path; dequantized once to a cached plain checkpoint."""
    dtype: DtypeName = "auto"
    """dtype of the frozen base weights; auto follows the precision (:func:`weights_dtype`)."""
    attn_implementation: AttnImplementation = "sdpa"
    """transformers attention kernel: sdpa, eager, flash_attention_2, flash_attention_3, or a hub kernel that
    transformers loads through the ``kernels`` package (e.g. kernels-community/flash-attn2)."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the model (off unless you trust the source)."""
    quantization: Optional[QuantizationConfig] = None
    """Quantize the frozen base with bitsandbytes (QLoRA); None = no quantization."""

    def __post_init__(self):
        check_attn_name(self.attn_implementation)  # a typo stops here, before any data is prepared


def weights_dtype(dtype: str = "auto", *, precision: Any = "32-true", trains_base: bool = False) -> torch.dtype:
    """dtype of the base weights: ``dtype`` when set, else the compute dtype of the Lightning ``precision``
    (:func:`litft.accelerators.precision_dtype`: bf16-* → bfloat16, 16-* → float16, else float32).

    trains_base: every weight trains (no adapters). Under fp16 precision those stay float32: the grad scaler refuses
        fp16 gradients ("Attempting to unscale FP16 gradients"); a frozen base may be fp16.
    """
    if dtype != "auto":
        if dtype not in FLOAT_DTYPES:
            raise LitFTError(f"dtype: unknown '{dtype}' (float32, bfloat16 or float16)")
        return FLOAT_DTYPES[dtype]
    compute = precision_dtype(precision)
    if compute is torch.float16 and trains_base:
        return torch.float32
    return compute


def load_base(
    spec: ModelSpec,
    *,
    precision: Any = "32-true",
    trains_base: bool = False,
    strategy: Any = None,
    accelerator: Any = "cpu",
    device: Optional[torch.device | str] = None,
):
    """The transformers model of ``spec`` (``use_cache`` off), quantized when the spec says so.

    precision, trains_base: the dtype rule (:func:`weights_dtype`).
    strategy: the trainer's strategy (None: no trainer). With one, quantization is checked against it and the
        accelerator first (8-bit under ZeRO-3, QLoRA on NPU, ...: one line each); under ZeRO-3
        (:func:`litft.strategies.is_zero3`) a quantized base is partitioned while it loads (litft.model.partition).
    device: where a quantized base is loaded (default: the strategy's root device, else the CPU); a plain base is
        loaded on the CPU and moved by the caller (or the strategy).
    """
    check_attn_implementation(spec.attn_implementation)
    path = resolve_model_path(spec.name_or_path, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
    dtype = weights_dtype(spec.dtype, precision=precision, trains_base=trains_base)
    kwargs: dict[str, Any] = dict(
        dtype=dtype, attn_implementation=spec.attn_implementation, trust_remote_code=spec.trust_remote_code
    )
    sharded = is_zero3(strategy)
    loading: contextlib.AbstractContextManager = contextlib.nullcontext()
    q = spec.quantization
    if q is not None:
        if strategy is not None:
            check_quantization(
                strategy,
                accelerator_name(accelerator),
                bits=q.bits,
                compute_dtype=dtype if q.compute_dtype == "auto" else FLOAT_DTYPES[q.compute_dtype],
                quant_storage=None if q.quant_storage == "auto" else STORAGE_DTYPES[q.quant_storage],
                double_quant=q.double_quant,
            )
        kwargs["quantization_config"] = bnb_config(q, model_dtype=dtype, sharded=sharded)
        if sharded:
            # transformers loads a quantized model whole on every rank (no zero.Init, no device_map under ZeRO-3:
            # bitsandbytes picks the current device): partition each weight as it is loaded (litft.model.partition)
            loading = partition.loading_into_partitions(strategy.config)
        else:
            if device is None:
                device = strategy.root_device if strategy is not None else torch.device("cpu")
            device = torch.device(device)
            # "cpu", not an indexed cpu:<rank> (DeepSpeed ranks' devices): transformers 4.x reads cpu:1 as cuda:1
            kwargs["device_map"] = {"": "cpu" if device.type == "cpu" else device}
    try:
        with loading:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise LitFTError(f"model.name_or_path: cannot load {spec.name_or_path}: {err}") from None
    if q is not None and sharded:
        partition.partition_now(model, strategy.config)  # what transformers initialised itself
    model.config.use_cache = False
    return model


def training_model(
    spec: ModelSpec,
    *,
    lora: Optional[LoraConfig],
    gradient_checkpointing: bool,
    strategy: Any,
    accelerator: Any,
    precision: Any,
    gradient_checkpointing_offload: bool = False,
    tiled_mlp: Optional[int] = None,
):
    """The model to train, in train mode: the base (:func:`load_base`; partitioned under ZeRO-3), frozen when
    adapters train, gradient checkpointing in the mode :func:`litft.model.grad_checkpointing.use_reentrant` picks,
    the ``lora`` adapters (None: every weight trains); for long sequences (:mod:`litft.model.long_context`)
    ``gradient_checkpointing_offload`` holds the checkpointed activations in host memory and ``tiled_mlp`` (a number
    of sequence slices, None: off) tiles every decoder layer's MLP.

    QLoRA on one device, DDP or ZeRO-1/2: peft's ``prepare_model_for_kbit_training`` (the QLoRA recipe: the
    unquantized embeddings, norms and head upcast to fp32). QLoRA under ZeRO-3: no upcast — the base stays in its
    storage dtype, partitioned (TRL and Accelerate skip ``prepare_model_for_kbit_training`` for sharded QLoRA too);
    only the adapters are fp32.
    """
    long_context.check_tiled_mlp(tiled_mlp)
    model = load_base(spec, precision=precision, trains_base=lora is None, strategy=strategy, accelerator=accelerator)
    long_context.check_offload(gradient_checkpointing_offload, gradient_checkpointing=gradient_checkpointing,
                               model=model)
    if spec.quantization is not None:
        if is_zero3(strategy):
            model.requires_grad_(False)
        else:
            from peft import prepare_model_for_kbit_training  # heavy (peft: ~6 s); litft slurm must not pay it

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # Validation must not switch the 4-bit weights to bitsandbytes' inference-only CPU layout.
        keep_4bit_weights_trainable(model)
    if gradient_checkpointing:
        reentrant = grad_checkpointing.use_reentrant(strategy, frozen_base=lora is not None)
        grad_checkpointing.enable(model, reentrant=reentrant,
                                  offload=long_context.offload_applies(gradient_checkpointing_offload))
    long_context.apply_tiled_mlp(model, tiled_mlp)
    if lora is not None:
        # fp32 adapters (PEFT casts them up from the base's dtype) on every strategy. Under ZeRO-3 the base is
        # partitioned before they exist, so DeepSpeed's engine casts nothing: they stay fp32 beside the frozen
        # base in its storage dtype.
        model = apply_lora(model, lora)
    else:
        model.requires_grad_(True)
    model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes as found
    total, trainable = count_parameters(model)  # full sizes under ZeRO-3 and 4-bit quantization
    log.info("Trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def inference_dtype(spec: ModelSpec, *, dtype: Optional[str] = None, precision: Any = None,
                    device: Optional[str] = None) -> str:
    """The dtype name inference loads the base in: ``dtype``, else ``spec.dtype``; ``auto`` follows ``precision``
    (the trainer's), and ``precision`` auto (or None) what ``trainer.precision: auto`` picks on ``device``
    (:func:`litft.accelerators.default_precision`: bfloat16 where it has bf16 in hardware, float16 on older CUDA
    GPUs, else float32). Default device: cuda when available, else cpu."""
    name = dtype or spec.dtype
    if name == "auto":
        p = str(precision if precision is not None else "auto")
        if p == "auto":  # the training default of the device the model will run on
            kind = torch.device(device).type if device else "cuda" if torch.cuda.is_available() else "cpu"
            p = default_precision(kind)
        name = str(weights_dtype("auto", precision=p)).replace("torch.", "")
    if name not in FLOAT_DTYPES:
        raise LitFTError(f"dtype: unknown '{name}' (float32, bfloat16 or float16)")
    return name


def inference_model(
    spec: ModelSpec,
    adapter: Optional[str] = None,
    *,
    dtype: Optional[str] = None,
    precision: Any = None,
    quantized: bool = True,
    device: Optional[str] = None,
):
    """The model to generate with (or merge): the base :func:`load_base` builds for training (same dtype rule, same
    4/8-bit ``spec.quantization``) plus the PEFT adapter folder ``adapter``; eval mode, KV cache on.

    dtype, precision: :func:`inference_dtype`.
    quantized: False loads the base unquantized even when training quantized it (export merges into it).
    device: where the model runs (default: cuda when available, else cpu).
    """
    name = inference_dtype(spec, dtype=dtype, precision=precision, device=device)
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise LitFTError(f"--adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    built = dataclasses.replace(spec, dtype=name, quantization=spec.quantization if quantized else None)
    model = load_base(built, device=device)  # a quantized base is loaded onto the device (8-bit cannot move)
    if next(model.parameters()).device.type != torch.device(device).type:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel  # heavy (peft: ~6 s); litft slurm must not pay it

        model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()))
    model.config.use_cache = True
    model.eval()
    return model
