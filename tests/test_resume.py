"""Exact mid-epoch resume through the real CLI: a run SIGKILLed after a checkpoint, resumed with
``--ckpt_path last``, matches an uninterrupted run bit for bit (CPU, fp32): per-step losses and adapter bytes.
A 2-process DDP run's checkpoint resumed by 1 process continues at the same global sample, or stops with the
one-line error when no whole number of its batches gets there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import write_alpaca

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: str, data: str, out: Path, record: Path, kill_at: int = -1, every: int = 3,
            val_every: int = 3, max_steps: int = 8) -> Path:
    config = {
        "output_dir": str(out),
        "seed_everything": 0,
        "model": {"name_or_path": model, "dtype": "float32",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.2},  # dropout: the RNG stream matters
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "cosine", "warmup_steps": 2}},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": 4, "val_size": 4},
        "trainer": {
            "max_steps": max_steps, "accelerator": "cpu", "devices": 1, "precision": "32-true", "logger": False,
            "log_every_n_steps": 1, "enable_progress_bar": False, "val_check_interval": val_every,
            "callbacks": [
                {"class_path": "litft.callbacks.checkpoint.LitFTCheckpoint", "init_args": {"every_n_train_steps": every}},
                {"class_path": "tests.resume_probe.StepRecorder", "init_args": {"path": str(record), "kill_at_step": kill_at}},
            ],
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(config), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _losses(path: Path) -> list[tuple[int, str]]:
    return [(int(s), v) for s, v in (line.split() for line in path.read_text().splitlines())]


# (checkpoint every N steps, kill at step, validation every V batches, the checkpoint's step, max_steps)
CASES = {
    "mid-epoch": (3, 5, 3, 3, 8),
    # The checkpoint closes epoch 0 (12 batches) and no validation follows it: the resumed run creates epoch 1's
    # loader iterator after restoring the RNG, the uninterrupted one created it after saving. A loader drawing its
    # seed from the global torch RNG put the two runs one draw apart (the soak's preemptions at step 10 of 11).
    "epoch-end": (4, 13, 5, 12, 14),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_qwen2, case):
    every, kill_at, val_every, saved_step, max_steps = CASES[case]
    data = str(write_alpaca(tmp_path / "alpaca.json", n=52))  # 48 train rows / 4 = 12 batches per epoch
    full_rec, cut_rec = tmp_path / "full.txt", tmp_path / "cut.txt"

    def config(out: str, record: Path, kill: int = -1) -> Path:
        return _config(tmp_path, tiny_qwen2, data, tmp_path / out, record, kill_at=kill, every=every,
                       val_every=val_every, max_steps=max_steps)

    full = _fit(config("full", full_rec))
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _fit(config("cut", cut_rec, kill=kill_at))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == saved_step
    assert [s for s, _ in _losses(cut_rec)] == list(range(1, kill_at + 1))
    assert not (tmp_path / "cut" / "adapter").exists()

    # Resume the killed run (same config, no kill) from its output directory.
    resumed = _fit(config("cut", tmp_path / "resumed.txt"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    full_losses, resumed_losses = _losses(full_rec), _losses(tmp_path / "resumed.txt")
    assert [s for s, _ in full_losses] == list(range(1, max_steps + 1))
    assert resumed_losses == full_losses[saved_step:]  # identical floats
    assert _losses(cut_rec) == full_losses[:kill_at]
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "cut" / adapter).read_bytes() == (tmp_path / "full" / adapter).read_bytes()


def _loader(rows, batch_size, rank=0, world=1, lengths=None):
    from litft.data.collate import PadCollator
    from litft.data.loader import ResumableBatchSampler, ResumableLoader

    sampler = ResumableBatchSampler(len(rows), batch_size, seed=3, rank=rank, world_size=world, lengths=lengths)
    return ResumableLoader(rows, [1] * len(rows), PadCollator(0), sampler)


def _ids(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def test_one_process_continues_a_two_process_run_at_the_same_global_sample():
    from litft.errors import LitFTError

    rows = [{"input_ids": [i, i], "labels": [i, i]} for i in range(24)]
    # The uninterrupted 2-rank run: global batch k = batch k of rank 0 + batch k of rank 1 (2 x 2 samples).
    ranks = [[_ids(b) for b in _loader(rows, 2, rank=r, world=2)] for r in range(2)]
    global_batches = [sorted(a + b) for a, b in zip(*ranks)]
    # Rank 0 consumed 3 batches (12 samples) when the checkpoint was written (Lightning saves rank 0's state).
    two = _loader(rows, 2, rank=0, world=2)
    it = iter(two)
    for _ in range(3):
        next(it)
    state = two.state_dict()
    # One process with batch 4 (the same global batch) continues at global sample 12: no sample skipped or repeated.
    one = _loader(rows, 4)
    one.load_state_dict(state)
    assert [sorted(_ids(b)) for b in one] == global_batches[3:]
    # Batch 8 (12 is not a multiple of 8) or length-grouped batches cannot continue there: a one-line error.
    for batch, lengths in ((8, None), (4, [1 + i % 3 for i in range(24)])):
        other = _loader(rows, batch, lengths=lengths)
        with pytest.raises(LitFTError, match=r"cannot resume at the same sample: the checkpoint was written by 2 "
                                             r"rank\(s\) x data.batch_size 2 after 12 samples of epoch 0") as err:
            other.load_state_dict(state)
        assert "\n" not in str(err.value)
    # 2 ranks x batch 1 (global 2 divides 12): continues at batch 6 of each rank.
    half = _loader(rows, 1, rank=1, world=2)
    half.load_state_dict(state)
    assert half.state_dict()["batches_consumed"] == 6


class SampleRecorder(pl.Callback):
    """Appends, per optimizer step, the step, the logged (all-rank) loss and the unpadded token ids of every row
    this rank trained on to ``<path>.rank<global rank>`` (one JSON line; accumulation 1: one batch per step)."""

    def __init__(self, path: str):
        self.path, self._rows = path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._rows = [ids[i, : int(mask[i].sum())].tolist() for i in range(ids.shape[0])]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": float(trainer.callback_metrics["train/loss"]), "rows": self._rows}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(line) + "\n")


def _recorded(path: Path, ranks: int) -> dict[int, tuple[float, list[tuple[int, ...]]]]:
    """step -> (loss, the rows of all ranks in that step, sorted)."""
    out: dict[int, tuple[float, list]] = {}
    for rank in range(ranks):
        for line in Path(f"{path}.rank{rank}").read_text().splitlines():
            rec = json.loads(line)
            loss, rows = out.get(rec["step"], (rec["loss"], []))
            assert loss == rec["loss"], f"step {rec['step']}: ranks logged different losses"
            out[rec["step"]] = (loss, rows + [tuple(r) for r in rec["rows"]])
    return {step: (loss, sorted(rows)) for step, (loss, rows) in sorted(out.items())}


@pytest.mark.slow
@pytest.mark.distributed
def test_one_process_resumes_a_two_process_ddp_checkpoint(tmp_path, tiny_llama):
    """Issue 11: 2 DDP processes x batch 2 save a checkpoint after step 3 (12 samples of a 28-row epoch). One
    process with batch 4 (the same global batch) continues at global sample 12: steps 4-6 train on exactly the
    rows, and reach the losses and adapter, of the uninterrupted 2-process run. One process with batch 8 cannot
    start at sample 12: exit code 2, one ``litft: error:`` line, no traceback."""
    from tests.test_distributed import LOSS_RTOL, WEIGHT_ATOL, _env

    data = str(write_alpaca(tmp_path / "alpaca.json", n=28))  # 7 global batches of 4 per epoch

    def fit(name: str, *extra: str) -> subprocess.CompletedProcess:
        config = {
            "output_dir": str(tmp_path / name),
            "seed_everything": 0,
            # SGD (Adam would hide a gradient scale error), dropout 0 (the ranks' RNG streams differ).
            "model": {"name_or_path": tiny_llama, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                      "optimizer": {"name": "sgd", "lr": 1.0}, "scheduler": {"name": "constant"}},
            "data": {"dataset": data, "cutoff_len": 48, "batch_size": 2},
            "trainer": {
                "max_steps": 6, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": "32-true",
                "gradient_clip_val": 1.0, "logger": False, "log_every_n_steps": 1, "enable_progress_bar": False,
                "callbacks": [
                    {"class_path": "litft.callbacks.checkpoint.LitFTCheckpoint",
                     "init_args": {"every_n_train_steps": 3, "keep_all": True}},
                    {"class_path": "tests.test_resume.SampleRecorder", "init_args": {"path": str(tmp_path / name)}},
                ],
            },
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(path), *extra], cwd=REPO,
                              env=_env(), capture_output=True, text=True, timeout=600)

    two = fit("two")
    assert two.returncode == 0, two.stderr[-4000:]
    ckpt = tmp_path / "two" / "checkpoints" / "step=3.ckpt"  # keep_all: one step=N.ckpt per save
    assert ckpt.is_file(), sorted(p.name for p in ckpt.parent.iterdir())
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3
    reference = _recorded(tmp_path / "two", ranks=2)
    assert list(reference) == [1, 2, 3, 4, 5, 6]
    seen = [row for _, rows in reference.values() for row in rows]
    assert len(seen) == 24 == len(set(seen))  # 6 global batches of 4 distinct rows, all of epoch 0

    # Same global batch on one process: the run goes on from step 3 to max_steps 6, on the next global samples.
    one = fit("one", "--trainer.devices", "1", "--data.batch_size", "4", "--ckpt_path", str(ckpt))
    assert one.returncode == 0, one.stderr[-4000:]
    assert torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    resumed = _recorded(tmp_path / "one", ranks=1)
    assert list(resumed) == [4, 5, 6]
    before = {row for step in (1, 2, 3) for row in reference[step][1]}
    for step, (loss, rows) in resumed.items():
        assert len(rows) == 4 and not before & set(rows), f"step {step} repeats a sample of steps 1-3"
        assert rows == reference[step][1], f"step {step} is not the next global batch"
        assert loss == pytest.approx(reference[step][0], rel=LOSS_RTOL), step
    adapter = "adapter/adapter_model.safetensors"
    got, want = load_file(tmp_path / "one" / adapter), load_file(tmp_path / "two" / adapter)
    assert sorted(got) == sorted(want) and want
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=WEIGHT_ATOL, msg=key)

    # Batch 8: 12 samples are not a whole number of its batches -- the one-line error, before any step.
    eight = fit("eight", "--trainer.devices", "1", "--data.batch_size", "8", "--ckpt_path", str(ckpt))
    assert eight.returncode == 2, eight.stderr[-4000:]
    assert "Traceback" not in eight.stdout + eight.stderr, eight.stderr[-4000:]
    errors = [line for line in eight.stderr.splitlines() if line.startswith("litft: error:")]
    assert errors == [
        "litft: error: cannot resume at the same sample: the checkpoint was written by 2 rank(s) x data.batch_size 2 "
        "after 12 samples of epoch 0; this run has 1 rank(s) x data.batch_size 8 (12 is not a multiple of 8). "
        "Resume with the same number of ranks and batch size, or with ranks x batch size dividing 12"
    ], eight.stderr[-4000:]
    assert not Path(f"{tmp_path / 'eight'}.rank0").exists()  # no step trained
