"""kill -9 and resume under sequence parallelism: 2 processes, ``sequence_parallel_size: 2`` (one data-parallel group),
DeepSpeed ZeRO-2, LoRA. A run whose whole process group is SIGKILLed at a random step after a checkpoint, then resumed
with ``--ckpt_path last``, logs the same per-step losses (float.hex) and ends on the same adapter bytes as an
uninterrupted run.

The run is made sensitive to everything a resume restores: AdamW (optimizer moments, DeepSpeed's ZeRO-2 shards), a
cosine schedule with warm-up (scheduler state), LoRA dropout (the RNG streams, restored per rank), 20 rows = 5
batches of 4 per epoch over 7 steps (the loader position, across an epoch end), and replies long enough that the
split falls inside them (tests/test_sequence_parallel.py's rows). Set LITFT_TEST_KILL_AT to choose the step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import yaml

from litft.data.datamodule import LitFTDataModule
from litft.resume import checkpoint_step
from tests.helpers import write_alpaca
from tests.test_distributed import REPO, ROWS, _env

EVERY, MAX_STEPS = 2, 7
ADAPTER = "adapter/adapter_model.safetensors"


class GroupKill(pl.Callback):
    """Rank 0 appends each optimizer step's logged loss (float.hex) to ``path``; at the start of step ``kill_at_step``
    it SIGKILLs its whole process group (every rank at once, as when a node dies: nothing gets to clean up)."""

    def __init__(self, path: str, kill_at_step: int = -1):
        self.path, self.kill_at_step, self._last = path, kill_at_step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.kill_at_step and trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last or "train/loss" not in trainer.callback_metrics:
            return
        self._last = step
        with open(self.path, "a") as f:
            f.write(f"{step} {float(trainer.callback_metrics['train/loss']).hex()}\n")


def test_every_rank_resumes_its_groups_rows_from_rank_0s_loader_state(tmp_path, tiny_llama, monkeypatch):
    """4 ranks, N=2: ranks 0-1 (group 0) and 2-3 (group 1) get the same rows, the groups disjoint rows. Lightning
    saves rank 0's loader state (a data-parallel world of 2) and every rank loads it: each continues with the rest of
    its own epoch -- its group's rows, not a neighbour's and not the single-rank order."""
    monkeypatch.setenv("LITFT_CACHE", str(tmp_path / "cache"))
    dm = LitFTDataModule(dataset=str(write_alpaca(tmp_path / "rows.json", n=24)), tokenizer=tiny_llama, batch_size=2,
                         cutoff_len=48)
    dm.setup("fit")

    def loader(rank: int):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=4, strategy=SimpleNamespace(sequence_parallel_size=2),
                                     accumulate_grad_batches=1, num_training_batches=float("inf"))
        return dm.train_dataloader()

    def rows(batch) -> list[tuple[int, ...]]:
        return [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]

    epoch = [[rows(b) for b in loader(rank)] for rank in range(4)]
    assert len(epoch[0]) == 6 and epoch[0] == epoch[1] and epoch[2] == epoch[3]  # 24 rows / 2 groups / batch 2
    group = [{r for b in epoch[rank] for r in b} for rank in (0, 2)]
    assert len(group[0]) == len(group[1]) == 12 and not group[0] & group[1]
    saved = loader(0)
    batches = iter(saved)
    next(batches), next(batches)
    state = saved.state_dict()
    assert (state["world_size"], state["batches_consumed"]) == (2, 2)
    for rank in range(4):
        resumed = loader(rank)
        resumed.load_state_dict(state)
        assert [rows(b) for b in resumed] == epoch[rank][2:], rank


def _config(root: Path, model: str, data: str, name: str, kill_at: int = -1) -> Path:
    out = root / name
    config = {
        "output_dir": str(out),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.2},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "cosine", "warmup_steps": 2}},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": 4},
        "trainer": {
            "accelerator": "cpu", "devices": 2, "max_steps": MAX_STEPS, "precision": "32-true", "logger": False,
            "strategy": {"class_path": "litft.strategies.LitFTDeepSpeedStrategy",
                         "init_args": {"stage": 2, "sequence_parallel_size": 2}},
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "litft.callbacks.checkpoint.LitFTCheckpoint",
                 "init_args": {"every_n_train_steps": EVERY}},
                {"class_path": "tests.test_sequence_parallel_resume.GroupKill",
                 "init_args": {"path": str(root / f"{name}-{kill_at}.txt"), "kill_at_step": kill_at}},
            ],
        },
    }
    path = root / f"{name}-{kill_at}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """``litft fit`` in a session of its own: its process group is the run's ranks and nothing else."""
    out = Path(yaml.safe_load(config.read_text())["output_dir"])
    return subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(config), *extra], cwd=REPO,
                          env=_env(LITFT_CACHE=str(out / "cache")), capture_output=True, text=True, timeout=600,
                          start_new_session=True)


def _losses(path: Path) -> list[tuple[int, str]]:
    return [(int(s), v) for s, v in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.distributed
@pytest.mark.slow
def test_sigkill_every_rank_at_a_random_step_then_resume_is_bit_identical(tmp_path, tiny_llama):
    kill_at = int(os.environ.get("LITFT_TEST_KILL_AT", random.randrange(EVERY, MAX_STEPS)))  # from the 1st checkpoint
    saved_step, where = kill_at // EVERY * EVERY, f"(killed at step {kill_at})"
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"instruction": f"Double {i}.", "input": "",
                                 "output": " ".join([str(2 * i)] * (12 + (7 * i) % 11))} for i in range(ROWS)]))

    full = _run(_config(tmp_path, tiny_llama, str(data), "full"))
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-4000:]
    assert "sequence parallelism: 2 ranks per sequence" in full.stdout + full.stderr
    killed = _run(_config(tmp_path, tiny_llama, str(data), "cut", kill_at))
    assert killed.returncode == -signal.SIGKILL, where + killed.stderr[-4000:]
    assert not (tmp_path / "cut" / "adapter").exists(), where
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == saved_step, where  # the DeepSpeed folder last.ckpt points to
    resumed = _run(_config(tmp_path, tiny_llama, str(data), "cut"), "--ckpt_path", "last")
    assert resumed.returncode == 0, where + resumed.stdout[-2000:] + resumed.stderr[-4000:]

    full_losses = _losses(tmp_path / "full--1.txt")
    assert [s for s, _ in full_losses] == list(range(1, MAX_STEPS + 1))
    assert len({v for _, v in full_losses}) == MAX_STEPS  # the loss moves
    assert _losses(tmp_path / f"cut-{kill_at}.txt") == full_losses[:kill_at], where
    assert _losses(tmp_path / "cut--1.txt") == full_losses[saved_step:], where  # identical floats
    assert (tmp_path / "cut" / ADAPTER).read_bytes() == (tmp_path / "full" / ADAPTER).read_bytes(), where
