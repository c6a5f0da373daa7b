"""LitFTDataModule: the ``data:`` section of the config (registry → formats → template → rows → loaders)."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from litft.data.collate import PadCollator, count_targets
from litft.data.loader import ResumableBatchSampler, ResumableLoader
from litft.data.registry import resolve
from litft.data.tokenize import Stats, conversations, encode_all, mix
from litft.errors import LitFTError

log = logging.getLogger(__name__)


class _Rows:
    """A list of row dicts as a map-style dataset."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class LitFTDataModule(pl.LightningDataModule):
    """Supervised fine-tuning data: any registered dataset, rendered with a chat template, masked exactly.

    Args:
        dataset: Comma-separated dataset names from ``<dataset_dir>/dataset_info.json`` or file paths.
        dataset_dir: Folder holding ``dataset_info.json`` and the data files it names.
        tokenizer: Model name or path the tokenizer is loaded from (linked from ``model.name_or_path``).
        gguf_file: GGUF file inside ``tokenizer`` (linked from ``model.gguf_file``).
        trust_remote_code: Allow custom tokenizer code (linked from ``model.trust_remote_code``).
        template: Chat template: None = the tokenizer's own; or alpaca, chatml, qwen, llama2, llama3, phi, empty.
        cutoff_len: Maximum tokens per sample (and per packed row); longer samples are truncated (see docs).
        val_size: Validation share: a fraction (< 1) or an absolute number of records (>= 1); 0 = none.
        batch_size: Micro-batch size (rows per step per device).
        eval_batch_size: Validation batch size (None = batch_size).
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling (epoch e uses seed + e) and for the validation split.
        packing: Pack samples into rows of cutoff_len (no cross-sample attention).
        train_on_prompt: Train on prompt tokens too (labels = input_ids everywhere).
        mask_history: Train on the last assistant turn only.
        mix_strategy: How several datasets combine: concat, interleave_under or interleave_over.
        interleave_probs: Sampling probabilities per dataset when interleaving (None = uniform).
        max_samples: Use at most this many records per dataset (None = all).
        on_bad_record: error (stop on the first bad record) or skip (skip and count bad records).
        pad_to_multiple_of: Pad batch width to a multiple of this (None = longest in batch).
    """

    def __init__(
        self,
        dataset: str,
        dataset_dir: str = "data",
        tokenizer: str | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        template: str | None = None,
        cutoff_len: int = 1024,
        val_size: float = 0.0,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        packing: bool = False,
        train_on_prompt: bool = False,
        mask_history: bool = False,
        mix_strategy: str = "concat",
        interleave_probs: list[float] | None = None,
        max_samples: int | None = None,
        on_bad_record: str = "error",
        pad_to_multiple_of: int | None = None,
    ):
        super().__init__()
        if on_bad_record not in ("error", "skip"):
            raise LitFTError(f"data.on_bad_record: expected 'error' or 'skip', got '{on_bad_record}'")
        if cutoff_len < 2:
            raise LitFTError("data.cutoff_len must be at least 2")
        if val_size < 0:
            raise LitFTError("data.val_size must be >= 0")
        self.dataset, self.dataset_dir = dataset, dataset_dir
        self.tokenizer_name, self.gguf_file, self.trust_remote_code = tokenizer, gguf_file, trust_remote_code
        self.template, self.cutoff_len, self.val_size = template, cutoff_len, val_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.seed, self.packing = seed, packing
        self.train_on_prompt, self.mask_history = train_on_prompt, mask_history
        self.mix_strategy, self.interleave_probs, self.max_samples = mix_strategy, interleave_probs, max_samples
        self.on_bad_record, self.pad_to_multiple_of = on_bad_record, pad_to_multiple_of
        self._tokenizer = None
        self.train_rows: list[dict[str, Any]] | None = None
        self.val_rows: list[dict[str, Any]] | None = None
        self.stats: Stats | None = None

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.tokenizer_name:
                raise LitFTError("data.tokenizer is not set (the CLI links it from model.name_or_path)")
            from litft.model.loading import load_tokenizer

            self._tokenizer = load_tokenizer(
                self.tokenizer_name, gguf_file=self.gguf_file, trust_remote_code=self.trust_remote_code
            )
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    # ------------------------------------------------------------------ preparation
    def build(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Stats]:
        """Read, format, split, tokenize: (train rows, validation rows, statistics)."""
        stats = Stats()
        parts = []
        for entry in resolve(self.dataset, self.dataset_dir):
            convs = conversations(entry, on_bad_record=self.on_bad_record, stats=stats)
            if self.max_samples is not None:
                convs = convs[: self.max_samples]
            stats.per_dataset[entry.name] = stats.per_dataset.get(entry.name, 0) + len(convs)
            parts.append(convs)
        convs = mix(parts, strategy=self.mix_strategy, probs=self.interleave_probs, seed=self.seed)
        n_val = self._num_val(len(convs))
        val_convs: list = []
        if n_val:
            order = list(range(len(convs)))
            random.Random(self.seed).shuffle(order)
            val_idx = set(order[:n_val])
            val_convs = [c for i, c in enumerate(convs) if i in val_idx]
            convs = [c for i, c in enumerate(convs) if i not in val_idx]
        kw = dict(
            template=self.template,
            cutoff_len=self.cutoff_len,
            train_on_prompt=self.train_on_prompt,
            mask_history=self.mask_history,
        )
        train = encode_all(convs, self.tokenizer, stats=stats, **kw)
        val = encode_all(val_convs, self.tokenizer, stats=Stats(), **kw)
        if not train:
            raise LitFTError(f"data: no training samples left from '{self.dataset}' (all dropped or empty)")
        stats.rows = len(train)
        return train, val, stats

    def _num_val(self, n: int) -> int:
        if not self.val_size:
            return 0
        k = int(self.val_size) if self.val_size >= 1 else int(round(self.val_size * n))
        if k >= n:
            raise LitFTError(f"data.val_size={self.val_size} leaves no training records (of {n})")
        return max(k, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        self.train_rows, self.val_rows, self.stats = self.build()
        s = self.stats
        log.info(
            "data: %d records → %d samples (%d tokens, %d trained; %d truncated, %d dropped, %d skipped)",
            s.records, s.samples, s.tokens, s.trained_tokens, s.truncated, s.dropped, s.skipped,
        )

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _accumulate(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1

    def collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)

    def train_dataloader(self) -> ResumableLoader:
        if self.train_rows is None:
            self.setup("fit")
        rank, world = self._rank_world()
        sampler = ResumableBatchSampler(
            len(self.train_rows), self.batch_size, shuffle=True, seed=self.seed, rank=rank, world_size=world
        )
        if len(sampler) == 0:
            raise LitFTError(f"data: {len(self.train_rows)} training rows are too few for {world} ranks")
        return ResumableLoader(
            _Rows(self.train_rows),
            [count_targets(r["labels"]) for r in self.train_rows],
            self.collator(),
            sampler,
            accumulate_grad_batches=self._accumulate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self):
        if self.train_rows is None:
            self.setup("validate")
        if not self.val_rows:
            return []
        return DataLoader(
            _Rows(self.val_rows),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
        )
