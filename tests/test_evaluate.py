"""ROUGE scoring (rouge-score package) and predict + evaluate on the shipped summaries dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litft.cli import run as litft_run
from litft.commands.evaluate import format_table, read_predictions
from litft.metrics import rouge, score
from litft.errors import DataError
from tests.test_generate import SUMMARIES, trained_run  # noqa: F401  (module fixture)


def test_rouge_exact_values():
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    # pred "the cat" vs ref "the cat sat on the mat": P=2/2, R=2/6 -> F1 0.5; bigrams P=1/1, R=1/5 -> 1/3.
    scores = rouge(["the cat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(50.0)
    assert scores["rouge2"] == pytest.approx(100 / 3)
    assert scores["rougeL"] == pytest.approx(50.0)
    assert rouge(["dogs run", "x"], ["dog running", "y"])["rouge1"] == pytest.approx(50.0)  # stemming: 1.0 and 0.0


def test_shipped_dataset_is_a_clean_summarisation_set():
    records = json.loads(Path(SUMMARIES).read_text())
    assert len(records) == 24
    for r in records:
        assert set(r) == {"instruction", "input", "output"}
        assert len(r["output"]) < len(r["input"])


def test_bad_predictions_file_names_the_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prediction": "a", "reference": "b"}\n{"prediction": "a"}\n')
    with pytest.raises(DataError, match=r"p.jsonl, record 1, field 'reference'"):
        read_predictions(path)


def test_table_side_by_side_with_the_change():
    base = {"rouge1": 1.0, "rouge2": 2.0, "rougeL": 3.0, "bleu4": 4.0, "exact_match": 0.0}
    tuned = {"rouge1": 10.0, "rouge2": 20.0, "rougeL": 30.0, "bleu4": 2.5, "exact_match": 50.0}
    lines = format_table({"base": base, "fine-tuned": tuned}, 4).splitlines()
    assert lines[0].split() == ["metric", "base", "fine-tuned", "change"]
    assert lines[1].split() == ["rouge1", "1.00", "10.00", "+9.00"]
    assert lines[3].split() == ["rougeL", "3.00", "30.00", "+27.00"]
    assert lines[4].split() == ["bleu4", "4.00", "2.50", "-1.50"]
    assert lines[5].split() == ["exact_match", "0.00", "50.00", "+50.00"]
    assert format_table({"only": base}, 1).splitlines()[0].split() == ["metric", "only"]


@pytest.mark.slow
def test_predict_then_evaluate_base_vs_finetuned(trained_run, capsys):  # noqa: F811
    config, out = trained_run
    common = ["--config", str(config), "--eval_dataset", SUMMARIES, "--max_samples", "4", "--max_new_tokens", "8"]
    assert litft_run(["predict", *common, "--adapter", str(out / "adapter")]) == 0
    tuned = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    records = json.loads(Path(SUMMARIES).read_text())[:4]
    assert [r["reference"] for r in tuned] == [r["output"] for r in records]
    capsys.readouterr()

    assert litft_run(["evaluate", *common]) == 0  # predicts with base and with <output_dir>/adapter, then scores
    printed = capsys.readouterr().out
    header, r1, r2, rl = printed.splitlines()[:4]
    assert header.split() == ["metric", "base", "fine-tuned", "change"]
    assert [r1.split()[0], r2.split()[0], rl.split()[0]] == ["rouge1", "rouge2", "rougeL"]
    results = json.loads((out / "eval_results.json").read_text())
    base_rows = read_predictions(out / "predictions-base.jsonl")
    tuned_rows = read_predictions(out / "predictions.jsonl")
    assert len(base_rows) == len(tuned_rows) == results["examples"] == 4
    assert results["scores"]["base"] == score([r["prediction"] for r in base_rows], [r["reference"] for r in base_rows])
    assert results["scores"]["fine-tuned"] == score([r["prediction"] for r in tuned_rows], [r["reference"] for r in tuned_rows])
    assert results["data"] == f"{SUMMARIES} (--eval_dataset)"
    assert r1.split()[1:3] == [f"{results['scores']['base']['rouge1']:.2f}", f"{results['scores']['fine-tuned']['rouge1']:.2f}"]

    # Scoring existing files gives the same numbers.
    assert litft_run(["evaluate", "--config", str(config), "--predictions", str(out / "predictions-base.jsonl"),
                      str(out / "predictions.jsonl"), "--labels", "base", "fine-tuned"]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == printed.splitlines()[:4]


def test_evaluate_chinese_partial_matches_score_nonzero(tiny_qwen2, tmp_path, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "model": {"name_or_path": tiny_qwen2},
                                      "data": {"dataset": "unused"}}))
    rows = [{"prediction": "公司甲碳排放量为12万吨。\n### End\n多余", "reference": "公司乙用水量为12万吨。"},
            {"prediction": "实体: 公司甲", "reference": "实体: 公司甲"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert litft_run(["evaluate", "--config", str(config), "--predictions", str(path), "--stop", "### End"]) == 0
    scores = json.loads((tmp_path / "eval_results.json").read_text())["scores"]["p"]
    cut = ["公司甲碳排放量为12万吨。", "实体: 公司甲"]  # the stop string and what follows are cut before scoring
    assert scores == score(cut, [r["reference"] for r in rows])
    assert 0 < scores["rouge1"] < 100 and scores["exact_match"] == 50.0
    assert "scored: predictions files: " in capsys.readouterr().out
