"""Each example config trains for real with a tiny model of the same architecture (weights of the real models
cannot be downloaded here). Only what CPU cannot do is overridden: the device (cuda/npu → cpu, one process),
bf16 autocast (→ fp32), paged optimizers (CUDA memory paging → plain AdamW) and the hub datasets: each example's
own dataset_info.json entries (formatting, columns, template) read local files shaped like the hub records; the
model, LoRA, quantization, template, packing and scheduler settings are the example's own."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from litft.cli import LitFTCLI
from litft.cli import run as litft_run
from tests.helpers import build_tiny_model

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
# What the CPU run changes beyond device/precision/optimizer, and why.
CPU_OVERRIDES = {
    # Chinese text is ~3 byte-level tokens per character with the tiny test tokenizer.
    "qwen2.5-14b-esg-lora-npu.yaml": ["--data.cutoff_len", "1024"],
    # The tiny model is a plain checkpoint, not SmolLM2's GGUF file.
    "dpo_smollm2.yaml": ["--model.gguf_file", "null"],
}
ARCH = {
    "dpo_smollm2.yaml": "llama",
    "llama2-7b-dolly-qlora.yaml": "llama",
    "llama2-7b-lima-lora.yaml": "llama",
    "phi2-dialogsum-qlora.yaml": "phi",
    "qwen2.5-14b-esg-lora-npu.yaml": "qwen2",
}


def _hub_shaped(name: str, n: int) -> list[dict]:
    """n records shaped like the hub dataset behind example entry ``name``."""
    if name.startswith("dolly"):
        return [{"instruction": f"What is {i} plus {i}?", "context": "", "response": f"The sum is {2 * i}.",
                 "category": "open_qa"} for i in range(n)]
    if name == "lima":
        return [{"conversations": [f"Tell me about {i}.", f"{i} is a number."], "source": "litft"} for i in range(n)]
    if name.startswith("dialogsum"):
        return [{"id": f"t{i}", "dialogue": f"#Person1#: Is it {i}?\n#Person2#: Yes, {i}.",
                 "summary": f"They agree on {i}.", "topic": "numbers"} for i in range(n)]
    raise KeyError(name)


def local_dataset_dir(config: Path, out: Path, n: int = 24) -> Path:
    """A dataset_dir holding the example's own dataset_info.json entries, pointed at local files."""
    cfg = yaml.safe_load(config.read_text())["data"]
    info = json.loads((EXAMPLES / "dataset_info.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    local = {}
    for name in filter(None, [cfg["dataset"], cfg.get("eval_dataset")]):
        entry = dict(info[name])
        if "file_name" in entry:
            shutil.copy(EXAMPLES / entry["file_name"], out / entry["file_name"])
        else:
            entry.pop("hf_hub_url")
            entry.pop("split", None)
            entry["file_name"] = f"{name}.json"
            (out / entry["file_name"]).write_text(json.dumps(_hub_shaped(name, n)))
        local[name] = entry
    (out / "dataset_info.json").write_text(json.dumps(local))
    return out


def _fit(name: str, tmp_path: Path, *extra: str) -> LitFTCLI:
    model_dir = build_tiny_model(ARCH[name], tmp_path / "model")
    data_dir = local_dataset_dir(EXAMPLES / name, tmp_path / "data")
    return LitFTCLI(args=[
        "fit", "--config", str(EXAMPLES / name),
        "--output_dir", str(tmp_path / "out"),
        "--model.name_or_path", str(model_dir),
        "--model.optimizer.name", "adamw",
        "--data.dataset_dir", str(data_dir), "--data.cutoff_len", "128",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
        "--trainer.strategy", "auto", "--trainer.precision", "32-true",
        "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "1.0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", *CPU_OVERRIDES.get(name, []), *extra,
    ])


@pytest.mark.parametrize("name", sorted(ARCH))
def test_example_trains_with_a_tiny_model_of_its_architecture(name, tmp_path):
    cli = _fit(name, tmp_path)
    assert cli.trainer.global_step == 2
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    if "qlora" in name:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in cli.model.model.modules())
    expected_dtype = torch.bfloat16 if cli.model.spec.dtype == "bfloat16" else torch.float32
    assert cli.model.base_model().model.embed_tokens.weight.dtype == expected_dtype
    # The adapter's tokenizer renders prompts exactly as training did (its chat_template is the training template).
    from transformers import AutoTokenizer

    from litft.data.templates import encode_prompt

    dm = cli.datamodule
    served = AutoTokenizer.from_pretrained(adapter)
    messages = [{"role": "user", "content": "#Person1#: Hi.\n#Person2#: Hello."}]
    assert served.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == \
        encode_prompt(dm.tokenizer, messages, template=dm.template)
    if name == "phi2-dialogsum-qlora.yaml":  # and so does the merged export's tokenizer
        from litft.data.conversation import Conversation, Turn
        from litft.data.templates import render_with_spans

        assert litft_run(["export", "--config", str(EXAMPLES / name), "--model.name_or_path", str(tmp_path / "model"),
                          "--data.dataset_dir", str(tmp_path / "data"), "--adapter", str(adapter),
                          "--output_dir", str(tmp_path / "merged")]) == 0
        conv = Conversation(turns=[Turn("user", "#Person1#: Hi."), Turn("assistant", "They greet.")])
        exported = AutoTokenizer.from_pretrained(tmp_path / "merged")
        text = exported.apply_chat_template(conv.messages(), tokenize=False)
        assert text == render_with_spans(dm.tokenizer, conv, template=dm.template)[0]
        assert text.endswith("### Output:\nThey greet.\n\n### End")
    if name == "dpo_smollm2.yaml":  # evaluate scores the 12 held-out pairs, base vs fine-tuned
        assert litft_run(["evaluate", "--config", str(EXAMPLES / name), "--model.name_or_path", str(tmp_path / "model"),
                          "--model.gguf_file", "null", "--data.dataset_dir", str(tmp_path / "data"),
                          "--output_dir", str(tmp_path / "out")]) == 0
        report = json.loads((tmp_path / "out" / "eval_results.json").read_text())
        assert report["pairs"] == 12 and report["method"] == "dpo"
        assert set(report["scores"]["fine-tuned"]) > set(report["scores"]["base"]) >= {"preference/accuracy"}


def test_phi2_prepare_preview_shows_the_blurb_and_end_trained(tmp_path, capsys):
    name = "phi2-dialogsum-qlora.yaml"
    model_dir = build_tiny_model("phi", tmp_path / "model")
    data_dir = local_dataset_dir(EXAMPLES / name, tmp_path / "data")
    assert litft_run(["prepare", "--config", str(EXAMPLES / name), "--model.name_or_path", str(model_dir),
                      "--data.dataset_dir", str(data_dir), "--preview", "1"]) == 0
    out = capsys.readouterr().out
    sample = out[out.index("--- sample 0"):]
    assert ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruct: Summarize the below conversation.\n\n#Person1#: Is it") in sample
    assert "### Output:\n«They agree on" in sample and "\n\n### End»" in sample
    assert "validation rows: 24" in out  # DialogSum's validation split, not a split of the training data


def test_dpo_example_ships_its_pairs():
    pairs = json.loads((EXAMPLES / "facts_preference.json").read_text())
    assert len(pairs) == 56 and len({p["instruction"] for p in pairs}) == 56
    assert all(set(p) == {"instruction", "chosen", "rejected"} and p["chosen"] != p["rejected"] for p in pairs)
    assert json.loads((EXAMPLES / "dataset_info.json").read_text())["facts_preference"]["ranking"] is True


def test_esg_example_ships_its_chinese_yaml_dataset():
    import subprocess
    import sys

    records = json.loads((EXAMPLES / "esg_extraction.json").read_text(encoding="utf-8"))
    held_out = json.loads((EXAMPLES / "esg_extraction_eval.json").read_text(encoding="utf-8"))
    assert (len(records), len(held_out)) == (30, 6)
    assert not {r["input"] for r in records} & {r["input"] for r in held_out}
    for r in records + held_out:
        parsed = yaml.safe_load(r["output"])
        assert set(parsed) == {"实体", "属性", "关系"} and parsed["实体"][0]["类型"] == "公司"
        assert parsed["实体"][0]["名称"] in r["input"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_esg_data.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0


def test_lima_example_trains_on_a_csv(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("instruction,input,output\n" + "".join(f"Double {i}?,,It is {2 * i}.\n" for i in range(16)))
    cli = _fit("llama2-7b-lima-lora.yaml", tmp_path, "--data.dataset", str(csv))
    assert cli.trainer.global_step == 2 and cli.datamodule.stats.records == 16
