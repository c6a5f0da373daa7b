"""Acceptance: every dataset in the real dataset_info.json whose files are present trains with ``fit``;
those SFT cannot train on (preference, KTO) stop with one clear line naming the method they need."""

from __future__ import annotations

import json

import pytest
import yaml

from litft.cli import main

UNSUPPORTED = {"dpo_en_demo", "kto_en_demo"}


def _present(lf) -> list[str]:
    info = json.loads((lf / "dataset_info.json").read_text())
    return sorted(n for n, e in info.items() if e.get("file_name") and (lf / e["file_name"]).exists())


def _fit(tmp_path, model, dataset, lf, **data):
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8}},
        "data": {"dataset_dir": str(lf), "dataset": dataset, "cutoff_len": 96, "batch_size": 2, "max_samples": 8, **data},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "enable_checkpointing": False, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path)])
    return exc.value.code


def test_present_datasets_are_the_expected_ones(lf_data):
    assert set(_present(lf_data)) >= {"alpaca_en_demo", "alpaca_zh_demo", "identity", "c4_demo", "wiki_demo"} | UNSUPPORTED


@pytest.mark.parametrize("packing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_present_sft_dataset_trains(tmp_path, tiny_qwen2, lf_data, packing):
    names = ",".join(n for n in _present(lf_data) if n not in UNSUPPORTED)
    assert _fit(tmp_path, tiny_qwen2, names, lf_data, packing=packing) in (0, None)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_datasets_give_one_line(tmp_path, tiny_qwen2, lf_data, name, capsys):
    assert _fit(tmp_path, tiny_qwen2, name, lf_data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    needs = {"dpo_en_demo": "preference data (ranking: true) needs model.method: dpo, orpo or simpo",
             "kto_en_demo": "feedback data (kto_tag) needs model.method: kto"}[name]
    assert err[-1] == f"litft: error: dataset '{name}': {needs} (this run's model.method is sft)"
