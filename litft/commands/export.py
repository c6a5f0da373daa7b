"""``python -m litft export --config X.yaml --adapter DIR --output_dir DIR``: merge a LoRA adapter into its base.

The result is a plain transformers checkpoint (safetensors + tokenizer + generation config) that
``AutoModelForCausalLM.from_pretrained`` loads without peft. A QLoRA base is never merged in 4-bit: the base is
reloaded unquantized in the chosen dtype (with a warning) and the adapter merged into that. Written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from litft.errors import LitFTError
from litft.inference import _get, check_adapter, is_quantized, load_base, resolve_dtype
from litft.io import atomic_dir
from litft.model.loading import load_tokenizer

NEEDS_TRAINER = False
log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--adapter", type=Optional[str], default=None,
                        help="PEFT adapter folder (default: <output_dir>/adapter of the run in --config).")
    parser.add_argument("--export_dtype", type=Optional[str], default=None,
                        help="dtype of the merged weights: float32, bfloat16, float16 (default: model.dtype, else float32).")


def merge_adapter(model_cfg: Any, adapter: str | Path, out_dir: str | Path, *, dtype: Any = None) -> Path:
    """Merge ``adapter`` into the base named by ``model_cfg`` and save it to ``out_dir`` (atomically)."""
    from peft import PeftModel

    adapter_path = check_adapter(str(adapter))
    dtype = resolve_dtype(dtype if dtype is not None else _get(model_cfg, "dtype"))
    if is_quantized(model_cfg):
        log.warning(
            "The adapter was trained on a quantized (QLoRA) base: merging it into the base reloaded unquantized in %s. "
            "The merged model's outputs differ slightly from the 4-bit base + adapter.", dtype,
        )
    base = load_base(model_cfg, dtype=dtype, device="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.to(dtype)
    tokenizer = load_tokenizer(_get(model_cfg, "name_or_path"), gguf_file=_get(model_cfg, "gguf_file"),
                               trust_remote_code=bool(_get(model_cfg, "trust_remote_code", False)))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if merged.generation_config is not None and not (tmp / "generation_config.json").exists():
            merged.generation_config.save_pretrained(tmp)
    log.info("Merged model written to %s", out_dir)
    return out_dir


def _target(output_dir: str) -> Path:
    """Never overwrite a training run's folder: if it holds adapter/ or checkpoints/, export into <it>/merged."""
    target = Path(output_dir)
    if (target / "adapter").exists() or (target / "checkpoints").exists():
        return target / "merged"
    return target


def run(cli) -> int:
    cfg = cli.config
    output_dir = _get(cfg, "output_dir")
    if not output_dir:
        raise LitFTError("export: give --output_dir (where the merged model goes)")
    adapter = _get(cfg, "adapter") or str(Path(output_dir) / "adapter")
    target = _target(output_dir)
    merge_adapter(_get(cfg, "model"), adapter, target, dtype=_get(cfg, "export_dtype"))
    print(f"Merged model saved to {target} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0
