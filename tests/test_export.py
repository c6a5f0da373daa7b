"""export: merged model == base + adapter; loadable by plain transformers; QLoRA base is dequantized."""

import logging
from pathlib import Path

import pytest
import torch

from litft.commands.export import merge_adapter
from litft.model.config import QuantizationConfig
from litft.model.module import LitFTModule


def _make_adapter(base_dir, out_dir, seed=1):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # init_lora_weights=False: random A and B, so the adapter really changes the logits.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out_dir)
    return out_dir


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_logits_match_base_plus_adapter(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = _make_adapter(tiny_llama, tmp_path / "adapter")
    out = merge_adapter(LitFTModule(tiny_llama, dtype="float32").spec, adapter, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "generation_config.json").is_file()
    assert not list(out.glob("adapter_*")), "merged export must not need peft"

    ids = torch.tensor([[1, 5, 9, 42, 7, 100, 3]])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), str(adapter))
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), ids)
    ref_logits = _logits(reference, ids)
    assert not torch.allclose(ref_logits, base_logits, atol=1e-3), "the adapter must change the logits"
    # Stated tolerance: fp32 merge differs from base + adapter only by rounding (<= 1e-5 absolute).
    torch.testing.assert_close(_logits(merged, ids), ref_logits, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out).encode("hello") == AutoTokenizer.from_pretrained(tiny_llama).encode("hello")


def test_export_qlora_config_warns_and_saves_bf16(tiny_qwen2, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    adapter = _make_adapter(tiny_qwen2, tmp_path / "adapter")
    with caplog.at_level(logging.WARNING):
        out = merge_adapter(LitFTModule(tiny_qwen2, quantization=QuantizationConfig(bits=4)).spec, adapter, tmp_path / "m",
                            dtype="bfloat16")
    assert "quantized (QLoRA)" in caplog.text
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16
    assert not hasattr(merged.config, "quantization_config")


def test_export_rejects_missing_adapter(tiny_llama, tmp_path):
    from litft.errors import LitFTError

    with pytest.raises(LitFTError, match="not a PEFT adapter folder"):
        merge_adapter(LitFTModule(tiny_llama).spec, tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
