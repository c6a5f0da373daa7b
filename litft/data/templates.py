"""Chat templates and the exact tokenization of a conversation into ``input_ids`` and ``labels``.

By default the tokenizer's own chat template renders the conversation. ``data.template`` may name a built-in, a
Jinja template or a declarative one (:mod:`litft.data.template_spec`); all become one Jinja chat template,
rendered the same way, so there is one code path.

Exactness: the conversation is rendered to one string and tokenized once (``add_special_tokens=False``,
with offsets), which is what ``tokenizer.apply_chat_template(messages, tokenize=True)`` does, so the ids are
identical. Trained character spans are found by rendering the prefix before each assistant turn with the
generation prompt: the span runs from the assistant content to the end of the first end-of-turn token
after it: the declarative template's ``end_of_turn`` text when it has one (e.g. ``<|im_end|>\n``, ``</s>\n\n``,
``\n### End``), else the first special token (``<|im_end|>``, ``<|eot_id|>``, EOS); text a Jinja template puts
after that token (ChatML's trailing newline) is not trained. A token is trained
when it overlaps a trained span.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from litft.data.conversation import Conversation
from litft.data.template_spec import builtin_names
from litft.data.template_spec import load as load_template
from litft.errors import LitFTError
from litft.labels import IGNORE_INDEX


def resolve_template(tokenizer, template) -> tuple[str, str | None]:
    """(jinja source, end-of-turn text or None) for ``data.template`` (see :mod:`litft.data.template_spec`):
    None → the tokenizer's own chat template. End-of-turn None: the span ends at the next special token."""
    if template is None:
        jinja = getattr(tokenizer, "chat_template", None)
        if isinstance(jinja, dict):
            jinja = jinja.get("default")
        if not jinja:
            raise LitFTError(
                f"the tokenizer has no chat template: set data.template to one of {', '.join(builtin_names())} "
                "(or a Jinja / YAML template)"
            )
        return jinja, None
    t = load_template(template)
    eot = t.eot.replace("{eos}", tokenizer.eos_token or "").replace("{bos}", tokenizer.bos_token or "") if t.eot is not None else None
    return t.jinja, eot


def chat_template_for(tokenizer, template) -> str:
    """The Jinja chat template to ship with a trained model's tokenizer: the one ``data.template`` trained with."""
    return resolve_template(tokenizer, template)[0]


def _render(tokenizer, jinja: str, messages, tools, *, add_generation_prompt: bool) -> str:
    kwargs = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as err:  # noqa: BLE001 - jinja raises TemplateError / exceptions raised by the template itself
        roles = "/".join(m["role"] for m in messages)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LitFTError(
            f"the chat template cannot render a conversation with roles {roles}: {first} "
            f"(set data.template to one of {', '.join(builtin_names())}, or fix the data)"
        ) from None


def _special_strings(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok))
    return [s for s in specials if s]


def _parse_tools(tools: str | None):
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except ValueError:
        raise LitFTError(f"a record's tools are not JSON (they would be dropped): {tools[:60]!r}") from None
    return parsed if isinstance(parsed, list) else [parsed]


def render_with_spans(
    tokenizer, conversation: Conversation, *, template: str | None = None
) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and its assistant spans as (start, end, turn index) character offsets."""
    jinja, eot = resolve_template(tokenizer, template)
    messages = conversation.messages()
    tools = _parse_tools(conversation.tools)
    full = _render(tokenizer, jinja, messages, tools, add_generation_prompt=False)
    if tools and full == _render(tokenizer, jinja, messages, None, add_generation_prompt=False):
        raise LitFTError(
            f"data.template {template!r} does not render the record's tools (they would be dropped): use a template "
            "that renders them (the tokenizer's own, data.template: null, or a Jinja template)"
        )
    enders = [eot] if eot is not None else _special_strings(tokenizer) + [tokenizer.eos_token or ""]
    enders = [e for e in enders if e]
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    offset = len(messages) - len(conversation.turns)  # the system message, if any
    for i, turn in enumerate(conversation.turns):
        if turn.role != "assistant":
            continue
        prefix = _render(tokenizer, jinja, messages[: offset + i], tools, add_generation_prompt=True)
        start = len(prefix) if full.startswith(prefix) and len(prefix) >= cursor else cursor
        segment_end = _render_end(tokenizer, jinja, messages, tools, offset + i, full, start)
        content = turn.content
        pos = full.find(content, start, segment_end) if content else start
        if pos < 0 and content.strip():
            pos = full.find(content.strip(), start, segment_end)
            content = content.strip()
        content_start = pos if pos >= 0 else start
        content_end = content_start + len(content) if pos >= 0 else content_start
        end = segment_end if eot != "" else content_end
        hits = [full.find(s, content_end, segment_end) for s in enders]
        hits = [(h, h + len(s)) for h, s in zip(hits, enders) if h >= 0]
        if hits:
            end = min(hits)[1]
        # Train from where the assistant's text begins (inside the generated part) to its end-of-turn token.
        spans.append((content_start if pos >= 0 else start, end, i))
        cursor = end
    return full, spans


def _render_end(tokenizer, jinja, messages, tools, index, full, start) -> int:
    """Where assistant message ``index`` ends in ``full``: the length of the rendering up to and including it
    when that rendering is a prefix of ``full``, else the end of ``full``."""
    if index + 1 == len(messages):  # the last message: its rendering is the whole conversation
        return len(full)
    upto = _render(tokenizer, jinja, messages[: index + 1], tools, add_generation_prompt=False)
    if full.startswith(upto) and len(upto) > start:
        return len(upto)
    return len(full)


def _text_ids(tokenizer, ids: list[int]) -> list[int]:
    """A plain document's ids: BOS when the tokenizer adds one, the text, EOS."""
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + list(ids)
    if tokenizer.eos_token_id is not None:
        ids = list(ids) + [tokenizer.eos_token_id]
    return list(ids)


def _labels(ids: list[int], offsets, spans: list[tuple[int, int, int]]) -> list[int]:
    """``ids`` where a token overlaps a trained span, else IGNORE_INDEX: :func:`_labels_loop`'s result, found by
    bisection and slices when token starts and span ends are in order (as the tokenizer and the renderer give
    them), which saves the per-token Python loop over the trained text."""
    starts = [o[0] for o in offsets]
    span_ends = [sp[1] for sp in spans]
    if starts != sorted(starts) or span_ends != sorted(span_ends):
        return _labels_loop(ids, offsets, spans)
    labels = [IGNORE_INDEX] * len(ids)
    prev_end = None
    for span_start, span_end, _ in spans:
        # The loop gives token j to the first span ending after its start; of this span's tokens, those starting
        # inside it are trained, and those starting before it when they reach into it.
        lo = 0 if prev_end is None else bisect_right(starts, prev_end - 1)
        hi = bisect_right(starts, span_end - 1)
        mid = min(max(bisect_left(starts, span_start), lo), hi)
        labels[mid:hi] = ids[mid:hi]
        for j in range(lo, mid):
            if offsets[j][1] > span_start:
                labels[j] = ids[j]
        prev_end = span_end
    return labels


def _labels_loop(ids: list[int], offsets, spans: list[tuple[int, int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for j, (s, e) in enumerate(offsets):
        e = max(e, s + 1)  # zero-width offsets count as their start character
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        # A token is trained when it overlaps a trained span (a token holding the template's space and the
        # content's first word is trained: it carries content).
        if k < len(spans) and s < spans[k][1] and e > spans[k][0]:
            labels[j] = ids[j]
    return labels


def encode_many(
    tokenizer,
    conversations: Sequence[Conversation],
    *,
    template: str | None = None,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    batch_size: int = 256,
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` (-100 where not trained) for each conversation, tokenized in batches.

    train_on_prompt: train on every token (prompt included). mask_history: train on the last assistant
    turn only. A plain-text record (``conversation.text``) is the text plus EOS, all trained.
    """
    out: list[tuple[list[int], list[int]]] = []
    for b in range(0, len(conversations), batch_size):
        chunk = conversations[b : b + batch_size]
        texts, spans = [], []
        for conv in chunk:
            if conv.text is not None:
                texts.append(conv.text)
                spans.append(None)
            else:
                full, sp = render_with_spans(tokenizer, conv, template=template)
                texts.append(full)
                spans.append(sp[-1:] if mask_history and sp else sp)
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for ids, offsets, sp in zip(enc["input_ids"], enc["offset_mapping"], spans):
            ids = list(ids)
            if sp is None:
                ids = _text_ids(tokenizer, ids)
                out.append((ids, list(ids)))
            elif train_on_prompt:
                out.append((ids, list(ids)))
            else:
                out.append((ids, _labels(ids, offsets, sp)))
    return out


def encode_prompt(tokenizer, messages: Sequence[dict], *, template: str | None = None, tools: str | None = None) -> list[int]:
    """Token ids for generation: ``messages`` (ending with a user turn) plus the assistant generation prompt,
    identical to what training renders before an assistant turn."""
    jinja, _ = resolve_template(tokenizer, template)
    text = _render(tokenizer, jinja, list(messages), _parse_tools(tools), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
