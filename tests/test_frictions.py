"""Small frictions of the four workflows: flash-attn missing (one line), transformers' optimizer names, LoRA bias."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from litft.cli import run as litft_run
from litft.errors import LitFTError
from litft.model.adapters import apply_lora
from litft.model.config import LoraConfig, OptimizerConfig
from litft.model.module import LitFTModule
from litft.model.optim import build_optimizer
from tests.helpers import attach_trainer


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_the_package_is_one_line(tiny_qwen2, tmp_path, capsys):
    module = LitFTModule(tiny_qwen2, attn_implementation="flash_attention_2")
    with pytest.raises(LitFTError, match=r"needs the flash_attn package.*pip install flash-attn --no-build-isolation"
                                         r".*or set model.attn_implementation: sdpa"):
        attach_trainer(module).configure_model()
    with pytest.raises(SystemExit) as exit_:
        from litft.cli import main

        main(["generate", "--model.name_or_path", tiny_qwen2, "--model.attn_implementation", "flash_attention_2",
              "--data.dataset", "x", "--prompt", "hi", "--output_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ImportError" not in err
    assert err.strip().splitlines()[-1].startswith("litft: error: model.attn_implementation: flash_attention_2 needs")


def test_attn_implementation_names_and_hub_kernels(tiny_qwen2):
    """A typo stops when the module is built (before any data is prepared); a hub kernel id is accepted (transformers
    loads it with the kernels package: tests/test_packing_varlen.py runs one)."""
    with pytest.raises(LitFTError, match=r"model.attn_implementation: 'sdpaa' is not one of sdpa, eager, "
                                         r"flash_attention_2, flash_attention_3 or a hub kernel id"):
        LitFTModule(tiny_qwen2, attn_implementation="sdpaa")
    for name in ("kernels-community/flash-attn2", "kernels-community/vllm-flash-attn3@v1:flash_attn_varlen_func"):
        assert LitFTModule(tiny_qwen2, attn_implementation=name).spec.attn_implementation == name


@pytest.mark.parametrize("name,cls", [("adamw_torch", "torch.optim.adamw.AdamW"),
                                      ("adamw_torch_fused", "torch.optim.adamw.AdamW"),
                                      ("paged_adamw_32bit", "bitsandbytes.optim.adamw.PagedAdamW"),
                                      ("adamw_bnb_8bit", "bitsandbytes.optim.adamw.AdamW8bit"),
                                      ("paged_adamw_8bit", "bitsandbytes.optim.adamw.PagedAdamW8bit")])
def test_transformers_optimizer_names_are_aliases(name, cls):
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=1e-3))
    assert f"{type(opt).__module__}.{type(opt).__name__}" == cls
    assert opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("bias,trained", [("none", 0), ("lora_only", 6), ("all", 6)])
def test_lora_bias(tiny_qwen2, bias, trained):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)
    peft = apply_lora(model, LoraConfig(r=2, bias=bias))
    # Qwen2 has biases on q/k/v only: 2 layers x 3
    assert sum(p.requires_grad for n, p in peft.named_parameters() if n.endswith(".bias")) == trained
