"""A CPU reference of flash attention's two entry points, packaged as a local kernel of the ``kernels`` library.

Loaded as ``attn_implementation="litft-tests/cpu-flash-attn"`` with ``LOCAL_KERNELS`` pointing that repo id at
this folder, it runs through transformers' whole flash-attention path, exactly as a hub flash kernel does
(``kernels-community/flash-attn2``): ``load_and_register_attn_kernel`` registers transformers'
``flash_attention_forward`` and flash-attention mask for it, and ``_flash_attention_forward`` decides between
these two functions -- ``flash_attn_varlen_func`` with ``cu_seqlens`` it derived (from a 2-D padding mask, from
``cu_seq_lens_*`` kwargs, or from ``position_ids`` of a one-row batch) or ``flash_attn_func``, plain causal
attention over whole rows. The functions see only what a GPU kernel sees: q/k/v and ``cu_seqlens``; they take no
mask, so a batch whose boundaries transformers does not pass on is computed as the GPU would compute it.

The signatures follow flash-attn 2 (transformers inspects parameter names to decide which options to pass);
options this reference does not implement raise rather than being ignored. fp32 is accepted (the GPU kernels
take fp16/bf16 only): the tests compare fp32 logits.
"""

from __future__ import annotations

import math

import torch

calls = {"varlen": 0, "dense": 0}
"""Calls of each entry point (one per attention layer and forward pass), for tests to see which path ran."""


def _attend(q, k, v, *, causal, scale, softcap):
    """q (Sq, H, D), k/v (Sk, Hk, D) → (Sq, H, D); heads grouped as flash attention groups them (GQA/MQA: query
    head h reads key/value head h // (H // Hk)); causal masks are aligned to the bottom-right corner."""
    sq, h, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    if h % hk:
        raise ValueError(f"{h} query heads are not a multiple of {hk} key/value heads")
    k = k.repeat_interleave(h // hk, dim=1)
    v = v.repeat_interleave(h // hk, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if causal:
        allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query row with nothing to attend gives 0 (as FA does)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


def _check(dropout_p, window_size):
    if dropout_p:
        raise NotImplementedError("cpu-flash-attn reference: dropout_p > 0")
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError("cpu-flash-attn reference: sliding windows")


def _cu(cu, total, name):
    if cu.dtype != torch.int32 or cu.dim() != 1 or int(cu[0]) != 0 or int(cu[-1]) != total or (cu.diff() < 0).any():
        raise ValueError(f"{name} must be int32 cumulative lengths from 0 to {total}, got {cu.tolist()} ({cu.dtype})")
    return cu.tolist()


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False):
    """q (total_q, H, D), k/v (total_k, Hk, D): sequence i is rows cu_seqlens[i]:cu_seqlens[i + 1]."""
    _check(dropout_p, window_size)
    calls["varlen"] += 1
    cq, ck = _cu(cu_seqlens_q, q.shape[0], "cu_seqlens_q"), _cu(cu_seqlens_k, k.shape[0], "cu_seqlens_k")
    if len(cq) != len(ck):
        raise ValueError("cu_seqlens_q and cu_seqlens_k count different numbers of sequences")
    lq = [b - a for a, b in zip(cq, cq[1:])]
    lk = [b - a for a, b in zip(ck, ck[1:])]
    if max(lq) > int(max_seqlen_q) or max(lk) > int(max_seqlen_k):  # the GPU kernel would read out of bounds
        raise ValueError(f"max_seqlen_q/k {int(max_seqlen_q)}/{int(max_seqlen_k)} below the longest sequence")
    scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for (a, b), (c, e) in zip(zip(cq, cq[1:]), zip(ck, ck[1:])):
        out[a:b] = _attend(q[a:b], k[c:e], v[c:e], causal=causal, scale=scale, softcap=softcap)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    deterministic=False):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D): every row is one sequence."""
    _check(dropout_p, window_size)
    calls["dense"] += 1
    scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(q.shape[-1])
    rows = [_attend(q[i], k[i], v[i], causal=causal, scale=scale, softcap=softcap) for i in range(q.shape[0])]
    return torch.stack(rows)
