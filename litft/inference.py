"""Loading a base model (+ a PEFT adapter) for inference, and generating from chat messages.

Shared by the export, generate, chat, predict and evaluate commands. Prompts are encoded with the same
template the training data used (``litft.data.templates.encode_prompt``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from litft.errors import LitFTError
from litft.model.loading import load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def resolve_dtype(dtype: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16``/``"auto"``/None → a torch dtype (``auto``/None → default)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return default
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower()).replace("torch.", "")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise LitFTError(f"model.dtype: unknown dtype '{dtype}' (use float32, bfloat16 or float16)")
    return value


def is_quantized(model_cfg: Any) -> bool:
    """Whether the model config asks for a bitsandbytes 4/8-bit base (QLoRA)."""
    q = _get(model_cfg, "quantization")
    if q in (None, False, "none", "None", ""):
        return False
    if isinstance(q, (str, int)):
        return True
    bits = _get(q, "bits", _get(q, "load_in_4bit", None))
    return bits not in (None, False, 0, 16, 32, "none")


def check_adapter(adapter: Optional[str]) -> Optional[Path]:
    """The adapter folder, or a LitFTError naming what is missing."""
    if adapter is None:
        return None
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise LitFTError(f"--adapter: {path} is not a PEFT adapter folder (no adapter_config.json)")
    return path


def load_base(model_cfg: Any, *, dtype: Optional[torch.dtype] = None, device: str = "cpu"):
    """The base causal LM named by ``model_cfg`` (name_or_path, gguf_file, trust_remote_code, dtype), always
    unquantized: a QLoRA base is loaded in ``dtype`` (the adapter then runs on the dequantized weights)."""
    from transformers import AutoModelForCausalLM

    trust = bool(_get(model_cfg, "trust_remote_code", False))
    path = resolve_model_path(_get(model_cfg, "name_or_path"), gguf_file=_get(model_cfg, "gguf_file"), trust_remote_code=trust)
    dtype = dtype or resolve_dtype(_get(model_cfg, "dtype"))
    kwargs: dict = dict(dtype=dtype, trust_remote_code=trust)
    attn = _get(model_cfg, "attn_implementation")
    if attn not in (None, "auto"):
        kwargs["attn_implementation"] = attn
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(device)
    model.eval()
    return model


def load_for_inference(model_cfg: Any, adapter: Optional[str] = None, *, device: Optional[str] = None):
    """(model, tokenizer) for generation: the (unquantized) base + the adapter when given."""
    adapter_path = check_adapter(adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(
        _get(model_cfg, "name_or_path"), gguf_file=_get(model_cfg, "gguf_file"),
        trust_remote_code=bool(_get(model_cfg, "trust_remote_code", False)),
    )
    if is_quantized(model_cfg):
        log.warning("The base was trained quantized (QLoRA); inference runs it unquantized in its dtype.")
    model = load_base(model_cfg, device=device)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
        model.eval()
    return model, tokenizer


def encode_messages(tokenizer, messages: list[dict], template: Optional[str] = None, tools: Optional[str] = None) -> list[int]:
    """Prompt ids for ``messages`` ending with the assistant's turn open, as in training."""
    from litft.data.templates import encode_prompt

    return list(encode_prompt(tokenizer, messages, template=template, tools=tools))


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 8, streamer=None) -> list[str]:
    """Decode a completion for each prompt (ids). Greedy when temperature == 0. Left-pads batches."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None and gen_cfg.eos_token_id is not None:
        extra = gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id]
        eos = list(dict.fromkeys(eos + extra))
    kwargs: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer, **kwargs)
        for row in out[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs
