"""ZeRO-3 with ranks that hold different numbers of trained tokens, one of them none in a step: the loss must
make the same sharded head calls on every rank (before, one rank waited in an all-gather for ever)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_distributed import REPO, _env, _losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 3
TIMEOUT_S = 240


def _uneven_alpaca(path: Path) -> Path:
    """Replies from 1 to ~60 tokens, so ranks' micro-batches hold very different numbers of trained tokens."""
    words = "the capital of France is Paris and the quick brown fox jumps over the lazy dog".split()
    records = [{"instruction": f"Say something {i}.", "input": "",
                "output": " ".join(words[j % len(words)] for j in range(1 + (i * 7) % 40))} for i in range(16)]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize("head", ["frozen", "lora"])
def test_zero3_finishes_with_uneven_and_empty_ranks(tmp_path, tiny_llama, head):
    """head=frozen: a plain frozen head, gathered once per micro-batch; head=lora: an adapted (not plain) head,
    called chunk by chunk (an all-gather each time) for the chunk count agreed across ranks. The persistence
    threshold is 0 so that even the tiny model's parameters are partitioned (by default DeepSpeed keeps
    parameters under 100k elements whole, and no head call would be a collective)."""
    out = tmp_path / "out"
    out.mkdir()
    targets = "all" if head == "frozen" else ["q_proj", "v_proj", "lm_head"]
    config = {
        "output_dir": str(out), "seed_everything": 0,
        "model": {"name_or_path": tiny_llama, "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "constant"}},
        "data": {"dataset": str(_uneven_alpaca(tmp_path / "uneven.json")), "cutoff_len": 96, "batch_size": 1},
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": {
                "class_path": "litft.strategies.LitFTDeepSpeedStrategy",
                "init_args": {"config": {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                                         "zero_allow_untested_optimizer": True}}},
            "max_steps": STEPS,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
            "callbacks": [{"class_path": "tests.loss_probe.UnevenLoss",
                           "init_args": {"record_dir": str(out), "chunk_size": 4, "empty_rank": 1,
                                         "empty_steps": [1]}}],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # Own process group, so that a deadlocked run's other rank (a child of rank 0) is killed with it.
    proc = subprocess.Popen([sys.executable, "-m", "litft", "fit", "--config", str(path)], cwd=REPO,
                            env=_env(LITFT_CACHE=str(tmp_path / "cache")), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:  # the deadlock this test guards against
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"ZeRO-3 run did not finish in {TIMEOUT_S} s (ranks made different head calls?)")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]

    tokens = [dict(map(int, line.split()) for line in (out / f"tokens-rank{r}.txt").read_text().splitlines())
              for r in (0, 1)]
    kind = "head gathered once per micro-batch" if head == "frozen" else "chunk count agreed across ranks"
    assert ("4 trained tokens per chunk, frozen head," if head == "frozen" else
            "4 trained tokens per chunk, trainable head (chunks recomputed in backward),") in stderr
    assert kind in stderr
    assert tokens[1][1] == 0 < tokens[0][1]  # a step where rank 1 holds no trained token
    chunks = [{step: -(-n // 4) for step, n in t.items()} for t in tokens]
    assert any(chunks[0][s] != chunks[1][s] for s in range(STEPS) if s != 1)  # ranks' own chunk counts differ
    losses = _losses(out)
    assert len(losses) == STEPS and all(math.isfinite(x) and x > 0 for x in losses)
