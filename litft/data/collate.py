"""Batch collation of unpacked rows: pad to the longest row in the batch (right padding); packed rows are
collated by :class:`litft.data.packing.PackedCollator`."""

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


