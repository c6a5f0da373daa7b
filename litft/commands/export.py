"""``python -m litft export --config X.yaml --adapter DIR --output_dir DIR``: merge a LoRA adapter into its base.

The result is a plain transformers checkpoint (safetensors + tokenizer + generation config) that
``AutoModelForCausalLM.from_pretrained`` loads without peft. A QLoRA base is never merged in 4-bit: the base is
reloaded unquantized in the chosen dtype (with a warning) and the adapter merged into that. Written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from litft.data.templates import chat_template_for
from litft.errors import LitFTError
from litft.inference import load_model
from litft.io import atomic_dir
from litft.model.build import ModelSpec

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--adapter", type=Optional[str], default=None,
                        help="PEFT adapter folder (default: <output_dir>/adapter of the run in --config).")
    parser.add_argument("--export_dtype", type=Optional[str], default=None,
                        help="dtype of the merged weights: float32, bfloat16, float16 (default: model.dtype, else float32).")


def merge_adapter(spec: ModelSpec, adapter: str | Path, out_dir: str | Path, *, dtype: Optional[str] = None,
                  template: Optional[str] = None) -> Path:
    """Merge ``adapter`` into the base that ``spec`` (the ``model:`` section) builds and save it to ``out_dir`` atomically,
    with the tokenizer whose ``chat_template`` is the training template ``template`` (data.template)."""
    name = dtype or (spec.dtype if spec.dtype != "auto" else "float32")
    if spec.quantization is not None:
        log.warning(
            "The adapter was trained on a quantized (QLoRA) base: merging it into the base reloaded unquantized in %s. "
            "The merged model's outputs differ slightly from the 4-bit base + adapter.", name,
        )
    model, tokenizer = load_model(spec, adapter=str(adapter), dtype=name, quantized=False, device="cpu")
    merged = model.merge_and_unload()
    tokenizer.chat_template = chat_template_for(tokenizer, template)
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
    cfg, model_spec, template = cli.config, cli.model.spec, cli.datamodule.template
    if not cfg.output_dir:
        raise LitFTError("export: give --output_dir (where the merged model goes)")
    adapter = cfg.adapter or str(Path(cfg.output_dir) / "adapter")
    target = _target(cfg.output_dir)
    merge_adapter(model_spec, adapter, target, dtype=cfg.export_dtype, template=template)
    print(f"Merged model saved to {target} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0
