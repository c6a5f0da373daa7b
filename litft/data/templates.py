"""Chat templates and the exact tokenization of a conversation into ``input_ids`` and ``labels``.

By default the tokenizer's own chat template renders the conversation. Named templates (for models without
one) are small Jinja chat templates in :data:`TEMPLATES`, rendered the same way, so there is one code path.

Exactness: the conversation is rendered to one string and tokenized once (``add_special_tokens=False``,
with offsets), which is what ``tokenizer.apply_chat_template(messages, tokenize=True)`` does, so the ids are
identical. Trained character spans are found by rendering the prefix before each assistant turn with the
generation prompt: the span runs from the assistant content to the end of the first end-of-turn token
after it (the template's ``eot`` or any special token, e.g. ``<|im_end|>``, ``<|eot_id|>``, EOS). Text the
template puts after the end-of-turn token (ChatML's trailing newline) is not trained. A token is trained
when it overlaps a trained span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from litft.data.conversation import Conversation
from litft.errors import LitFTError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Template:
    """A named chat template: Jinja source (``apply_chat_template`` syntax) and its end-of-turn marker."""

    name: str
    """Name used in ``data.template``."""
    jinja: str
    """The chat template; ``eos_token`` / ``bos_token`` are available as in transformers."""
    eot: str | None = None
    """End-of-turn string after each assistant turn (None: the tokenizer's EOS)."""


def _turns(user: str, assistant: str, system: str = "", sep: str = "", tool: str | None = None) -> str:
    tool = tool if tool is not None else user
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}" + system
        + "{% elif message['role'] == 'user' %}" + user
        + "{% elif message['role'] == 'tool' %}" + tool
        + "{% elif message['role'] == 'assistant' %}" + assistant
        + "{% endif %}{% endfor %}"
    )


_GEN = "{% if add_generation_prompt %}GEN{% endif %}"

TEMPLATES: dict[str, Template] = {}


def _register(name: str, body: str, gen: str, eot: str | None = None, prefix: str = "") -> None:
    TEMPLATES[name] = Template(name, prefix + body + _GEN.replace("GEN", gen), eot)


_C = "{{ message['content'] }}"
_register(
    "alpaca",
    _turns(
        system=_C + "\n\n",
        user="### Instruction:\n" + _C + "\n\n",
        assistant="### Response:\n" + _C + "{{ eos_token }}\n\n",
        tool="### Input:\n" + _C + "\n\n",
    ),
    gen="### Response:\n",
)
_chatml = _turns(
    system="<|im_start|>system\n" + _C + "<|im_end|>\n",
    user="<|im_start|>user\n" + _C + "<|im_end|>\n",
    assistant="<|im_start|>assistant\n" + _C + "<|im_end|>\n",
    tool="<|im_start|>tool\n" + _C + "<|im_end|>\n",
)
_register("chatml", _chatml, gen="<|im_start|>assistant\n", eot="<|im_end|>")
_register("qwen", _chatml, gen="<|im_start|>assistant\n", eot="<|im_end|>")
_register(
    "llama3",
    _turns(
        system="<|start_header_id|>system<|end_header_id|>\n\n" + _C + "<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n" + _C + "<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n" + _C + "<|eot_id|>",
        tool="<|start_header_id|>ipython<|end_header_id|>\n\n" + _C + "<|eot_id|>",
    ),
    gen="<|start_header_id|>assistant<|end_header_id|>\n\n",
    eot="<|eot_id|>",
    prefix="{{ bos_token }}",
)
# Llama 2: the system prompt goes inside the first [INST] block; each exchange is "<s>[INST] q [/INST] a </s>".
TEMPLATES["llama2"] = Template(
    "llama2",
    "{% set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] in ['user', 'tool'] %}"
    "{{ bos_token }}[INST] {% if sys is not none and loop.first %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}"
    "{{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}",
    None,
)
_register(
    "phi",
    _turns(
        system="<|system|>\n" + _C + "<|end|>\n",
        user="<|user|>\n" + _C + "<|end|>\n",
        assistant="<|assistant|>\n" + _C + "<|end|>\n",
    ),
    gen="<|assistant|>\n",
    eot="<|end|>",
)
_register(
    "empty",
    _turns(system=_C, user=_C, assistant=_C + "{{ eos_token }}"),
    gen="",
)


def resolve_template(tokenizer, template: str | None) -> tuple[str, str | None]:
    """(jinja source, end-of-turn string) for ``data.template``: None → the tokenizer's own chat template."""
    if template is None:
        jinja = getattr(tokenizer, "chat_template", None)
        if isinstance(jinja, dict):
            jinja = jinja.get("default")
        if not jinja:
            raise LitFTError(
                f"the tokenizer has no chat template: set data.template to one of {', '.join(sorted(TEMPLATES))}"
            )
        return jinja, None
    if template not in TEMPLATES:
        raise LitFTError(f"data.template: unknown template '{template}' (known: {', '.join(sorted(TEMPLATES))})")
    t = TEMPLATES[template]
    return t.jinja, t.eot if t.eot is not None else tokenizer.eos_token


def chat_template_for(tokenizer, template: str | None) -> str:
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
            f"(set data.template to one of {', '.join(sorted(TEMPLATES))}, or fix the data)"
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
    import json

    try:
        parsed = json.loads(tools)
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) else [parsed]


def render_with_spans(
    tokenizer, conversation: Conversation, *, template: str | None = None
) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and its assistant spans as (start, end, turn index) character offsets."""
    jinja, eot = resolve_template(tokenizer, template)
    messages = conversation.messages()
    tools = _parse_tools(conversation.tools)
    full = _render(tokenizer, jinja, messages, tools, add_generation_prompt=False)
    enders = _special_strings(tokenizer)
    if eot:
        enders.append(eot)
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
        end = segment_end
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
    """:func:`encode_conversation` for many conversations, tokenizing in batches (much faster)."""
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


def encode_conversation(
    tokenizer,
    conversation: Conversation,
    *,
    template: str | None = None,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> tuple[list[int], list[int]]:
    """``input_ids`` and ``labels`` (-100 where not trained) for one conversation.

    train_on_prompt: train on every token (prompt included). mask_history: train on the last assistant
    turn only. A plain-text record (``conversation.text``) is the text plus EOS, all trained.
    """
    return encode_many(
        tokenizer, [conversation], template=template, train_on_prompt=train_on_prompt, mask_history=mask_history
    )[0]


def encode_prompt(tokenizer, messages: Sequence[dict], *, template: str | None = None, tools: str | None = None) -> list[int]:
    """Token ids for generation: ``messages`` (ending with a user turn) plus the assistant generation prompt,
    identical to what training renders before an assistant turn."""
    jinja, _ = resolve_template(tokenizer, template)
    text = _render(tokenizer, jinja, list(messages), _parse_tools(tools), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
