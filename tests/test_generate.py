"""export / generate / chat through the CLI on a tiny trained run (same template as training)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import yaml

from litft.cli import run as litft_run

REPO = Path(__file__).resolve().parents[1]
SUMMARIES = str(REPO / "configs" / "data" / "summaries_demo.json")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_qwen2):
    """A 6-step LoRA run of tiny Qwen2 on the shipped summaries dataset: (config path, output dir)."""
    from litft.cli import LitFTCLI

    tmp = tmp_path_factory.mktemp("run")
    config = {
        "output_dir": str(tmp / "out"),
        "seed_everything": 0,
        "model": {"name_or_path": tiny_qwen2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"lr": 2e-2}, "scheduler": {"name": "constant"}},
        "data": {"dataset": SUMMARIES, "cutoff_len": 400, "batch_size": 4},
        "trainer": {"max_steps": 6, "accelerator": "cpu", "devices": 1, "logger": False, "log_every_n_steps": 1,
                    "enable_progress_bar": False},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    LitFTCLI(args=["fit", "--config", str(path)])
    out = tmp / "out"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    return path, out


def _reference_model(base_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(adapter)).eval()


def test_export_cli_matches_base_plus_adapter(trained_run, tiny_qwen2, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    config, out = trained_run
    target = tmp_path / "merged"
    assert litft_run(["export", "--config", str(config), "--adapter", str(out / "adapter"), "--output_dir", str(target)]) == 0
    assert "Merged model saved to" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    ids = torch.tensor([[3, 17, 42, 99, 7, 250, 11, 64]])
    with torch.no_grad():
        expected = _reference_model(tiny_qwen2, out / "adapter")(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_export_never_overwrites_the_run_folder(trained_run, capsys):
    config, out = trained_run
    assert litft_run(["export", "--config", str(config), "--adapter", str(out / "adapter")]) == 0
    assert (out / "merged" / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("with_adapter", [False, True])
def test_generate_prints_the_greedy_completion_of_the_training_template(trained_run, tiny_qwen2, capsys, with_adapter):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, out = trained_run
    prompt = "Summarize the text in one sentence.\n\nThe lake froze."
    adapter = ["--adapter", str(out / "adapter")] if with_adapter else []
    code = litft_run(["generate", "--config", str(config), *adapter, "--prompt", prompt, "--max_new_tokens", "12"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    # Independently: the tokenizer's chat template (what the data pipeline trains on here) + greedy decoding.
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    model = (_reference_model(tiny_qwen2, out / "adapter") if with_adapter
             else AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval())
    with torch.no_grad():
        gen = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    expected = tok.decode(gen[0, len(ids):], skip_special_tokens=True).strip()
    assert printed == expected
    if not with_adapter:  # the random base never stops early; the tuned one may answer with <|im_end|> at once
        assert len(printed) > 5


def test_chat_keeps_history_and_clears(trained_run, monkeypatch, capsys):
    config, out = trained_run
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhow are you\n/clear\nhi\n/exit\nnever read\n"))
    assert litft_run(["chat", "--config", str(config), "--adapter", str(out / "adapter"), "--max_new_tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("assistant> ") == 3
    assert "(conversation cleared)" in captured.err


def test_generate_without_prompt_is_a_one_line_error(trained_run):
    from litft.errors import LitFTError

    config, _ = trained_run
    with pytest.raises(LitFTError, match="--prompt"):
        litft_run(["generate", "--config", str(config)])
