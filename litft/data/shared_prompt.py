"""Preference pairs with their prompt computed once: one row per pair (``data.share_prompt: true``).

:class:`litft.data.collate.PairCollator` lays a pair out as two rows, chosen and rejected, each with the whole prompt:
the prompt's tokens go through the model twice (four times with DPO's reference). Here a pair is ONE row::

    prompt[:S] | chosen[S:] | rejected[S:]        positions 0 .. len(chosen)-1, then S .. len(rejected)-1

``S`` is the length of the rows' common untrained beginning minus one token: each branch starts again from the
prompt's last common token, so the label shift inside a branch is the one of its own row (that token predicts the
reply's first token) and the rejected branch never reads the chosen reply. A 4-D mask lets a branch token attend
the shared prefix and the earlier tokens of its own branch only; with the restarted position ids every token sees
exactly the keys, at the same positions, that it sees in its own row, so the log-probabilities are those of the two
rows (float rounding apart). Pairs whose prompts tokenize differently (the tokenizer merged the text before the
reply differently) share what they have in common, possibly nothing: still exact.

``reply_segments`` (1: chosen branch, 2: rejected branch, 0: prefix and padding) tells the scorer
(:func:`litft.methods.logps.sequence_logps`) which reply a trained token belongs to, so it returns the ``(2B,)``
chosen-then-rejected sums of the two-row layout. The mask is ``(B, 1, T, T)``: for SDPA and eager attention only
(the data module refuses flash attention and sequence parallelism with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from litft.data.collate import REFERENCE_LOGPS
from litft.data.packing import attention_mask_4d
from litft.labels import IGNORE_INDEX

SEGMENTS = "reply_segments"
"""Batch key: per position, 1 = chosen branch, 2 = rejected branch, 0 = shared prefix or padding."""


def shared_length(chosen_ids: Sequence[int], chosen_labels: Sequence[int], rejected_ids: Sequence[int],
                  rejected_labels: Sequence[int]) -> int:
    """S: the common untrained beginning of the two rows, less one token (each branch restarts from it)."""
    n = 0
    for a, la, b, lb in zip(chosen_ids, chosen_labels, rejected_ids, rejected_labels):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    return max(n - 1, 0)


def pair_row(row: dict[str, Any]) -> dict[str, list[int]]:
    """One pair's row: ``input_ids``, ``labels``, ``position_ids`` and ``reply_segments`` (see the module)."""
    c_ids, c_lab = list(row["chosen_input_ids"]), list(row["chosen_labels"])
    r_ids, r_lab = list(row["rejected_input_ids"]), list(row["rejected_labels"])
    s = shared_length(c_ids, c_lab, r_ids, r_lab)
    return {
        "input_ids": c_ids + r_ids[s:],
        "labels": c_lab + r_lab[s:],
        "position_ids": list(range(len(c_ids))) + list(range(s, len(r_ids))),
        SEGMENTS: [0] * s + [1] * (len(c_ids) - s) + [2] * (len(r_ids) - s),
    }


def branch_mask(segments: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """``(B, 1, T, T)``: position i may attend j iff j <= i and j is in the shared prefix or in i's branch; a padding
    position attends itself only (no query without a key). ``dtype`` bool: True = may attend; float: additive."""
    t = segments.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    prefix = (segments == 0) & valid
    allowed = causal & (same | prefix[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device) & ~valid[:, :, None]
    return attention_mask_4d(allowed, dtype)


class SharedPromptCollator:
    """B pairs → a ``(B, T)`` batch of one row per pair (right-padded): ``input_ids``, ``labels``, ``position_ids``,
    ``reply_segments``, a 4-D ``attention_mask``, ``num_pairs``; and ``reference_logps`` ``(2B,)`` (chosen then
    rejected) when the rows carry precomputed values, like :class:`litft.data.collate.PairCollator`."""

    def __init__(self, pad_token_id: int, *, attn_implementation: str | None = None,
                 pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.mask_dtype = torch.float32 if attn_implementation == "eager" else torch.bool
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        built = [pair_row(r) for r in rows]
        width = max(len(b["input_ids"]) for b in built)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(built)
        batch = {
            "input_ids": torch.full((n, width), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((n, width), IGNORE_INDEX, dtype=torch.long),
            "position_ids": torch.zeros((n, width), dtype=torch.long),
            SEGMENTS: torch.zeros((n, width), dtype=torch.long),
        }
        valid = torch.zeros((n, width), dtype=torch.bool)
        for i, b in enumerate(built):
            k = len(b["input_ids"])
            for key in ("input_ids", "labels", "position_ids", SEGMENTS):
                batch[key][i, :k] = torch.as_tensor(b[key], dtype=torch.long)
            batch["position_ids"][i, k:] = torch.arange(width - k)  # padding: a sample of its own
            valid[i, :k] = True
        batch["attention_mask"] = branch_mask(batch[SEGMENTS], valid, self.mask_dtype)
        batch["num_pairs"] = torch.tensor(n, dtype=torch.long)
        if rows and REFERENCE_LOGPS in rows[0]:
            values = torch.stack([torch.as_tensor(r[REFERENCE_LOGPS]) for r in rows])
            batch[REFERENCE_LOGPS] = torch.cat([values[:, 0], values[:, 1]])
        return batch
