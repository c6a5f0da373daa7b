"""Conversations → training rows of at most ``cutoff_len`` tokens: encode (:mod:`litft.data.templates`), then
truncate or chunk, counting what happened in :class:`~litft.data.stats.Stats`.

Truncation policy (``cutoff_len``): a plain-text document (continued pre-training) longer than ``cutoff_len``
is split into consecutive chunks of ``cutoff_len`` tokens, all kept. A conversation longer than ``cutoff_len`` keeps its first ``cutoff_len`` tokens
when at least one trained token remains among them (counted as *truncated*); when the prompt alone fills
``cutoff_len`` nothing would be trained, so the sample is dropped (counted as *dropped*, never cut to a
target-less row). Samples with no trained token at all are dropped too.
"""

from __future__ import annotations

from collections.abc import Iterable

from litft.data.conversation import Conversation
from litft.data.stats import Stats
from litft.data.templates import encode_many
from litft.labels import IGNORE_INDEX, count_targets


def encode_all(
    convs: Iterable[Conversation],
    tokenizer,
    *,
    template: str | None,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    stats: Stats | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize and truncate; rows are {input_ids, labels}."""
    stats = stats if stats is not None else Stats()
    rows = []
    convs = list(convs)
    encoded = encode_many(tokenizer, convs, template=template, train_on_prompt=train_on_prompt, mask_history=mask_history)
    for conv, (ids, labels) in zip(convs, encoded):
        if conv.text is not None and len(ids) > cutoff_len:
            stats.chunked += 1
            for k in range(0, len(ids), cutoff_len):
                piece = ids[k : k + cutoff_len]
                if len(piece) < 2:
                    continue
                rows.append({"input_ids": piece, "labels": list(piece)})
                stats.samples += 1
                stats.tokens += len(piece)
                stats.trained_tokens += len(piece)
            continue
        if len(ids) > cutoff_len:
            ids, labels = ids[:cutoff_len], labels[:cutoff_len]
            if count_targets(labels) == 0:
                stats.dropped += 1
                continue
            stats.truncated += 1
        elif count_targets(labels) == 0:
            stats.dropped += 1
            continue
        rows.append({"input_ids": ids, "labels": labels})
        stats.samples += 1
        stats.tokens += len(ids)
        stats.trained_tokens += len(labels) - labels.count(IGNORE_INDEX)
    return rows

