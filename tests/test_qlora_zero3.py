"""QLoRA under DeepSpeed ZeRO-3, for real on CPU (2 processes over gloo, bf16): the 4-bit base is partitioned as it
loads, stays in its storage dtype (no fp32 upcast of norms, embeddings or head), and no rank ever holds it whole.

The model's embeddings and head are large next to its layers (vocabulary 4096, hidden 64), as in real models; its
checkpoint is fp32, so that every weight is copied (cast to bf16) when it loads and the profiler sees it allocated.
One rank (no launch; 8-26 s on this machine's 2 shared cores): the partitioned model computes what the whole one does, tied heads and weights the
checkpoint lacks included.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from litft.errors import LitFTError
from tests.test_distributed import REPO, _env, _losses, _write_rows

WORLD = 2
STEPS = 2
QUANTIZE_BYTES_PER_WEIGHT = 20
"""Temporaries of bitsandbytes' CPU quantization of one weight, per element (measured: ~18 bytes, fp32 copies)."""


def _model(folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.helpers import build_tokenizer

    tokenizer = build_tokenizer(folder, template="llama3")
    config = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


def _fit(tmp_path: Path, model: Path) -> tuple[list[dict], list[float]]:
    out = tmp_path / "out"
    out.mkdir()
    config = {
        "output_dir": str(out), "seed_everything": 0,
        "model": {"name_or_path": str(model), "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "quantization": {"bits": 4}, "optimizer": {"name": "sgd", "lr": 0.5},
                  "scheduler": {"name": "constant"}},
        "data": {"dataset": _write_rows(tmp_path / "rows.json"), "cutoff_len": 48, "batch_size": 2},
        "trainer": {
            "accelerator": "cpu", "devices": WORLD, "precision": "bf16-mixed", "max_steps": STEPS,
            # persistence threshold 0: DeepSpeed would otherwise keep this tiny model's parameters whole
            "strategy": {"class_path": "litft.strategies.LitFTDeepSpeedStrategy",
                         "init_args": {"config": {"zero_optimization": {"stage": 3,
                                                                        "stage3_param_persistence_threshold": 0},
                                                  "zero_allow_untested_optimizer": True}}},
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
            "callbacks": [{"class_path": "tests.model_probe.ModelProbe",
                           "init_args": {"record_dir": str(out), "checkpoint_dir": str(model)}}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(path)], cwd=REPO,
                          env=_env(LITFT_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"model-rank{r}.json").read_text()) for r in range(WORLD)], _losses(out)


@pytest.mark.distributed
@pytest.mark.slow
def test_qlora_zero3_loads_into_partitions_in_storage_dtype(tmp_path):
    records, losses = _fit(tmp_path, _model(tmp_path / "model"))
    for rank, record in enumerate(records):
        params = record["params"]
        base = [p for p in params if not p["requires_grad"]]
        adapters = [p for p in params if p["requires_grad"]]
        assert base and adapters and all("lora_" in p["name"] for p in adapters)
        # after configure_model, before deepspeed.initialize: every base parameter is this rank's 1/world slice
        for p in base:
            assert p["partitioned"] and p["local"] == math.ceil(p["numel"] / WORLD), (rank, p)
        # frozen modules in their storage dtype: 4-bit weights stored in bf16, embeddings, norms and head bf16
        assert {p["cls"] for p in base} == {"Params4bit", "Parameter"}
        assert {p["dtype"] for p in base} == {"bfloat16"}, sorted({(p["name"], p["dtype"]) for p in base})
        assert {p["dtype"] for p in adapters} == {"float32"}
        # the engine casts nothing (the model was partitioned before it) and partitions the adapters too
        at_start = {p["name"]: p for p in record["params_at_fit_start"]}
        for p in params:
            assert at_start[p["name"]]["dtype"] == p["dtype"] and at_start[p["name"]]["partitioned"], p["name"]

        # memory: never the whole 4-bit base on a rank. The most torch held during configure_model is at most what
        # it holds at the end (its partitions, the 4-bit quantization states, the adapters) plus one whole weight
        # while it loads (and, for a 4-bit weight, bitsandbytes' CPU quantization temporaries)
        def nbytes(p, count):
            return p[count] * p["element_size"]

        held = sum(nbytes(p, "local") + p["quant_state_bytes"] for p in params)
        whole_base = sum(nbytes(p, "numel") + p["quant_state_bytes"] for p in base)
        one_weight = max(nbytes(p, "numel") for p in base)
        quantizing = QUANTIZE_BYTES_PER_WEIGHT * max(4 * p["numel"] for p in base if p["cls"] == "Params4bit")
        bound = held + one_weight + quantizing
        print(f"\nrank {rank}: peak {record['peak_bytes']:,} B during configure_model; bound {bound:,} B; "
              f"whole 4-bit base {whole_base:,} B; held after {held:,} B")
        assert record["peak_bytes"] <= bound
        assert record["peak_bytes"] < whole_base  # partitioned weight by weight, not after loading the whole base
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def _tiny(folder: Path, *, tied: bool, drop: tuple[str, ...] = ()) -> str:
    """A tiny Llama (vocabulary 4096), its head tied to the embeddings or not, without the weights named in drop."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    kept = {k: v for k, v in weights.items() if k not in drop}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


@pytest.mark.slow
def test_loading_into_partitions_gives_the_model_loaded_whole(tmp_path):
    """One rank: every weight from the checkpoint is partitioned as it loads, a weight the checkpoint lacks is
    initialised by transformers first and partitioned afterwards, a tied head stays tied; the model computes the same
    logits as the 4-bit model loaded whole."""
    untied = _tiny(tmp_path / "untied", tied=False, drop=("model.norm.weight", "model.layers.0.input_layernorm.weight"))
    tied = _tiny(tmp_path / "tied", tied=True)
    proc = subprocess.run([sys.executable, "-m", "tests.partition_probe", untied, tied], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT ", 1)[1])
    missing = ["model.layers.0.input_layernorm.weight", "model.norm.weight"]
    assert results[untied]["streamed"] == sorted(set(results[untied]["params"]) - set(missing))
    assert "lm_head.weight" in results[untied]["params"] and "lm_head.weight" not in results[tied]["params"]  # tied
    assert results[tied]["streamed"] == results[tied]["params"]
    for result in results.values():
        assert result["unpartitioned"] == [] and result["max_diff"] == 0.0, result


def test_quant_storage_uint8_is_refused_under_zero3(tiny_llama):
    from lightning.pytorch.accelerators import CPUAccelerator

    from litft.model.build import load_base
    from litft.model.config import LoraConfig, QuantizationConfig
    from litft.model.module import LitFTModule
    from litft.strategies import LitFTDeepSpeedStrategy

    module = LitFTModule(tiny_llama, quantization=QuantizationConfig(quant_storage="uint8"), lora=LoraConfig())
    with pytest.raises(LitFTError, match=r"^model\.quantization\.quant_storage=uint8: QLoRA with DeepSpeed ZeRO-3 "
                                         r"stores 4-bit weights in the compute dtype \(bfloat16\)"):
        load_base(module.spec, strategy=LitFTDeepSpeedStrategy(stage=3), accelerator=CPUAccelerator(),
                  precision="bf16-mixed")
