"""Preference methods through the command line: one key selects the method and the data it reads, the method's
section is documented and round-trips, bad values stop with one line, and a fit logs the methods' metrics for
training steps and validation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from litft.errors import LitFTError
from litft.model.module import LitFTModule
from tests.test_cli import litft, write_config


def _pairs(path: Path, n: int = 12) -> str:
    records = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"}
               for i in range(n)]
    path.write_text(json.dumps(records))
    return str(path)


def _feedback(path: Path, n: int = 12) -> str:
    records = [{"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i + i % 2}", "label": i % 2 == 0}
               for i in range(n)]
    path.write_text(json.dumps(records))
    return str(path)


def test_method_selects_data_kind_and_its_section(tmp_path, tiny_llama):
    config = write_config(tmp_path, tiny_llama, _pairs(tmp_path / "pairs.json"))
    out = litft("fit", "--config", str(config), "--model.method", "simpo", "--model.simpo.gamma", "0.3",
                "--print_config")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["model"]["method"] == "simpo"
    assert resolved["model"]["simpo"] == {"beta": 2.0, "gamma": 0.3, "label_smoothing": 0.0, "sft_weight": 0.0}
    assert set(resolved["model"]) >= {"dpo", "orpo", "kto"}
    assert "kind" not in resolved["data"]  # linked from model.method: not settable


def test_a_method_with_a_reference_needs_adapters(tiny_llama):
    with pytest.raises(LitFTError, match=r"^model.method=kto needs a reference model: the base with the adapters off"):
        LitFTModule(tiny_llama, method="kto", lora=None)
    assert LitFTModule(tiny_llama, method="orpo", lora=None).objective.method == "orpo"  # reference-free: full FT


def _logged(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_fit_logs_the_method_metrics_for_steps_and_validation(tmp_path, tiny_llama, method):
    data = _pairs(tmp_path / "d.json") if method == "dpo" else _feedback(tmp_path / "d.json")
    out_dir = tmp_path / "out"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(out_dir), "name": "", "version": "logs"}}
    config = write_config(tmp_path, tiny_llama, data)
    raw = yaml.safe_load(config.read_text())
    raw["model"]["method"] = method
    raw["data"].update(val_size=4, batch_size=4)
    raw["trainer"].update(max_steps=2, logger=logger, val_check_interval=2)
    config.write_text(yaml.safe_dump(raw))
    run = litft("fit", "--config", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = _logged(out_dir)
    names = ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]
    names += ["rewards/accuracies"] if method == "dpo" else ["kl"]
    train = [r for r in rows if r.get("train/loss")]
    val = [r for r in rows if r.get("val/loss")]
    assert len(train) == 2 and len(val) == 1, rows
    for name in names:
        assert all(math.isfinite(float(r[f"train/{name}"])) for r in train), name
        assert math.isfinite(float(val[0][f"val/{name}"])), name
    assert "val/ppl" not in val[0] or not val[0]["val/ppl"]  # perplexity is SFT's
    with Image.open(out_dir / "loss.png") as img:  # DPO: the reward accuracy in a second panel; KTO logs none
        assert img.size == ((1300, 450) if method == "dpo" else (700, 450))
