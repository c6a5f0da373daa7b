"""Per-sequence log-probabilities of the trained positions (labels != -100, after the causal shift).

They come from the same chunked output head as the SFT loss (:func:`litft.model.loss.token_losses_from_hidden`): the
head runs on trained positions only, chunk by chunk, so memory does not grow with vocabulary x sequence, and under
ZeRO-3 every rank makes the same head calls. A model whose logits are not ``head(hidden)`` (checked once by the
module) is scored from its own logits instead.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

from litft.data.shared_prompt import SEGMENTS
from litft.model import loss as lm_loss


class Scorer(Protocol):
    """``(input_ids, attention_mask, labels) -> (log-probability sum (R,), trained positions (R,))`` of R rows; with
    ``position_ids`` and ``segments`` (a one-row-per-pair batch, :func:`layout`) per reply, ``(2B,)``."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 position_ids: Optional[torch.Tensor] = None,
                 segments: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def row_sums(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sums of per-token values ``(n,)`` laid out row-major by ``mask`` ``(R, T)``, and per-row counts."""
    rows = mask.nonzero(as_tuple=True)[0]  # the row of each masked position, row-major like boolean indexing
    sums = torch.zeros(mask.shape[0], dtype=tokens.dtype, device=tokens.device).index_add(0, rows, tokens)
    return sums, mask.sum(-1)


def reply_sums(tokens: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts per reply of one-row-per-pair batches (litft.data.shared_prompt): ``segments`` ``(B, T-1)``
    (1 chosen, 2 rejected, aligned with ``mask``) → ``(2B,)``, the B chosen replies then the B rejected ones (the
    two-row layout's order)."""
    b = mask.shape[0]
    rows = mask.nonzero(as_tuple=True)[0]
    index = rows + (segments[mask] - 1) * b
    sums = torch.zeros(2 * b, dtype=tokens.dtype, device=tokens.device).index_add(0, index, tokens)
    counts = torch.zeros(2 * b, dtype=torch.long, device=tokens.device).index_add(0, index, torch.ones_like(index))
    return sums, counts


def layout(batch: dict) -> dict:
    """The scorer's keyword arguments a batch carries beyond (ids, mask, labels): ``position_ids`` and
    ``segments`` of one-row-per-pair batches."""
    return {name: batch[key] for name, key in (("position_ids", "position_ids"), ("segments", SEGMENTS))
            if key in batch}


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    decoder: Optional[torch.nn.Module] = None,
    head: Optional[torch.nn.Module] = None,
    chunk_size: Optional[int] = None,
    symmetric: bool = False,
    position_ids: Optional[torch.Tensor] = None,
    segments: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) over each row's trained positions (R,), their number (R,)).

    With ``decoder`` and ``head`` the head runs on the decoder's last hidden states of trained positions only;
    without, ``model``'s own logits are used. symmetric: the head may be sharded (ZeRO-3). ``segments``: a
    one-row-per-pair batch (litft.data.shared_prompt; with its ``position_ids`` and 4-D mask): the sums are per
    reply, ``(2B,)`` chosen then rejected.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    if decoder is not None and head is not None:
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
        ce, mask = lm_loss.token_losses_from_hidden(hidden, head, labels, chunk_size=chunk_size, symmetric=symmetric)
    else:
        ce, mask = lm_loss.token_losses_from_logits(model(**inputs, use_cache=False).logits, labels)
    sums, counts = row_sums(ce, mask) if segments is None else reply_sums(ce, mask, segments[..., 1:])
    return -sums, counts


def scorer(model: torch.nn.Module, **kwargs) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`sequence_logps` bound to a model (and, optionally, its decoder and head)."""
    return lambda input_ids, attention_mask, labels, **layout_kw: sequence_logps(model, input_ids, attention_mask,
                                                                                 labels, **kwargs, **layout_kw)
