"""Batch collation of unpacked rows: pad to the longest row in the batch (right padding); packed rows are
collated by :class:`litft.data.packing.PackedCollator`. Preference pairs: :class:`PairCollator` (chosen then
rejected rows in one ``(2B, L)`` batch); feedback examples: :class:`FeedbackCollator`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from litft.labels import IGNORE_INDEX


class PadCollator:
    """Pads ``input_ids`` (pad id), ``labels`` (-100) and ``attention_mask`` (0) to the longest row (or to a
    multiple of ``pad_to_multiple_of``)."""

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, lengths: Sequence[int]) -> int:
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        return width

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = self._width(lengths)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = lengths[i]
            input_ids[i, :k] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(r["labels"], dtype=torch.long)
            attention_mask[i, :k] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}




class PairCollator:
    """Preference batches for one forward of chosen and rejected: B pairs → a ``(2B, L)`` batch.

    Rows ``0 .. B-1`` are the chosen rows of the pairs in order, rows ``B .. 2B-1`` their rejected rows (pair ``i``
    is rows ``i`` and ``B + i``), all right-padded to one width like :class:`PadCollator`: ``input_ids``,
    ``labels`` (-100 on prompt and padding), ``attention_mask``; ``num_pairs`` (a 0-d long tensor, B) says where
    the halves split.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        self.pad = PadCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        flat = [{"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]} for side in ("chosen", "rejected") for r in rows]
        batch = self.pad(flat)
        batch["num_pairs"] = torch.tensor(len(rows), dtype=torch.long)
        if rows and REFERENCE_LOGPS in rows[0]:  # precomputed (ReferenceRows): row order like input_ids
            values = torch.stack([torch.as_tensor(r[REFERENCE_LOGPS]) for r in rows])  # (B, 2): chosen, rejected
            batch[REFERENCE_LOGPS] = torch.cat([values[:, 0], values[:, 1]])
        return batch


REFERENCE_LOGPS = "reference_logps"
"""A row's (chosen, rejected) reference log-probabilities, and the batch's ``(2B,)`` in row order (chosen then
rejected), when they were precomputed (litft.methods.precompute)."""


class ReferenceRows:
    """Training rows with their precomputed reference log-probabilities: row ``i`` gains ``reference_logps`` =
    ``table[i]`` once :attr:`table` is set (``(rows, 2)``); before that, the rows as they are."""

    def __init__(self, rows):
        self.rows = rows
        self.table: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _with(self, i: int, row: dict) -> dict:
        return row if self.table is None else {**row, REFERENCE_LOGPS: self.table[i]}

    def __getitem__(self, i: int) -> dict:
        return self._with(i, self.rows[i])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        many = getattr(self.rows, "__getitems__", None)
        rows = many(indices) if many is not None else [self.rows[i] for i in indices]
        return [self._with(i, r) for i, r in zip(indices, rows)]


class FeedbackCollator:
    """Feedback (KTO) batches: B labelled examples → ``input_ids``, ``labels``, ``attention_mask`` ``(B, L)`` and
    ``label`` ``(B,)`` (bool: desirable), plus, with ``kl``, the mismatched rows KTO estimates its KL term from:
    ``kl_input_ids``, ``kl_labels``, ``kl_attention_mask`` ``(B, L')``, row ``i`` = the prompt of example ``i``
    followed by the reply of example ``i - 1`` (``B - 1`` for the first; TRL's and LLaMA-Factory's pairing, within the
    micro-batch: with B = 1 it is the example itself), its end cut to ``max_length``. They are separate tensors so the
    model side can run them without gradients."""

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None, kl: bool = True,
                 max_length: int | None = None):
        self.pad = PadCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
        self.kl, self.max_length = kl, max_length

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(rows)
        batch["label"] = torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool)
        if self.kl:
            kl_rows = []
            for i, r in enumerate(rows):
                other = rows[i - 1]
                p, q = int(r["prompt_length"]), int(other["prompt_length"])
                ids = list(r["input_ids"][:p]) + list(other["input_ids"][q:])
                labels = [IGNORE_INDEX] * p + list(other["labels"][q:])
                if self.max_length is not None:
                    ids, labels = ids[: self.max_length], labels[: self.max_length]
                kl_rows.append({"input_ids": ids, "labels": labels})
            kl = self.pad(kl_rows)
            batch.update({f"kl_{k}": v for k, v in kl.items()})
        return batch
