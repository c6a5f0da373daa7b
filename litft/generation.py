"""Batched, left-padded generation from prompt ids: the one helper behind generate, chat, predict, evaluate and the
probe callback.

Stop strings (``--stop``): generation of a row stops once its text contains one (transformers' ``stop_strings``),
and the returned text is cut before the first occurrence, so e.g. ``### End`` and whatever follows never reach the
predictions or the scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` up to (not including) the earliest stop string, stripped."""
    cut = len(text)
    for s in stop or ():
        if s:
            pos = text.find(s)
            if 0 <= pos < cut:
                cut = pos
    return text[:cut].strip()


def eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (e.g. ``<|im_end|>`` and ``<|endoftext|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if extra is not None:
        ids += extra if isinstance(extra, list) else [extra]
    return list(dict.fromkeys(ids))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    stop: Sequence[str] | None = None,
    streamer=None,
) -> list[str]:
    """A completion for each prompt (token ids): greedy when ``temperature == 0``, batches left-padded, decoded
    without special tokens and cut at the first stop string."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_ids(model, tokenizer)
    kwargs: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None, use_cache=True)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    stop = [s for s in (stop or []) if s]
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer, **kwargs)
        outputs.extend(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop) for row in out[:, width:])
    return outputs
