"""Exact resume of a DPO run (tests/test_resume.py's machinery): SIGKILL at a random step after a checkpoint, resume
with ``--ckpt_path last``: per-step losses (float.hex) and the adapter's bytes equal an uninterrupted run's. The run
has LoRA dropout (the RNG stream matters), validation with the preference metrics, and crosses an epoch end."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_resume import _config, _fit, _losses

EVERY, MAX_STEPS = 3, 8


def _pairs(path: Path, n: int = 28) -> str:
    """n TRL-format pairs (24 train + 4 validation: 6 batches of 4 per epoch)."""
    records = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} or so"}
               for i in range(n)]
    path.write_text(json.dumps(records))
    return str(path)


@pytest.mark.slow
def test_dpo_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, tiny_qwen2):
    kill_at = random.randrange(EVERY, MAX_STEPS)  # any step from the first checkpoint on
    saved_step = kill_at // EVERY * EVERY
    data = _pairs(tmp_path / "pairs.json")

    def config(out: str, record: Path, kill: int = -1) -> Path:
        path = _config(tmp_path, tiny_qwen2, data, tmp_path / out, record, kill_at=kill, every=EVERY, val_every=3,
                       max_steps=MAX_STEPS)
        config = yaml.safe_load(path.read_text())
        config["model"]["method"] = "dpo"
        config["model"]["dpo"] = {"beta": 0.2}
        path.write_text(yaml.safe_dump(config))
        return path

    where = f"(killed at step {kill_at})"
    full_rec, cut_rec, resumed_rec = tmp_path / "full.txt", tmp_path / "cut.txt", tmp_path / "resumed.txt"
    full = _fit(config("full", full_rec))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _fit(config("cut", cut_rec, kill=kill_at))
    assert killed.returncode == -signal.SIGKILL, where + killed.stderr[-3000:]
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_step
    resumed = _fit(config("cut", resumed_rec), "--ckpt_path", "last")
    assert resumed.returncode == 0, where + resumed.stderr[-3000:]

    full_losses = _losses(full_rec)
    assert [s for s, _ in full_losses] == list(range(1, MAX_STEPS + 1))
    assert len({v for _, v in full_losses}) == MAX_STEPS  # the loss moves
    assert _losses(cut_rec) == full_losses[:kill_at], where
    assert _losses(resumed_rec) == full_losses[saved_step:], where  # identical floats
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "cut" / adapter).read_bytes() == (tmp_path / "full" / adapter).read_bytes(), where
