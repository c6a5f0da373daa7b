"""Loss plot and throughput callbacks on a toy Lightning run."""

import math

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from litft.callbacks.plot import LossPlot, smooth
from litft.callbacks.throughput import Throughput, count_parameters, count_tokens, flops_per_token, peak_flops_per_device
from tests.toy_lightning import ToyModule, loader, toy_batches


def _trainer(tmp_path, callbacks, **kw):
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=8, callbacks=callbacks,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=2, **kw)


def test_loss_png_written_with_train_and_val(tmp_path):
    plot = LossPlot()
    trainer = _trainer(tmp_path, [plot], val_check_interval=4, num_sanity_val_steps=0)
    torch.manual_seed(0)
    trainer.fit(ToyModule(), loader(toy_batches(8)), loader(toy_batches(2)))
    assert [s for s, _ in plot.train] == list(range(1, 9))
    assert [s for s, _ in plot.val] == [4, 8]
    losses = [v for _, v in plot.train]
    assert losses[-1] < losses[0]  # the toy LM learns
    png = tmp_path / "loss.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (700, 450)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


class _RewardModule(ToyModule):
    """Logs a reward accuracy like the preference methods (litft.methods): step/4 in training, 0.75 in validation."""

    def training_step(self, batch, batch_idx):
        self.log("train/rewards/accuracies", float(self.global_step % 4) / 4)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val/rewards/accuracies", 0.75)
        return super().validation_step(batch, batch_idx)


def test_loss_png_gets_a_reward_accuracy_panel_when_the_run_logs_one(tmp_path):
    plot = LossPlot()
    trainer = _trainer(tmp_path, [plot], val_check_interval=4, num_sanity_val_steps=0)
    trainer.fit(_RewardModule(), loader(toy_batches(8)), loader(toy_batches(2)))
    assert plot.second["train"] == [(s, ((s - 1) % 4) / 4) for s in range(1, 9)]  # logged before the step counted
    assert plot.second["val"] == [(4, 0.75), (8, 0.75)]
    with Image.open(tmp_path / "loss.png") as img:
        assert img.size == (1300, 450)  # two panels (an SFT run: 700 wide, above)
    restored = LossPlot()
    restored.load_state_dict(plot.state_dict())
    assert restored.second == plot.second and restored.train == plot.train


def test_loss_plot_counts_optimizer_steps_under_accumulation(tmp_path):
    plot = LossPlot()
    trainer = _trainer(tmp_path, [plot], accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(ToyModule(), loader(toy_batches(16)))
    assert [s for s, _ in plot.train] == list(range(1, 9))


def test_smooth_is_ema():
    assert smooth([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
    out = smooth([0.0, 10.0], weight=0.5)
    assert out == [0.0, 5.0]


def test_token_count_excludes_padding():
    batch = toy_batches(1, pad_per_row=2, length=6, rows=2)[0]
    assert count_tokens(batch) == 8
    packed = {"input_ids": torch.ones(1, 10, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]])}
    assert count_tokens(packed) == 10


def test_flops_formula():
    assert flops_per_token(100, full=False, recompute=False) == 400
    assert flops_per_token(100, full=True, recompute=False) == 600
    assert flops_per_token(100, full=True, recompute=True) == 800
    assert flops_per_token(100, full=False, recompute=True) == 600


def test_peak_unknown_on_cpu():
    assert peak_flops_per_device(torch.device("cpu"), torch.float32) is None


def test_throughput_logs_real_tokens_and_mfu(tmp_path):
    tp = Throughput(log_every_n_steps=4, peak_flops=1e9)
    trainer = _trainer(tmp_path, [tp], limit_val_batches=0)
    module = ToyModule()
    total, trainable = count_parameters(module)
    trainer.fit(module, loader(toy_batches(8, pad_per_row=2, length=6, rows=2)))
    assert total == trainable == 16 * 8 + 8 * 16 + 16
    assert tp.flops_per_token == 6 * total  # every parameter trains → full fine-tune formula
    tps = tp.last_metrics["tokens_per_sec"]
    assert tps > 0 and math.isfinite(tps)
    assert tp.last_metrics["mfu"] == pytest.approx(tps * 6 * total / 1e9, rel=1e-12)
    assert "tokens_per_sec" in trainer.logged_metrics and "mfu" in trainer.logged_metrics
