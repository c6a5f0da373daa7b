"""scripts/device_check.py, the one-command GPU check, kept runnable: its CPU smoke run trains, and its comparison
flags cases that do not train alike."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_flags_a_loss_that_differs():
    dc = _module()
    same = dc.compare({"loss": [2.0, 1.5]}, {"loss": [2.0, 1.5 * (1 + 5e-5)]}, 1e-4)
    assert same["ok"] and same["max_rel_diff"] == pytest.approx(5e-5, rel=1e-3)
    assert not dc.compare({"loss": [2.0, 1.5]}, {"loss": [2.0, 1.6]}, 1e-4)["ok"]
    assert not dc.compare({"loss": [2.0]}, {"loss": [2.0, 1.6]}, 1e-4)["ok"]  # a case that stopped early
    assert dc.trained({"loss": [3.0, 2.5]}) and not dc.trained({"loss": [3.0, float("nan")]})
    assert not dc.trained({"loss": [3.0, 3.1]})


def test_every_case_names_a_reference_that_exists():
    dc = _module()
    for name, (_, _, ref) in dc.CASES.items():
        assert ref is None or ref in dc.CASES, name


def test_long_cases_train_on_rows_of_the_long_cutoff(tmp_path):
    dc = _module()
    args = dc.argparse.Namespace(long_cutoff=300, steps=2)
    data = dc.long_data(args)["data"]
    assert (data["cutoff_len"], data["batch_size"], data["packing"]) == (300, 1, False)
    records = json.loads(Path(data["dataset"]).read_text())
    assert len(records) == 3 and all(len(r["output"].split()) == 300 for r in records)  # >= 300 tokens: cut to 300
    assert dc.CASES["long_tiled"][0]["model"]["tiled_mlp"] and dc.CASES["long_tiled"][2] == "long_gc"


@pytest.mark.slow
def test_cpu_smoke_run_trains_and_matches(tmp_path):
    out = tmp_path / "dc.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--accelerator", "cpu", "--steps", "3",
                           "--cutoff", "256", "--batch", "2", "--records", "120", "--long-cutoff", "384",
                           "--cases", "lora,lora_gc,long_gc,long_tiled",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["device"] == "cpu"
    assert len(report["cases"]["lora"]["loss"]) == 3
    assert report["comparisons"]["lora_gc == lora"]["ok"]
    # the long-context case: tiled MLP + checkpoint offload (ignored on CPU) trains exactly like plain checkpointing
    assert len(report["cases"]["long_tiled"]["loss"]) == 3 and report["long_cutoff_len"] == 384
    assert report["comparisons"]["long_tiled == long_gc"]["ok"]
