"""A tiny LightningModule + loaders with the litft batch layout, for callback tests (no transformers)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader


class ToyModule(pl.LightningModule):
    """Embedding + linear LM over token ids; logs ``train/loss`` / ``val/loss`` like LitFTModule."""

    def __init__(self, vocab: int = 16, lr: float = 0.5, nan_at_step: int | None = None):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)
        self.lr, self.nan_at_step = lr, nan_at_step

    def _loss(self, batch):
        logits = self.head(self.emb(batch["input_ids"][:, :-1]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        if self.nan_at_step is not None and self.global_step >= self.nan_at_step:
            loss = loss * float("nan")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def toy_batches(n: int = 8, pad_per_row: int = 2, length: int = 6, rows: int = 2) -> list[dict]:
    """Batches of ``rows`` sequences 0,1,2,… (learnable), each right-padded with ``pad_per_row`` zeros."""
    out = []
    for i in range(n):
        ids = torch.stack([(torch.arange(length) + i + r) % 15 + 1 for r in range(rows)])
        mask = torch.ones_like(ids)
        if pad_per_row:
            ids[:, -pad_per_row:] = 0
            mask[:, -pad_per_row:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)


class StatefulLoader:
    """Yields the batches in order; ``state_dict`` = batches handed out so far (Lightning prefetches one)."""

    def __init__(self, batches: list[dict]):
        self.batches, self.consumed = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start, self.consumed = (self.consumed, self.consumed) if self.consumed < len(self.batches) else (0, 0)
        for k in range(start, len(self.batches)):
            self.consumed = k + 1
            yield self.batches[k]
        self.consumed = 0

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = state["consumed"]


class DropoutToy(ToyModule):
    """ToyModule with dropout, so the RNG stream matters for the losses; records each step's loss."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.drop = torch.nn.Dropout(0.3)
        self.step_losses: list[tuple[int, float]] = []

    def _loss(self, batch):
        logits = self.head(self.drop(self.emb(batch["input_ids"][:, :-1])))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.step_losses.append((self.global_step, loss.item()))
        return loss
