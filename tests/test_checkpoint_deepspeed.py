"""DeepSpeed checkpoints, for real (2 processes over gloo, ZeRO-3): atomic saves and gathered adapters.

- A save SIGKILLed on every rank after the new checkpoint is written and before it is made current leaves the
  previous checkpoint current and loadable, and ``--ckpt_path last`` resumes from it (that a DeepSpeed resume ends
  on the uninterrupted run's adapter is tests/test_distributed.py's).
- ``LitFTCheckpoint(save_adapter=True)`` under ZeRO-3 writes the real adapter weights (gathered from the shards),
  equal to the adapter written at the end of fit.
- The link swap itself (litft/strategies/checkpointing.py), in one process with a stand-in for the DeepSpeed save.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from litft.errors import LitFTError
from tests.helpers import write_alpaca


REPO = Path(__file__).resolve().parents[1]


class KillInSave(pl.Callback):
    """Installs litft's DeepSpeed test hook: SIGKILL this rank inside the save of step ``step``, after the new
    checkpoint is written, before it becomes current."""

    def __init__(self, step: int):
        self.step = step

    def setup(self, trainer, pl_module, stage):
        from litft.strategies import checkpointing

        def hook(tmp: Path) -> None:
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpointing.before_commit = hook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(root: Path, model: str, data: str, name: str, *extra: str, kill_at: int = 0, out: str | None = None):
    out_dir = root / (out or name)
    callbacks = [{"class_path": "litft.callbacks.checkpoint.LitFTCheckpoint",
                  "init_args": {"every_n_train_steps": 2, "save_adapter": True}}]
    if kill_at:
        callbacks.append({"class_path": "tests.test_checkpoint_deepspeed.KillInSave", "init_args": {"step": kill_at}})
    config = {
        "output_dir": str(out_dir), "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "optimizer": {"lr": 1e-2}, "scheduler": {"name": "constant"}},
        "data": {"dataset": data, "cutoff_len": 48, "batch_size": 2, "val_size": 0},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "deepspeed_stage_3", "max_steps": 4,
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": callbacks},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), DS_ACCELERATOR="cpu", LITFT_CACHE=str(root / "cache"),
               LITFT_DIST_TIMEOUT="60")
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(path), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, out_dir


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_save_killed_mid_write_keeps_previous_and_resumes(tmp_path, tiny_llama):
    from litft.resume import newest_checkpoint

    data = str(write_alpaca(tmp_path / "alpaca.json", n=24))
    killed, out = _run(tmp_path, tiny_llama, data, "cut", kill_at=4)
    assert killed.returncode != 0 and not (out / "adapter").exists(), killed.stderr[-4000:]
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and newest_checkpoint(out) == (last, 2)  # the step-2 save is still current
    assert [p.name for p in last.parent.glob(".last.ckpt.4-*.tmp")], list(last.parent.iterdir())  # the killed one
    # ZeRO-3: the adapter written with the step-2 checkpoint holds the gathered weights, not empty placeholders.
    at_2 = _weights(out / "checkpoints" / "last-adapter")
    assert at_2 and all(t.numel() > 0 for t in at_2.values())
    assert all(t.abs().sum() > 0 for k, t in at_2.items() if k.endswith("lora_B.weight"))

    resumed, out = _run(tmp_path, tiny_llama, data, "resume", "--ckpt_path", "last", out="cut")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from" in resumed.stderr and "(global step 2)" in resumed.stderr
    assert newest_checkpoint(out)[1] == 4 and not list(last.parent.glob("*.tmp"))  # leftover cleaned by the save
    # The step-4 checkpoint's adapter (gathered from the shards) is the adapter written at the end of fit.
    final, at_4 = _weights(out / "adapter"), _weights(out / "checkpoints" / "last-adapter")
    assert set(final) == set(at_2) == set(at_4)
    assert all(torch.equal(at_4[k], final[k]) and not torch.equal(at_2[k], final[k]) for k in final)


class _OneRank:
    """The strategy calls atomic_save makes, for one process."""

    is_global_zero = True

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        pass


def _fake_ds_save(checkpoint: dict, folder: str) -> None:
    """What a DeepSpeed save writes (a folder with ``latest`` and the tag's files)."""
    (Path(folder) / "checkpoint").mkdir(parents=True)
    (Path(folder) / "latest").write_text("checkpoint")
    torch.save({"global_step": checkpoint["global_step"], "dp_world_size": 1},
               Path(folder) / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({}, Path(folder) / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


def test_atomic_save_swaps_a_link_and_a_failed_save_leaves_the_previous(tmp_path, monkeypatch):
    from litft.resume import newest_checkpoint
    from litft.strategies import checkpointing

    target = tmp_path / "checkpoints" / "last.ckpt"
    # A real folder in the way (Lightning's own DeepSpeed save, not litft's) is refused and left as it is.
    _fake_ds_save({"global_step": 1}, str(target))
    with pytest.raises(LitFTError, match=f"^{target}: a checkpoint folder litft did not write"):
        checkpointing.atomic_save(_OneRank(), _fake_ds_save, {"global_step": 2}, target)
    assert not target.is_symlink() and newest_checkpoint(tmp_path) == (target, 1)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    shutil.rmtree(target)
    checkpointing.atomic_save(_OneRank(), _fake_ds_save, {"global_step": 2}, target)
    assert target.is_symlink() and newest_checkpoint(tmp_path) == (target, 2)
    first = target.resolve()

    def crash(tmp):
        raise KeyboardInterrupt("killed inside the save")

    monkeypatch.setattr(checkpointing, "before_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.atomic_save(_OneRank(), _fake_ds_save, {"global_step": 3}, target)
    assert target.resolve() == first and newest_checkpoint(tmp_path) == (target, 2)
    monkeypatch.setattr(checkpointing, "before_commit", None)
    checkpointing.atomic_save(_OneRank(), _fake_ds_save, {"global_step": 4}, target)
    assert newest_checkpoint(tmp_path) == (target, 4)
    # The previous folder and the killed save's leftover are gone; only the link and its folder remain.
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["last.ckpt", target.resolve().name])
    checkpointing.remove(target)
    assert list(target.parent.iterdir()) == []
