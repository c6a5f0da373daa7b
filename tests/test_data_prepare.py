"""``python -m litft prepare``: statistics, cache reuse, preview with trained spans, one-line data errors."""

from __future__ import annotations

import json

import pytest
import yaml

from litft.cli import main, run
from tests.helpers import write_alpaca


def _config(tmp_path, model, data, **data_kw):
    cfg = {"output_dir": str(tmp_path / "out"), "model": {"name_or_path": model}, "data": {"dataset": str(data), "cutoff_len": 64, **data_kw}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_prepare_prints_figures_then_hits_cache(tmp_path, tiny_qwen2, capsys):
    cfg = _config(tmp_path, tiny_qwen2, write_alpaca(tmp_path / "a.json", 12), packing=True)
    assert run(["prepare", "--config", cfg, "--preview", "2"]) == 0
    out = capsys.readouterr().out
    assert "cache: wrote" in out and "records: 12" in out and "samples: 12" in out
    assert "packing efficiency:" in out
    assert out.count("--- sample ") == 2
    # the trained span of an alpaca answer is exactly the answer and <|im_end|>
    assert "«" in out and "<|im_end|>»" in out
    assert run(["prepare", "--config", cfg]) == 0
    assert "cache: reused" in capsys.readouterr().out


def test_bad_data_is_one_line_exit_2(tmp_path, tiny_qwen2, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": ["not", "a", "string"], "output": "a"}]))
    cfg = _config(tmp_path, tiny_qwen2, bad)
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--config", cfg])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"litft: error: {bad}, record 1, field 'instruction': expected a string, got list"
    assert not any("Traceback" in line for line in err)


def test_deeply_nested_json_is_one_line_exit_2_from_the_command_line(tmp_path, tiny_qwen2):
    """``python -m litft prepare`` on a 5,000-deep JSON array: Python's parser would raise RecursionError."""
    from tests.test_cli import litft

    deep = tmp_path / "d.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    out = litft("prepare", "--config", _config(tmp_path, tiny_qwen2, deep))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("litft: error:")]
    assert errors == [f"litft: error: {deep}, record 0: malformed JSON (nested deeper than 128 levels at line 1 column 130)"], out.stderr
