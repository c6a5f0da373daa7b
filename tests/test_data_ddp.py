"""Two real DDP processes (gloo, CPU): the dataset is tokenized once, ranks train on disjoint shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import write_alpaca

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning.pytorch as pl
    import torch
    from litft.data.datamodule import LitFTDataModule

    out = sys.argv[1]
    original = LitFTDataModule.build

    def build(self, workdir):
        with open(os.path.join(out, "builds.txt"), "a") as f:
            f.write(f"{self.trainer.global_rank}\\n")
        return original(self, workdir)

    LitFTDataModule.build = build

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.rows = []

        def training_step(self, batch, batch_idx):
            self.rows += [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]
            return self.w.sum() ** 2

        def on_train_end(self):
            with open(os.path.join(out, f"rank{self.global_rank}.json"), "w") as f:
                json.dump(self.rows, f)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = LitFTDataModule(dataset=sys.argv[2], tokenizer=sys.argv[3], batch_size=2, cutoff_len=64)
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Recorder(), datamodule=dm)
    """
)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_prepares_once_and_shards(tmp_path, tiny_qwen2):
    data = write_alpaca(tmp_path / "a.json", 10)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "LITFT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(data), tiny_qwen2], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "builds.txt").read_text().split() == ["0"]  # tokenized on rank 0 only
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == len(r1) == 5
    assert not {tuple(x) for x in r0} & {tuple(x) for x in r1}  # disjoint shards covering all 10 records
