"""Dataset formats: one plain function per format, each turning one raw record into a Conversation.

Every function takes the record and keyword-only options (``columns``, ``tags`` from the registry entry)
and raises :class:`RecordError` naming the offending field; the loader adds the file and record index.
Add a format by writing one function and one entry in :data:`FORMATS`: the registry accepts exactly the names
listed there (``formatting`` in dataset_info.json). :func:`guess_format` recognises bare files of the formats
whose keys it knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from litft.data.conversation import Conversation, Turn


class RecordError(ValueError):
    """A bad record: ``field`` names the column (or ``column[i].key``) at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _col(columns: Mapping[str, str] | None, key: str, default: str | None) -> str | None:
    if columns and key in columns:
        return columns[key]
    return default


def _get_list(record: Mapping[str, Any], name: str, *, of: str) -> list:
    """A required list column (``of`` names its items in the error)."""
    value = record.get(name)
    if value is None:
        raise RecordError("missing required column", name)
    if not isinstance(value, list):
        raise RecordError(f"expected a list of {of}, got {type(value).__name__}", name)
    return value


def _get_str(record: Mapping[str, Any], name: str | None, *, required: bool) -> str | None:
    """A string column: missing or None → None (or an error when required); anything else but str → error."""
    if name is None:
        return None
    value = record.get(name)
    if value is None:
        if required:
            raise RecordError("missing required column", name)
        return None
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", name)
    return value


def _get_tools(record: Mapping[str, Any], name: str | None) -> str | None:
    value = record.get(name) if name else None
    if value is None or value == "":
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise RecordError(f"expected a string or a list, got {type(value).__name__}", name)
    return value


def _check_nonempty(turns: list[Turn], field: str) -> None:
    if not turns:
        raise RecordError("empty conversation", field)
    if not any(t.role == "assistant" for t in turns):
        raise RecordError("no assistant turn to train on", field)


def alpaca(record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, **_: Any) -> Conversation:
    """Alpaca: instruction (+ "\\n" + input) → output; optional system and history [[q, a], ...]."""
    prompt_col = _col(columns, "prompt", "instruction")
    query_col = _col(columns, "query", "input")
    response_col = _col(columns, "response", "output")
    instruction = _get_str(record, prompt_col, required=True)
    query = _get_str(record, query_col, required=False)
    response = _get_str(record, response_col, required=True)
    prompt = f"{instruction}\n{query}" if query else instruction
    turns: list[Turn] = []
    history_col = _col(columns, "history", "history")
    history = record.get(history_col) if history_col else None
    if history:
        if not isinstance(history, list):
            raise RecordError(f"expected a list of [prompt, response] pairs, got {type(history).__name__}", history_col)
        for i, pair in enumerate(history):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)
            ):
                raise RecordError("expected a [prompt, response] pair of strings", f"{history_col}[{i}]")
            turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    turns += [Turn("user", prompt, input=query or None, instruction=instruction if query else None),
              Turn("assistant", response)]
    system = _get_str(record, _col(columns, "system", "system"), required=False)
    tools = _get_tools(record, _col(columns, "tools", None))
    return Conversation(turns=turns, system=system or None, tools=tools)


_SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


def sharegpt(
    record: Mapping[str, Any],
    *,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    **_: Any,
) -> Conversation:
    """ShareGPT: a list of {from, value}; human/observation at odd positions (1st, 3rd, ...), gpt/function
    at even ones; a leading system turn overrides the system column."""
    tags = {**_SHAREGPT_TAGS, **(tags or {})}
    messages_col = _col(columns, "messages", "conversations")
    messages = _get_list(record, messages_col, of="messages")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    roles = {
        tags["user_tag"]: "user",
        tags["observation_tag"]: "tool",
        tags["assistant_tag"]: "assistant",
        tags["function_tag"]: "assistant",
    }
    system = _get_str(record, _col(columns, "system", "system"), required=False)
    start = 0
    if messages and isinstance(messages[0], Mapping) and messages[0].get(role_tag) == tags["system_tag"]:
        system = messages[0].get(content_tag)
        if not isinstance(system, str):
            raise RecordError("expected a string", f"{messages_col}[0].{content_tag}")
        start = 1
    turns: list[Turn] = []
    for i, message in enumerate(messages[start:], start=start):
        where = f"{messages_col}[{i}]"
        if not isinstance(message, Mapping):
            raise RecordError(f"expected an object, got {type(message).__name__}", where)
        tag = message.get(role_tag)
        if not isinstance(tag, str) or tag not in roles:
            raise RecordError(f"unknown role {tag!r} (expected one of {sorted(roles)})", f"{where}.{role_tag}")
        content = message.get(content_tag)
        if not isinstance(content, str):
            got = "nothing" if content is None else type(content).__name__
            raise RecordError(f"expected a string, got {got}", f"{where}.{content_tag}")
        role = roles[tag]
        expect_user = (i - start) % 2 == 0
        if expect_user != (role != "assistant"):
            want = f"{tags['user_tag']}/{tags['observation_tag']}" if expect_user else f"{tags['assistant_tag']}/{tags['function_tag']}"
            raise RecordError(f"turns out of order: position {i - start + 1} must be {want}, got {tag!r}", f"{where}.{role_tag}")
        turns.append(Turn(role, content))
    _check_nonempty(turns, messages_col)
    if turns[-1].role != "assistant":
        raise RecordError("the conversation must end with an assistant turn", messages_col)
    return Conversation(turns=turns, system=system or None, tools=_get_tools(record, _col(columns, "tools", "tools")))


def openai(record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, **_: Any) -> Conversation:
    """OpenAI messages: a list of {role, content} with roles system / user / assistant / tool."""
    return sharegpt(
        record,
        columns={"messages": _col(columns, "messages", "messages"), **{k: v for k, v in (columns or {}).items() if k != "messages"}},
        tags={
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "observation_tag": "tool",
            "function_tag": "function",
            "system_tag": "system",
        },
    )


def lima(record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, **_: Any) -> Conversation:
    """LIMA: ``conversations`` is a list of strings alternating user, assistant, user, ..."""
    col = _col(columns, "messages", "conversations")
    items = _get_list(record, col, of="strings")
    turns = []
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise RecordError(f"expected a string, got {type(text).__name__}", f"{col}[{i}]")
        turns.append(Turn("user" if i % 2 == 0 else "assistant", text))
    _check_nonempty(turns, col)
    if turns[-1].role != "assistant":
        turns.pop()  # a trailing unanswered question has nothing to train on
    return Conversation(turns=turns, system=_get_str(record, _col(columns, "system", "system"), required=False))


def dolly(record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, **_: Any) -> Conversation:
    """Dolly: instruction, context (optional), response; ``category`` is ignored."""
    return alpaca(
        record,
        columns={
            "prompt": _col(columns, "prompt", "instruction"),
            "query": _col(columns, "query", "context"),
            "response": _col(columns, "response", "response"),
            "system": _col(columns, "system", "system"),
        },
    )


def text(record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, **_: Any) -> Conversation:
    """Plain text for continued pre-training: one document per record (column ``text``), all tokens trained."""
    col = _col(columns, "prompt", "text")
    value = _get_str(record, col, required=True)
    if not value.strip():
        raise RecordError("empty text", col)
    return Conversation(text=value)


FormatFn = Callable[..., Conversation]

#: Format name → function. ``csv`` files use the alpaca format with (renamable) instruction/input/output columns.
FORMATS: dict[str, FormatFn] = {
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "openai": openai,
    "lima": lima,
    "dolly": dolly,
    "text": text,
}


def guess_format(record: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(format, columns) of a bare file (no dataset_info.json entry), from the keys of its first record."""
    keys = set(record)
    if "messages" in keys:
        first = record["messages"][0] if isinstance(record["messages"], list) and record["messages"] else {}
        if isinstance(first, Mapping) and "role" in first:
            return "openai", {}
        return "sharegpt", {"messages": "messages"}
    if "conversations" in keys:
        conv = record["conversations"]
        if isinstance(conv, list) and conv and isinstance(conv[0], str):
            return "lima", {}
        if isinstance(conv, list) and conv and isinstance(conv[0], Mapping) and "role" in conv[0]:
            return "openai", {"messages": "conversations"}
        return "sharegpt", {}
    if "context" in keys and "response" in keys:
        return "dolly", {}
    if "instruction" in keys:
        return "alpaca", {}
    if keys == {"text"} or ("text" in keys and "output" not in keys):
        return "text", {"prompt": "text"}
    return "alpaca", {}
