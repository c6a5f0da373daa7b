"""Each example config trains for real with a tiny model of the same architecture (weights of the real models
cannot be downloaded here). Only what CPU cannot do is overridden: the device (cuda/npu → cpu, one process),
bf16 autocast (→ fp32), paged optimizers (CUDA memory paging → plain AdamW) and the hub dataset (→ a local file);
the model, LoRA, quantization, template, packing and scheduler settings are the example's own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from litft.cli import LitFTCLI
from tests.helpers import build_tiny_model, write_alpaca

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
ARCH = {
    "llama2-7b-dolly-qlora.yaml": "llama",
    "llama2-7b-lima-lora.yaml": "llama",
    "phi2-dialogsum-qlora.yaml": "phi",
    "qwen2.5-14b-esg-lora-npu.yaml": "qwen2",
}


@pytest.mark.parametrize("name", sorted(ARCH))
def test_example_trains_with_a_tiny_model_of_its_architecture(name, tmp_path):
    model_dir = build_tiny_model(ARCH[name], tmp_path / "model")
    data = write_alpaca(tmp_path / "data.json", n=24)
    cli = LitFTCLI(args=[
        "fit", "--config", str(EXAMPLES / name),
        "--output_dir", str(tmp_path / "out"),
        "--model.name_or_path", str(model_dir),
        "--model.optimizer.name", "adamw",
        "--data.dataset", str(data), "--data.cutoff_len", "128", "--data.val_size", "0.25",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
        "--trainer.strategy", "auto", "--trainer.precision", "32-true",
        "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "1.0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
    ])
    assert cli.trainer.global_step == 2
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    if "qlora" in name:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in cli.model.model.modules())
    expected_dtype = torch.bfloat16 if cli.model.dtype_name == "bfloat16" else torch.float32
    assert cli.model.base_model().model.embed_tokens.weight.dtype == expected_dtype
