"""Sequence parallelism (DeepSpeed Ulysses): each micro-batch's sequence split over the N ranks of a group.

Key: ``LitFTDeepSpeedStrategy(sequence_parallel_size=N)`` (ZeRO-2/3). The glue around DeepSpeed's
``deepspeed.runtime.sequence_parallel.ulysses_sp``:

- groups: ``UlyssesSPAttentionHF.register_with_transformers`` makes the sequence-parallel groups (consecutive
  global ranks ``[g*N, (g+1)*N)``) and replaces the model's attention function (sdpa or flash attention) with
  Ulysses' all-to-all wrapper (heads scattered, sequence gathered) in training; evaluation runs plain attention
  (``disable_in_eval``), so validation stays ordinary data parallelism over all ranks.
- data: the training loader runs with rank ``rank // N`` of ``world // N`` data-parallel ranks
  (:func:`data_rank_world`), so every rank of a group gets the same rows; :func:`shard` then pads the micro-batch
  (sequence to a multiple of N, rows to the micro-batch size Ulysses was built for: ignored rows), shifts the labels
  over the WHOLE sequence (a shard's last token predicts the next shard's first) and keeps this rank's slice, with
  global ``position_ids``. The loss is told the labels are already shifted (``shift_labels``).
- packing (``data.packing: true``): samples stay apart after the split because Ulysses all-gathers ``position_ids``
  over the group before calling the attention, so it sees the whole sequence's positions, restarting at 0 for
  every sample (:func:`shard` keeps the batch's own; a sample's first label is -100, so the labels shifted over
  the whole sequence never train one sample on the next). Flash attention (any implementation
  :func:`litft.data.packing.is_varlen` accepts): the collator's single row ``(1, T)`` is split, Ulysses is built
  for ONE row, and transformers turns the gathered positions into the varlen kernel's sample boundaries. SDPA:
  Ulysses discards every mask, so :func:`masking_samples` wraps sdpa and rebuilds the block-diagonal causal mask
  from the gathered positions, a (rows, 1, T, T) boolean tensor: O(T^2) memory, use flash attention for long rows.
- scale: DeepSpeed is not given the groups: it averages gradients over all ``world`` ranks as for plain data
  parallelism, and :func:`litft.strategies.scale.loss_multiplier` undoes that as usual. The gradient of the
  all-to-all sends each token's gradient back to the rank that owns it, so the sum over ranks is the gradient of
  the whole sequences. The step's trained-token count (``num_target_tokens``, whole rows) is contributed by the
  first rank of each group only, so the all-reduced count is the number of trained tokens in the global batch.

Not supported (one-line errors): preference/feedback data, DDP and ZeRO-0/1, eager attention.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from litft.data.packing import block_causal_mask, is_varlen
from litft.errors import LitFTError
from litft.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")
"""Attention implementations Ulysses can wrap (eager builds an O(T^2) mask that it discards)."""

SHIFTED_LABELS = "shift_labels"
"""Batch key of labels already shifted by one position (position t holds the token t+1): the loss does not shift."""


def size(strategy: Any) -> int:
    """The strategy's sequence-parallel size (1: none)."""
    return int(getattr(strategy, "sequence_parallel_size", 1) or 1)


def check_size(n: int, stage: int) -> None:
    """At strategy construction: N >= 1, and only ZeRO stage 2 or 3."""
    if n < 1:
        raise LitFTError(f"strategy sequence_parallel_size={n}: must be >= 1")
    if n > 1 and stage not in (2, 3):
        raise LitFTError(f"strategy sequence_parallel_size={n} needs DeepSpeed ZeRO stage 2 or 3, not stage {stage}")


def data_rank_world(strategy: Any, rank: int, world: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel world size) for the training sampler: a sequence-parallel group is one
    data-parallel rank, so its ranks get the same rows."""
    n = size(strategy)
    return (rank // n, world // n) if n > 1 else (rank, world)


def attach(trainer: Any, base_model: torch.nn.Module, attn_implementation: str) -> None:
    """Check the run and register Ulysses attention with transformers (no-op without sequence parallelism)."""
    n = size(trainer.strategy)
    if n == 1:
        return
    key = f"strategy sequence_parallel_size={n}"
    world = int(trainer.world_size)
    if world % n:
        raise LitFTError(f"{key} does not divide the {world} ranks (trainer.devices x trainer.num_nodes)")
    varlen = is_varlen(attn_implementation)
    if attn_implementation != "sdpa" and not varlen:
        raise LitFTError(f"{key}: model.attn_implementation={attn_implementation} cannot be split by Ulysses; use "
                         f"one of {', '.join(ATTENTION)} (or a hub flash-attention kernel)")
    cfg = base_model.config.get_text_config()
    heads, kv_heads = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    if heads % n:
        raise LitFTError(f"{key} does not divide the model's {heads} attention heads")
    if kv_heads % n and n % kv_heads:
        raise LitFTError(f"{key}: the model's {kv_heads} key/value heads are neither divisible by {n} nor divide it")
    data = getattr(trainer, "datamodule", None)
    if getattr(data, "kind", "sft") != "sft":
        raise LitFTError(f"{key}: only SFT data is supported with sequence parallelism, not {data.kind}")
    packing = bool(getattr(data, "packing", False))
    # packed rows under flash attention come as ONE row (the micro-batch's rows end to end, litft.data.packing):
    # Ulysses must be built for one row, or row padding would make transformers skip the varlen path
    micro_batch = 1 if packing and varlen else int(getattr(data, "batch_size", 1) or 1)
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF  # optional: the deepspeed extra
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # the mapping models and Ulysses read

    if packing and not varlen:  # sdpa: Ulysses discards the block-diagonal mask; rebuild it after the all-to-all
        ALL_ATTENTION_FUNCTIONS[attn_implementation] = masking_samples(ALL_ATTENTION_FUNCTIONS[attn_implementation])
    trainer.strategy.sequence_parallel_state = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=base_model, core_attn_implementation=attn_implementation, sequence_parallel_size=n,
        micro_batch_size=micro_batch, seq_length_is_variable=True, disable_in_eval=True,
    )
    trainer.strategy.sequence_parallel_micro_batch = micro_batch
    log.info("sequence parallelism: %d ranks per sequence (Ulysses, %s%s), %d data-parallel groups", n,
             attn_implementation, ", packed samples" if packing else "", world // n)


def masking_samples(attention):
    """``attention`` (transformers' sdpa) that, when called with no mask, masks block-diagonally by the samples of
    ``position_ids`` (a sample starts where they restart at 0; :func:`litft.data.packing.block_causal_mask`).
    Ulysses calls it with no mask and with the WHOLE sequence's ``position_ids``, gathered from the group's ranks
    after the all-to-all. One (rows, 1, T, T) boolean mask, kept for the layers of a forward (same positions)."""
    kept: list = []  # [position_ids, mask] of the last call

    def attend(module, query, key, value, attention_mask, *args, **kwargs):
        positions = kwargs.get("position_ids")
        if attention_mask is None and positions is not None and positions.shape[-1] == query.shape[-2] > 1:
            if not (kept and kept[0].shape == positions.shape and torch.equal(kept[0], positions)):
                kept[:] = [positions.clone(), block_causal_mask(positions, torch.bool)]
            attention_mask = kept[1]
        return attention(module, query, key, value, attention_mask, *args, **kwargs)

    return attend


def shard(strategy: Any, batch: dict) -> dict:
    """This rank's slice of a training micro-batch (the batch itself without sequence parallelism)."""
    n = size(strategy)
    if n == 1:
        return batch
    mpu = getattr(strategy, "sequence_parallel_state", None)
    if mpu is None:
        raise LitFTError("sequence parallelism: the model was not set up for it (LitFTModule.configure_model)")
    rank = mpu.get_sequence_parallel_rank()
    input_ids, labels = batch["input_ids"], batch["labels"]
    rows, length = input_ids.shape
    micro_batch = int(strategy.sequence_parallel_micro_batch)
    if rows > micro_batch:
        raise LitFTError(f"sequence parallelism: a micro-batch of {rows} rows exceeds data.batch_size={micro_batch}")
    width = -(-length // n) * n
    pad_rows, pad_cols = micro_batch - rows, width - length
    # Ignored padding (rows to the micro-batch Ulysses was built for, tokens to a multiple of N) on the right:
    # attention is causal (within each sample when packed), which right padding never changes for the trained tokens.
    input_ids = torch.nn.functional.pad(input_ids, (0, pad_cols, 0, pad_rows), value=0)
    labels = torch.nn.functional.pad(labels, (0, pad_cols + 1, 0, pad_rows), value=IGNORE_INDEX)
    shifted = labels[:, 1:]  # shifted over the whole sequence, before the split
    # the batch's positions (packed rows: restarting at 0 for every sample) or 0..L-1; padding columns continue the
    # row's last sample, padding rows count from 0
    positions = torch.arange(width, device=input_ids.device).repeat(micro_batch, 1)
    if "position_ids" in batch:
        given = batch["position_ids"]
        positions[:rows, :length] = given
        positions[:rows, length:] = given[:, -1:] + 1 + torch.arange(pad_cols, device=given.device)
    part = slice(rank * (width // n), (rank + 1) * (width // n))
    out = {"input_ids": input_ids[:, part].contiguous(), "position_ids": positions[:, part].contiguous(),
           SHIFTED_LABELS: shifted[:, part].contiguous()}
    if "num_target_tokens" in batch:
        # whole rows' count: contributed once per group, so the all-reduced step count is the global batch's
        out["num_target_tokens"] = batch["num_target_tokens"] * (1 if rank == 0 else 0)
    return out


__all__ = ["ATTENTION", "SHIFTED_LABELS", "attach", "check_size", "data_rank_world", "masking_samples", "shard", "size"]
