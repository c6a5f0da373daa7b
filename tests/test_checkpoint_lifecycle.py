"""Checkpoints of real LoRA runs: adapter-sized, and the last good one kept when the loss turns NaN."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from litft.errors import LitFTError
from tests.helpers import write_alpaca


class PoisonAtStep(pl.Callback):
    """Sets one LoRA weight to NaN at the start of the given step (a divergence stand-in)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            name, p = next((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)
            with torch.no_grad():
                p.fill_(float("nan"))


def _fit(tmp_path: Path, model: str, *, callbacks=(), max_steps=4, every=2, save_adapter=False):
    from litft.cli import LitFTCLI
    from litft.callbacks.checkpoint import LitFTCheckpoint

    config = {
        "output_dir": str(tmp_path / "out"),
        "seed_everything": 0,
        "model": {"name_or_path": model, "lora": {"r": 2, "alpha": 4, "dropout": 0.0}, "optimizer": {"lr": 1e-2}},
        "data": {"dataset": str(write_alpaca(tmp_path / "a.json", n=32)), "cutoff_len": 48, "batch_size": 4},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "log_every_n_steps": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LitFTCLI(args=["--config", str(path)], run=False)
    for cb in cli.trainer.callbacks:
        if isinstance(cb, LitFTCheckpoint):
            cb._every_n_train_steps = every
            cb.save_adapter = save_adapter
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, tmp_path / "out"


def test_lora_checkpoint_holds_adapter_optimizer_and_run_state_only(tmp_path, tiny_llama):
    cli, out = _fit(tmp_path, tiny_llama, save_adapter=True)
    ckpt_path = out / "checkpoints" / "last.ckpt"
    # On request, the adapter in PEFT format next to the checkpoint, equal to the checkpoint's weights.
    from safetensors.torch import load_file

    peft_weights = load_file(out / "checkpoints" / "last-adapter" / "adapter_model.safetensors")
    ckpt_weights = torch.load(ckpt_path, weights_only=True)["state_dict"]
    renamed = {k.removeprefix("model.").replace(".default.", "."): v for k, v in ckpt_weights.items()}
    assert set(renamed) == set(peft_weights)
    assert all(torch.equal(renamed[k], peft_weights[k]) for k in peft_weights)
    ckpt = torch.load(ckpt_path, weights_only=True)
    weights = ckpt["state_dict"]
    trainable = {n: p for n, p in cli.model.named_parameters() if p.requires_grad}
    assert set(weights) == set(trainable) and all("lora_" in k for k in weights)
    n_adapter = sum(t.numel() for t in weights.values())
    n_base = sum(p.numel() for p in cli.model.parameters())
    assert n_adapter == sum(p.numel() for p in trainable.values()) and n_adapter < n_base / 10
    # AdamW keeps two moments per trainable weight, nothing for the frozen base.
    state = ckpt["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in state.values()) == 2 * n_adapter
    assert ckpt["global_step"] == 4 and ckpt["lr_schedulers"] and ckpt["litft_rng_states"]
    assert "combined_loader" in ckpt["loops"]["fit_loop"]["state_dict"]  # the data position
    # The throughput callback counted the whole model and used the adapter formula (4N FLOPs per token).
    from litft.callbacks.throughput import Throughput

    [tp] = [cb for cb in cli.trainer.callbacks if isinstance(cb, Throughput)]
    assert tp.flops_per_token == 4 * n_base and tp.last_metrics["tokens_per_sec"] > 0
    base_bytes = (Path(tiny_llama) / "model.safetensors").stat().st_size
    assert ckpt_path.stat().st_size < base_bytes / 3, (ckpt_path.stat().st_size, base_bytes)


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_good_checkpoint(tmp_path, tiny_llama):
    with pytest.raises(LitFTError, match=r"training loss is nan at step 3"):
        _fit(tmp_path, tiny_llama, callbacks=[PoisonAtStep(3)], max_steps=6, every=2)
    out = tmp_path / "out"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (out / "adapter").exists()  # no adapter is written from poisoned weights
    assert (out / "loss.png").is_file()  # the curves up to the failure are still drawn
