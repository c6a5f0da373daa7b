"""The example configs parse (``--print_config``) and say what their scenario needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "configs" / "examples"


def _print_config(config: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(config), "--print_config"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(
        ["llama2-7b-dolly-qlora.yaml", "qwen2.5-14b-esg-lora-npu.yaml", "phi2-dialogsum-qlora.yaml",
         "llama2-7b-lima-lora.yaml", "dpo_smollm2.yaml"])


def test_dpo_smollm2():
    """The preference example (trained and evaluated at tiny size by tests/test_examples_tiny.py): DPO, its pairs."""
    c = _print_config(EXAMPLES / "dpo_smollm2.yaml")
    assert c["model"]["method"] == "dpo" and c["model"]["dpo"]["beta"] == 0.1
    assert c["data"]["dataset"] == "facts_preference"  # data.kind is linked from model.method (not printed)
    assert c["data"]["val_size"] == 12


def test_llama2_dolly_qlora():
    c = _print_config(EXAMPLES / "llama2-7b-dolly-qlora.yaml")
    assert c["model"]["name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert c["model"]["quantization"]["bits"] == 4 and c["model"]["quantization"]["quant_type"] == "nf4"
    assert c["model"]["optimizer"]["name"] == "paged_adamw_32bit"  # transformers' name, as the TRL workflow writes it
    assert c["data"]["packing"] is True and c["data"]["dataset"] == "dolly_backtranslation"


def test_qwen_esg_npu_deepspeed_multinode():
    c = _print_config(EXAMPLES / "qwen2.5-14b-esg-lora-npu.yaml")
    t = c["trainer"]
    assert (t["accelerator"], t["devices"], t["num_nodes"]) == ("npu", 8, 2)
    assert t["strategy"]["class_path"] == "litft.strategies.LitFTDeepSpeedStrategy"
    assert t["strategy"]["init_args"]["config"] == "configs/deepspeed/zero3.json"
    assert t["strategy"]["init_args"]["exclude_frozen_parameters"] is True
    assert (REPO / t["strategy"]["init_args"]["config"]).is_file()
    assert c["model"]["quantization"] is None  # QLoRA on NPU is experimental, not in an example


def test_phi2_dialogsum_qlora():
    c = _print_config(EXAMPLES / "phi2-dialogsum-qlora.yaml")
    assert c["model"]["name_or_path"] == "microsoft/phi-2" and c["model"]["quantization"]["bits"] == 4
    assert c["trainer"]["precision"] == "auto" and c["data"]["dataset"] == "dialogsum"


def test_llama2_lima_lora_ddp():
    c = _print_config(EXAMPLES / "llama2-7b-lima-lora.yaml")
    assert c["model"]["quantization"] is None and c["model"]["lora"]["r"] == 16
    assert (c["trainer"]["strategy"], c["trainer"]["devices"]) == ("ddp", 2)
    assert c["data"]["template"] == "llama2"


def test_example_datasets_are_registered():
    import json

    info = json.loads((EXAMPLES / "dataset_info.json").read_text())
    for config in EXAMPLES.glob("*.yaml"):
        data = yaml.safe_load(config.read_text())["data"]
        assert data["dataset_dir"] == "configs/examples"
        for name in data["dataset"].split(","):
            assert name in info, f"{config.name}: dataset {name} is not in dataset_info.json"
