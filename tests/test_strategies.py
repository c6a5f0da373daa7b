"""Strategy names, DeepSpeed configs and the combinations litft refuses (no processes spawned here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry

from litft.errors import LitFTError
from litft.strategies import (
    LitFTDDPStrategy,
    LitFTDeepSpeedStrategy,
    check_quantization,
    gathered_trainable_state_dict,
    is_zero3,
    register,
    trainer_kwargs,
)
from litft.strategies.deepspeed import pin_deepspeed_accelerator

REPO = Path(__file__).resolve().parents[1]


def _trainer(**kw):
    return Trainer(**trainer_kwargs(**kw), logger=False, enable_checkpointing=False, enable_progress_bar=False)


def test_registered_names_resolve_to_litft_classes():
    register()  # idempotent
    assert StrategyRegistry["ddp"]["strategy"] is LitFTDDPStrategy
    expected = {
        "deepspeed_stage_2": {"stage": 2},
        "deepspeed_stage_3": {"stage": 3},
        "deepspeed_stage_2_offload": {"stage": 2, "offload_optimizer": True},
        "deepspeed_stage_3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    }
    for name, params in expected.items():
        assert StrategyRegistry[name]["strategy"] is LitFTDeepSpeedStrategy
        assert StrategyRegistry[name]["init_params"] == params


def test_ddp_on_cpu_uses_gloo():
    trainer = _trainer(accelerator="cpu", strategy="ddp", devices=2)
    assert type(trainer.strategy) is LitFTDDPStrategy
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert trainer.strategy.root_device == torch.device("cpu")


def test_auto_strategy_on_cpu_is_lightnings_choice():
    assert isinstance(_trainer(accelerator="cpu", devices=1).strategy, SingleDeviceStrategy)
    assert type(_trainer(accelerator="cpu", devices=2).strategy) is LitFTDDPStrategy  # Lightning picks "ddp"
    assert type(_trainer(accelerator="cpu", devices=1, num_nodes=2).strategy) is LitFTDDPStrategy


@pytest.mark.parametrize("name,stage,offload", [("deepspeed_stage_2", 2, False), ("deepspeed_stage_3", 3, False),
                                                ("deepspeed_stage_3_offload", 3, True)])
def test_deepspeed_by_name_on_cpu(monkeypatch, name, stage, offload):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    trainer = _trainer(accelerator="cpu", strategy=name, devices=2)
    strategy = trainer.strategy
    assert type(strategy) is LitFTDeepSpeedStrategy
    assert strategy.exclude_frozen_parameters is True  # adapter-only checkpoints
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in strategy.config["zero_optimization"]) is offload
    assert is_zero3(strategy) is is_zero3(name) is (stage == 3)  # the one answer, for a strategy or its name
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert strategy._get_process_group_backend() == "gloo"
    # an indexed device per rank on CPU too (Lightning's device-index check, deepspeed.initialize(device_rank=...))
    assert strategy.parallel_devices == [torch.device("cpu", 0), torch.device("cpu", 1)]
    assert strategy.root_device == torch.device("cpu", 0)


@pytest.mark.parametrize("file,stage,offload", [("zero2.json", 2, False), ("zero3.json", 3, False),
                                                ("zero3_offload.json", 3, True)])
def test_shipped_deepspeed_json(file, stage, offload):
    path = REPO / "configs" / "deepspeed" / file
    config = json.loads(path.read_text())
    # Lightning fills batch size, accumulation, clipping and precision from the trainer: "auto" values
    # (HF Trainer style) would reach DeepSpeed verbatim, so the shipped files must not have them.
    assert "auto" not in path.read_text()
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu", "bf16", "fp16"} & set(config)
    strategy = LitFTDeepSpeedStrategy(config=str(path))
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert ("offload_param" in strategy.config["zero_optimization"]) is offload
    assert strategy.exclude_frozen_parameters is True
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, precision="bf16-mixed")
    trainer.strategy._init_config_if_needed()
    assert trainer.strategy.config["bf16"] == {"enabled": True}
    # Lightning's loop accumulates for every strategy; DeepSpeed neither counts micro-steps nor re-divides
    assert trainer.strategy.config["managed_gradient_accumulation"] is False
    assert trainer.strategy.handles_gradient_accumulation is False


def test_deepspeed_stage_1_has_no_overlap_comm():
    """DeepSpeed refuses overlap_comm below stage 2 once litft owns the accumulation boundary."""
    zero = LitFTDeepSpeedStrategy(stage=1).config["zero_optimization"]
    assert zero["stage"] == 1 and zero["overlap_comm"] is False
    assert LitFTDeepSpeedStrategy(stage=2).config["zero_optimization"]["overlap_comm"] is True


def test_deepspeed_managed_accumulation_is_refused():
    with pytest.raises(LitFTError, match="managed_gradient_accumulation must be false"):
        LitFTDeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "managed_gradient_accumulation": True})


def test_fsdp_is_refused_with_the_alternative():
    from lightning.pytorch.strategies import FSDPStrategy

    for accelerator in ("cpu", "npu", "cuda"):
        with pytest.raises(LitFTError, match=r"^trainer.strategy=fsdp: litft does not offer FSDP.*deepspeed_stage_3"):
            trainer_kwargs(accelerator=accelerator, strategy="fsdp", devices=2)
    with pytest.raises(LitFTError, match=r"trainer.strategy=fsdpstrategy: litft does not offer FSDP"):
        trainer_kwargs(accelerator="cpu", strategy=FSDPStrategy(), devices=2)


def test_deepspeed_fp16_on_cpu_is_refused():
    with pytest.raises(LitFTError, match="no fp16 on CPU"):
        trainer_kwargs(accelerator="cpu", strategy="deepspeed_stage_2", devices=2, precision="16-mixed")


def test_ds_accelerator_contradiction(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    monkeypatch.delenv("_LITFT_DS_ACCELERATOR", raising=False)
    with pytest.raises(LitFTError, match="DS_ACCELERATOR=cuda contradicts trainer.accelerator=cpu"):
        pin_deepspeed_accelerator("cpu")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    pin_deepspeed_accelerator("cpu")
    with pytest.raises(LitFTError, match="does not run on"):
        pin_deepspeed_accelerator("mps")


# --- quantization rules --------------------------------------------------------------------------------------


def _zero3():
    return LitFTDeepSpeedStrategy(stage=3)


def test_qlora_zero3_stores_4bit_in_compute_dtype():
    assert check_quantization(_zero3(), "cuda", bits=4, compute_dtype=torch.bfloat16) == torch.bfloat16
    assert check_quantization(_zero3(), "cuda", bits=4, compute_dtype=torch.bfloat16,
                              quant_storage=torch.bfloat16) == torch.bfloat16
    assert check_quantization("deepspeed_stage_3", "cuda", bits=4, compute_dtype=torch.float16) == torch.float16
    for storage in (torch.float16, torch.uint8):  # uint8: packed bytes cannot be sharded as the weights they are
        with pytest.raises(LitFTError, match=r"^model\.quantization\.quant_storage=(float16|uint8): .* compute dtype "
                                             r"\(bfloat16\) .*set quant_storage: auto$"):
            check_quantization(_zero3(), "cuda", bits=4, compute_dtype=torch.bfloat16, quant_storage=storage)
    # not sharded: the user's choice (or bitsandbytes' default) stands
    assert check_quantization("ddp", "cuda", bits=4, compute_dtype=torch.bfloat16) is None
    assert check_quantization(LitFTDeepSpeedStrategy(stage=2), "cuda", bits=4, compute_dtype=torch.bfloat16,
                              quant_storage=torch.uint8) == torch.uint8


def test_8bit_cannot_be_sharded():
    with pytest.raises(LitFTError, match="8-bit quantization cannot be sharded by DeepSpeed ZeRO-3"):
        check_quantization(_zero3(), "cuda", bits=8, compute_dtype=torch.bfloat16)
    with pytest.raises(LitFTError, match="does not offer FSDP"):
        check_quantization("fsdp", "cuda", bits=8, compute_dtype=torch.bfloat16)
    assert check_quantization(None, "cuda", bits=None, compute_dtype=torch.bfloat16) is None


def test_qlora_on_npu_needs_opt_in(monkeypatch):
    monkeypatch.delenv("LITFT_NPU_EXPERIMENTAL_QLORA", raising=False)
    with pytest.raises(LitFTError, match="experimental.*LITFT_NPU_EXPERIMENTAL_QLORA=1"):
        check_quantization("ddp", "npu", bits=4, compute_dtype=torch.bfloat16)
    monkeypatch.setenv("LITFT_NPU_EXPERIMENTAL_QLORA", "1")
    with pytest.raises(LitFTError, match="double quantization"):
        check_quantization("ddp", "npu", bits=4, compute_dtype=torch.bfloat16, double_quant=True)
    assert check_quantization("ddp", "npu", bits=4, compute_dtype=torch.bfloat16) is None


def test_trainable_state_dict_without_zero3():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    sd = gathered_trainable_state_dict(model)
    assert sorted(sd) == ["1.bias", "1.weight"]
    assert torch.equal(sd["1.weight"], model[1].weight)
    assert sd["1.weight"].data_ptr() != model[1].weight.data_ptr()  # a copy, safe to save


def test_module_refuses_8bit_under_zero3(tiny_llama):
    """The model side asks check_quantization before loading anything."""

    from lightning.pytorch.accelerators import CPUAccelerator

    from litft.model.config import QuantizationConfig
    from litft.model.build import load_base
    from litft.model.module import LitFTModule

    module = LitFTModule(tiny_llama, quantization=QuantizationConfig(bits=8))
    with pytest.raises(LitFTError, match="8-bit quantization cannot be sharded by DeepSpeed ZeRO-3"):
        load_base(module.spec, strategy=_zero3(), accelerator=CPUAccelerator(), precision="32-true")
