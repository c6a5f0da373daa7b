"""Packing: several samples per row of ``cutoff_len`` tokens, with no attention across samples.

* Rows are filled by best-fit decreasing (longest sample first, into the fullest row it still fits).
* Each sample's ``position_ids`` restart at 0, and its first label is -100, so no sample is trained to
  predict its first token from the previous sample's last one.
* Attention, varlen (every implementation transformers routes to its flash-attention path: see
  :func:`is_varlen`): the collator flattens the micro-batch into ONE row ``(1, total_tokens)`` --
  ``input_ids``, ``labels`` and ``position_ids`` concatenated, no padding, no ``attention_mask``. transformers
  reads the sample boundaries from ``position_ids`` only for a batch of one row (``_is_packed_sequence`` is
  False for any batch size but 1: a ``(B, L)`` batch of packed rows would run plain causal attention across
  every sample of a row); for one row it turns the restarts at 0 into ``cu_seqlens`` and calls the varlen
  kernel. Flattening loses nothing: each row starts with a sample (label -100, position 0), so the loss's
  label shift and ``num_target_tokens`` (``labels[:, 1:] != -100``) count exactly what they counted per row.
  (Sending ``cu_seq_lens_q/k`` + ``max_length_q/k`` instead would spare transformers deriving them in every
  layer, but the model wrapper passes only ``input_ids``/``attention_mask``/``position_ids`` to the model.)
* Attention, elsewhere: the collator builds a 4-D block-diagonal causal mask, one block per sample: boolean
  (``True`` = may attend, what transformers itself gives SDPA) for ``sdpa`` and other implementations, additive
  float32 (``0`` / ``finfo.min``) for ``eager``, which adds the mask to the scores. We do not rely on
  transformers' detection of packed sequences from ``position_ids`` on those backends: it is skipped whenever
  a KV cache exists, and models create one in training unless ``use_cache=False``, which would silently let
  samples attend to each other.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import torch

try:
    from transformers.utils.generic import is_flash_attention_requested
except ImportError:  # a transformers without it: is_varlen applies the same rule itself
    is_flash_attention_requested = None

from litft.labels import IGNORE_INDEX


def is_varlen(attn_implementation: str | None) -> bool:
    """Whether transformers runs ``attn_implementation`` through its flash-attention path, which takes sample
    boundaries from ``position_ids`` / ``cu_seq_lens`` only (it cannot use a 4-D mask): transformers' own rule
    (``is_flash_attention_requested``: "flash" in the name), which covers ``flash_attention_2/3/4`` and hub
    kernels such as ``kernels-community/flash-attn2`` or ``kernels-community/vllm-flash-attn3``."""
    if is_flash_attention_requested is None:
        return attn_implementation is not None and "flash" in attn_implementation
    return is_flash_attention_requested(requested_attention_implementation=attn_implementation)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity (every length must be <= capacity)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample of {n} tokens exceeds the row capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def join(samples: Iterable[tuple[Sequence[int], Sequence[int]]]) -> dict[str, list[int]]:
    """One packed row from ``(input_ids, labels)`` samples: concatenated, each sample's first label ignored
    (nothing of that sample precedes it), ``position_ids`` restarting at 0 for every sample."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for sample_ids, sample_labels in samples:
        ids += sample_ids
        labels += [IGNORE_INDEX] + list(sample_labels[1:])
        pos += list(range(len(sample_ids)))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def pack(rows: Sequence[dict[str, list[int]]], capacity: int) -> tuple[list[dict[str, list[int]]], float]:
    """Packed rows ({input_ids, labels, position_ids}) and the packing efficiency (real tokens / capacity)."""
    bins = best_fit_decreasing([len(r["input_ids"]) for r in rows], capacity)
    packed = [join((rows[i]["input_ids"], rows[i]["labels"]) for i in b) for b in bins]
    total = sum(len(r["input_ids"]) for r in packed)
    efficiency = total / (len(bins) * capacity) if bins else 0.0
    return packed, efficiency


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 1, L, L) mask: position i may attend j iff j <= i and both are in the same sample (samples
    start where position_ids == 0). ``dtype=torch.bool``: True = may attend; a float dtype: additive."""
    seq = (position_ids == 0).cumsum(-1)  # sample index per position
    same = seq[:, :, None] == seq[:, None, :]
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    return attention_mask_4d(same & causal, dtype)


def attention_mask_4d(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, 1, L, L)`` from ``allowed`` ``(batch, L, L)``: bool (True = may attend) or additive (0 / dtype min)."""
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class PackedCollator:
    """Packed rows → one batch: for a varlen implementation (:func:`is_varlen`) ONE flattened row with
    ``position_ids`` and no mask; otherwise the rows stacked (padded to the longest; the padding is a sample of its
    own) with a 4-D block-diagonal mask."""

    def __init__(self, pad_token_id: int, *, attn_implementation: str | None = None):
        self.pad_token_id = pad_token_id
        self.varlen = is_varlen(attn_implementation)
        self.mask_dtype = torch.float32 if attn_implementation == "eager" else torch.bool

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.varlen:
            return flatten(rows)
        width = max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            input_ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            position_ids[i, :k] = torch.as_tensor(r["position_ids"])
            position_ids[i, k:] = torch.arange(width - k)
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        batch["attention_mask"] = block_causal_mask(position_ids, self.mask_dtype)
        return batch


def flatten(rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Packed rows concatenated into one row ``(1, total_tokens)``: the batch varlen attention reads as separate
    sequences (every sample restarts ``position_ids`` at 0 and starts with label -100, so does every row)."""
    for r in rows:
        if r["position_ids"][0] != 0 or r["labels"][0] != IGNORE_INDEX:
            raise ValueError("a packed row must start a sample: position 0 and label -100")
    return {key: torch.cat([torch.as_tensor(r[key], dtype=torch.long) for r in rows])[None]
            for key in ("input_ids", "labels", "position_ids")}
