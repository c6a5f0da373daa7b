"""Preference pairs and feedback examples → training rows, through the same template code as SFT.

Each reply is rendered after its prompt exactly as SFT renders the conversation ``prompt.turns + [reply]``
(:func:`litft.data.templates.encode_many`, the last assistant turn trained): the row's ids equal
``tokenizer.apply_chat_template(messages)`` and its labels are -100 everywhere but the reply and its end-of-turn
(``content<|im_end|>``, ``content<|eot_id|>``, a declarative template's ``end_of_turn``). The prompt of a row is
everything before its first trained token; chosen and rejected rows of a pair share it (their prompt ids are
equal whenever the tokenizer does not merge across the start of the reply: true of every tokenizer and template
in the tests; each row is exact either way).

Rows (one per pair / example)::

    preference  chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels,
                length (the longer row), num_targets (1: the loader's num_target_tokens counts pairs)
    feedback    input_ids, labels, label (bool: desirable), prompt_length (prompt tokens kept),
                length, num_targets (1: num_target_tokens counts examples)

Truncation (``cutoff_len`` bounds each row): with P prompt tokens and R tokens in the longer reply (from its first
trained token to the row's end), nothing is cut when P + R <= cutoff_len. Otherwise the split is LLaMA-Factory's
(``infer_seqlen``), the prompt cut first: when R < cutoff_len / 2 the replies stay whole and the prompt keeps
cutoff_len - R tokens; else when P < cutoff_len / 2 the prompt stays whole and the replies keep cutoff_len - P;
else the replies keep int(cutoff_len * R / (P + R)) and the prompt the rest. The prompt keeps its END (its last
turns and the generation prompt the replies follow; TRL's ``keep_end``; LLaMA-Factory keeps its start), so its
beginning (BOS, system prompt, first turns) is what goes; a reply keeps its start. Both rows of a pair are cut with
the same two lengths, so their prompts stay equal. Such a pair counts as *truncated*. A pair left with no trained
token in a row is *dropped*. A pair whose chosen and rejected rows are equal (equal replies, or replies that
differ only beyond the cut) is counted as *identical* and dropped: it has no preference to learn.
"""

from __future__ import annotations

from collections.abc import Sequence

from litft.data.conversation import Feedback, Preference
from litft.data.stats import Stats
from litft.data.templates import encode_many
from litft.labels import IGNORE_INDEX, count_targets


def budget(prompt_len: int, reply_len: int, cutoff_len: int) -> tuple[int, int]:
    """(prompt tokens kept, reply tokens kept) for a prompt and its longer reply (see the module docstring)."""
    if prompt_len + reply_len <= cutoff_len:
        return prompt_len, reply_len
    if reply_len * 2 < cutoff_len:
        keep_reply = reply_len
    elif prompt_len * 2 < cutoff_len:
        keep_reply = cutoff_len - prompt_len
    else:
        keep_reply = int(cutoff_len * reply_len / (prompt_len + reply_len))
    keep_reply = min(keep_reply, reply_len)
    return min(prompt_len, cutoff_len - keep_reply), keep_reply


def prompt_length(labels: Sequence[int]) -> int:
    """Tokens before the first trained one (all of them when nothing is trained)."""
    return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))


def _cut(ids: list[int], labels: list[int], p: int, keep_prompt: int, keep_reply: int) -> tuple[list[int], list[int]]:
    start = p - min(keep_prompt, p)
    return ids[start : p + keep_reply], labels[start : p + keep_reply]


def _encode(tokenizer, convs, template) -> list[tuple[list[int], list[int], int]]:
    """(ids, labels, prompt length) of each conversation, only its last assistant turn trained."""
    return [(ids, labels, prompt_length(labels)) for ids, labels in encode_many(tokenizer, convs, template=template, mask_history=True)]


def encode_pairs(
    pairs: Sequence[Preference], tokenizer, *, template: str | None, cutoff_len: int, stats: Stats | None = None
) -> list[dict]:
    """Preference rows (chosen and rejected, see the module docstring), counting pairs in ``stats``."""
    stats = stats if stats is not None else Stats(kind="preference")
    convs = [p.conversation(which) for p in pairs for which in ("chosen", "rejected")]
    encoded = _encode(tokenizer, convs, template)
    rows = []
    for k in range(len(pairs)):
        (c_ids, c_labels, pc), (r_ids, r_labels, pr) = encoded[2 * k], encoded[2 * k + 1]
        longest_prompt, longest_reply = max(pc, pr), max(len(c_ids) - pc, len(r_ids) - pr)
        keep_prompt, keep_reply = budget(longest_prompt, longest_reply, cutoff_len)
        truncated = (keep_prompt, keep_reply) != (longest_prompt, longest_reply)
        if truncated:
            c_ids, c_labels = _cut(c_ids, c_labels, pc, keep_prompt, keep_reply)
            r_ids, r_labels = _cut(r_ids, r_labels, pr, keep_prompt, keep_reply)
        if count_targets(c_labels) == 0 or count_targets(r_labels) == 0:
            stats.dropped += 1
            continue
        if c_ids == r_ids and c_labels == r_labels:
            stats.identical += 1
            continue
        stats.truncated += truncated
        stats.samples += 1
        stats.tokens += len(c_ids) + len(r_ids)
        stats.trained_tokens += sum(x != IGNORE_INDEX for x in c_labels) + sum(x != IGNORE_INDEX for x in r_labels)
        rows.append({
            "chosen_input_ids": c_ids, "chosen_labels": c_labels,
            "rejected_input_ids": r_ids, "rejected_labels": r_labels,
            "length": max(len(c_ids), len(r_ids)), "num_targets": 1,
        })
    return rows


def encode_feedback(
    examples: Sequence[Feedback], tokenizer, *, template: str | None, cutoff_len: int, stats: Stats | None = None
) -> list[dict]:
    """Feedback rows (see the module docstring), counting examples and desirable ones in ``stats``."""
    stats = stats if stats is not None else Stats(kind="feedback")
    encoded = _encode(tokenizer, [e.conversation() for e in examples], template)
    rows = []
    for example, (ids, labels, p) in zip(examples, encoded):
        keep_prompt, keep_reply = budget(p, len(ids) - p, cutoff_len)
        truncated = (keep_prompt, keep_reply) != (p, len(ids) - p)
        if truncated:
            ids, labels = _cut(ids, labels, p, keep_prompt, keep_reply)
        if count_targets(labels) == 0:
            stats.dropped += 1
            continue
        stats.truncated += truncated
        stats.samples += 1
        stats.desirable += bool(example.label)
        stats.tokens += len(ids)
        stats.trained_tokens += sum(x != IGNORE_INDEX for x in labels)
        rows.append({
            "input_ids": ids, "labels": labels, "label": bool(example.label), "prompt_length": min(keep_prompt, p),
            "length": len(ids), "num_targets": 1,
        })
    return rows
