"""The command line: config round trip, one-line errors for bad input, a real fit through `python -m litft`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def litft(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "litft", *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, model: str, data_file: str, **overrides) -> Path:
    config = {
        "output_dir": str(tmp_path / "out"),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "optimizer": {"lr": 1e-2},
                  "scheduler": {"name": "constant"}},
        "data": {"dataset": data_file, "cutoff_len": 64, "batch_size": 4},
        "trainer": {"max_steps": 6, "accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
                    "logger": False, "log_every_n_steps": 1},
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        config[section][name] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_print_config_round_trips(tmp_path, tiny_llama, alpaca_file):
    config = write_config(tmp_path, tiny_llama, alpaca_file)
    first = litft("fit", "--config", str(config), "--print_config")
    assert first.returncode == 0, first.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(first.stdout)
    second = litft("fit", "--config", str(printed), "--print_config")
    assert second.returncode == 0, second.stderr
    assert yaml.safe_load(first.stdout) == yaml.safe_load(second.stdout)
    resolved = yaml.safe_load(first.stdout)
    assert resolved["model"]["lora"]["r"] == 8
    assert resolved["trainer"]["precision"] == "auto"
    # The tokenizer comes from the model: linked keys are not settable in data.
    assert "tokenizer" not in resolved["data"]


def test_dotted_override(tmp_path, tiny_llama, alpaca_file):
    config = write_config(tmp_path, tiny_llama, alpaca_file)
    out = litft("fit", "--config", str(config), "--model.lora.r", "4", "--trainer.max_steps", "3", "--print_config")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert (resolved["model"]["lora"]["r"], resolved["trainer"]["max_steps"]) == (4, 3)


@pytest.mark.parametrize(
    "case", ["missing_model", "missing_data", "wrong_field"],
)
def test_bad_input_is_one_line(case, tmp_path, tiny_llama, alpaca_file):
    model, data = tiny_llama, alpaca_file
    if case == "missing_model":
        model = str(tmp_path / "no-such-model")
    elif case == "missing_data":
        data = str(tmp_path / "no-such-file.json")
    else:
        records = json.loads(Path(alpaca_file).read_text())
        records[3]["output"] = ["a list", "where a string belongs"]
        Path(alpaca_file).write_text(json.dumps(records))
    out = litft("fit", "--config", str(write_config(tmp_path, model, data)))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("litft: error:")]
    assert len(errors) == 1, out.stderr
    expected = {"missing_model": "no-such-model", "missing_data": "no-such-file.json", "wrong_field": "record 3"}[case]
    assert expected in errors[0]
    if case == "wrong_field":
        assert "output" in errors[0] and "alpaca.json" in errors[0]


def test_fit_writes_adapter_that_reproduces_the_trained_model(tmp_path, tiny_qwen2, alpaca_file):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from litft.cli import LitFTCLI

    config = write_config(tmp_path, tiny_qwen2, alpaca_file)
    cli = LitFTCLI(args=["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"])
    run = tmp_path / "out"
    assert cli.trainer.global_step == 6
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name_or_path"] == tiny_qwen2 and saved["trainer"]["max_steps"] == 6

    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    trained = cli.model.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
        untouched = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, run / "adapter").eval()(input_ids=ids).logits
    assert not torch.allclose(untouched, expected, atol=1e-4)  # training changed the model
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=1e-6)


def test_console_shows_litft_lines_not_library_noise(tmp_path, tiny_llama, alpaca_file):
    config = write_config(tmp_path, tiny_llama, alpaca_file, **{"trainer.max_steps": 1})
    out = litft("fit", "--config", str(config), "--trainer.enable_progress_bar", "false")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "[litft] data:" in text and "[litft] Trainable parameters:" in text
    for noise in ("LightningCLI's args parameter", "💡 Tip", "across ranks is zero", "FLOPs", "LeafSpec",
                  "is_gradient_checkpointing", "Setting accelerator to CPU"):
        assert noise not in text, f"{noise!r} on the console:\n{text[-3000:]}"
