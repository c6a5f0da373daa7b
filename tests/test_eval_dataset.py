"""data.eval_dataset: validation data of its own during fit; predict/evaluate score it by default, and the training
data only when asked, saying so."""

from __future__ import annotations

import json

import pytest
import yaml

from litft.cli import run as litft_run
from litft.data.datamodule import LitFTDataModule
from litft.errors import LitFTError
from tests.helpers import write_alpaca


def test_eval_dataset_is_the_validation_data(tiny_qwen2, tmp_path):
    train = write_alpaca(tmp_path / "train.json", n=12)
    held_out = [{"instruction": f"Held out {i}?", "input": "", "output": f"answer {i}"} for i in range(5)]
    (tmp_path / "eval.json").write_text(json.dumps(held_out))
    dm = LitFTDataModule(dataset=str(train), eval_dataset=str(tmp_path / "eval.json"), tokenizer=tiny_qwen2,
                         cutoff_len=128)
    dm.setup("fit")
    assert len(dm.train_rows) == 12 and len(dm.val_rows) == 5
    assert "Held out 3?" in dm.tokenizer.decode(dm.val_rows[3]["input_ids"])
    assert not any("Held out" in dm.tokenizer.decode(r["input_ids"]) for r in dm.train_rows)
    with pytest.raises(LitFTError, match="data.eval_dataset and data.val_size: give one"):
        LitFTDataModule(dataset=str(train), eval_dataset=str(tmp_path / "eval.json"), val_size=0.1)


def test_predict_needs_evaluation_data_or_an_explicit_flag(tiny_qwen2, tmp_path, capsys):
    train = write_alpaca(tmp_path / "train.json", n=3)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "model": {"name_or_path": tiny_qwen2},
                                      "data": {"dataset": str(train)}}))
    common = ["--config", str(config), "--max_new_tokens", "2", "--max_samples", "2"]
    with pytest.raises(LitFTError, match="no evaluation data: set data.eval_dataset or --eval_dataset"):
        litft_run(["predict", *common])
    assert litft_run(["predict", *common, "--on_training_data", "true"]) == 0
    assert f"predict: scoring {train} (data.dataset: the TRAINING data (--on_training_data))" in capsys.readouterr().out
    assert litft_run(["predict", *common, "--data.eval_dataset", str(train)]) == 0
    assert f"predict: scoring {train} (data.eval_dataset)" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions-base.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["0", "2"]
