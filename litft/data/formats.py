"""Dataset formats: one plain function per format, each turning one raw record into a record of
:mod:`litft.data.conversation`.

Every function takes the record and keyword-only options (``columns``, ``tags`` from the registry entry, and
``kind``: what the entry's records are, ``sft`` / ``preference`` / ``feedback``) and returns a Conversation, a
Preference or a Feedback accordingly; it raises :class:`RecordError` naming the offending field; the loader adds
the file and record index. Add a format by writing one function and one entry in :data:`FORMATS`: the registry
accepts exactly the names listed there (``formatting`` in dataset_info.json). :func:`guess_format` and
:func:`guess_kind` recognise bare files of the formats whose keys they know.

Preference and feedback layouts (LLaMA-Factory's semantics, read in its ``data/converter.py``; TRL's dataset
formats, read in its "Dataset formats" guide):

- alpaca, ``ranking: true``: the prompt as for SFT (instruction + "\n" + input, history, system); ``chosen`` and
  ``rejected`` columns hold the two replies as strings.
- sharegpt / openai, ``ranking: true``: the messages are the prompt (they end with a user or observation turn);
  ``chosen`` and ``rejected`` are single messages ``{from, value}`` (``{role, content}``) of the assistant (or
  function) role.
- ``kto_tag`` column (feedback): the record as for SFT, its last assistant reply is the judged completion, the
  ``kto_tag`` column (a JSON boolean) says whether it is desirable.
- trl: TRL's types, standard (strings) or conversational (lists of ``{role, content}``): ``prompt`` +
  ``completion`` (sft), ``prompt`` + ``chosen`` + ``rejected`` or, with an implicit prompt, ``chosen`` +
  ``rejected`` as whole conversations sharing their first turns (preference), ``prompt`` + ``completion`` +
  ``label`` (feedback). A reply is a string or a list of exactly one assistant message. A plain-string prompt is
  one user turn and a plain-string reply one assistant turn, rendered with the chat template like every other
  format (TRL joins standard strings without a template); an implicit prompt needs conversational replies.

Replies of preference and feedback records must not be empty (whitespace only counts as empty).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from litft.data.conversation import Conversation, Feedback, Preference, Turn


class RecordError(ValueError):
    """A bad record: ``field`` names the column (or ``column[i].key``) at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _col(columns: Mapping[str, str] | None, key: str, default: str | None) -> str | None:
    if columns and key in columns:
        return columns[key]
    return default


def _required(record: Mapping[str, Any], name: str, kind: type, expected: str) -> Any:
    """A required column of type ``kind`` (``expected`` says what it should be in the error)."""
    value = record.get(name)
    if value is None:
        raise RecordError("missing required column", name)
    if not isinstance(value, kind):
        raise RecordError(f"expected {expected}, got {type(value).__name__}", name)
    return value


def _get_list(record: Mapping[str, Any], name: str, *, of: str) -> list:
    """A required list column (``of`` names its items in the error)."""
    return _required(record, name, list, f"a list of {of}")


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


def _get_reply(record: Mapping[str, Any], name: str) -> str:
    """A reply column (preference / feedback): a non-empty string."""
    value = _get_str(record, name, required=True)
    if not value.strip():
        raise RecordError("empty response", name)
    return value


def _get_bool(record: Mapping[str, Any], name: str) -> bool:
    """A label column (feedback): a JSON boolean."""
    return _required(record, name, bool, "true or false")


def _check_nonempty(turns: list[Turn], field: str) -> None:
    if not turns:
        raise RecordError("empty conversation", field)
    if not any(t.role == "assistant" for t in turns):
        raise RecordError("no assistant turn to train on", field)


def alpaca(
    record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, kind: str = "sft", **_: Any
) -> Conversation | Preference | Feedback:
    """Alpaca: instruction (+ "\\n" + input) → output; optional system and history [[q, a], ...].
    Preference: the replies are the ``chosen`` and ``rejected`` columns; feedback: ``output`` judged by ``kto_tag``."""
    prompt_col = _col(columns, "prompt", "instruction")
    query_col = _col(columns, "query", "input")
    response_col = _col(columns, "response", "output")
    instruction = _get_str(record, prompt_col, required=True)
    query = _get_str(record, query_col, required=False)
    if kind == "preference":
        chosen = _get_reply(record, _col(columns, "chosen", "chosen"))
        rejected = _get_reply(record, _col(columns, "rejected", "rejected"))
        response = None
    elif kind == "feedback":
        response = _get_reply(record, response_col)
        label = _get_bool(record, _col(columns, "kto_tag", "label"))
    else:
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
    turns.append(Turn("user", prompt, input=query or None, instruction=instruction if query else None))
    system = _get_str(record, _col(columns, "system", "system"), required=False)
    tools = _get_tools(record, _col(columns, "tools", None))
    conv = Conversation(turns=turns, system=system or None, tools=tools)
    if kind == "preference":
        return Preference(conv, Turn("assistant", chosen), Turn("assistant", rejected))
    if kind == "feedback":
        return Feedback(conv, Turn("assistant", response), label)
    turns.append(Turn("assistant", response))
    return conv


_SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


def _sharegpt_roles(tags: Mapping[str, str]) -> dict[str, str]:
    return {
        tags["user_tag"]: "user",
        tags["observation_tag"]: "tool",
        tags["assistant_tag"]: "assistant",
        tags["function_tag"]: "assistant",
    }


def _sharegpt_reply(record: Mapping[str, Any], col: str, tags: Mapping[str, str]) -> Turn:
    """A preference reply of the sharegpt layout: one message object of the assistant (or function) role."""
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    message = record.get(col)
    if message is None:
        raise RecordError("missing required column", col)
    if not isinstance(message, Mapping):
        raise RecordError(f"expected one message {{{role_tag}, {content_tag}}}, got {type(message).__name__}", col)
    tag = message.get(role_tag)
    if tag not in (tags["assistant_tag"], tags["function_tag"]):
        raise RecordError(f"a reply must be {tags['assistant_tag']}/{tags['function_tag']}, got {tag!r}", f"{col}.{role_tag}")
    content = message.get(content_tag)
    if not isinstance(content, str):
        got = "nothing" if content is None else type(content).__name__
        raise RecordError(f"expected a string, got {got}", f"{col}.{content_tag}")
    if not content.strip():
        raise RecordError("empty response", f"{col}.{content_tag}")
    return Turn("assistant", content)


def sharegpt(
    record: Mapping[str, Any],
    *,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    kind: str = "sft",
    **_: Any,
) -> Conversation | Preference | Feedback:
    """ShareGPT: a list of {from, value}; human/observation at odd positions (1st, 3rd, ...), gpt/function
    at even ones; a leading system turn overrides the system column. Preference: the messages are the prompt
    (ending with human/observation), ``chosen`` / ``rejected`` one message each; feedback: the last gpt message
    is the completion, judged by the ``kto_tag`` column."""
    tags = {**_SHAREGPT_TAGS, **(tags or {})}
    messages_col = _col(columns, "messages", "conversations")
    messages = _get_list(record, messages_col, of="messages")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    roles = _sharegpt_roles(tags)
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
    tools = _get_tools(record, _col(columns, "tools", "tools"))
    if kind == "preference":
        if not turns:
            raise RecordError("empty conversation: the prompt needs a user turn", messages_col)
        if turns[-1].role == "assistant":
            raise RecordError(
                f"the prompt must end with a {tags['user_tag']}/{tags['observation_tag']} turn (the replies are "
                f"the {_col(columns, 'chosen', 'chosen')} and {_col(columns, 'rejected', 'rejected')} columns)",
                messages_col,
            )
        chosen = _sharegpt_reply(record, _col(columns, "chosen", "chosen"), tags)
        rejected = _sharegpt_reply(record, _col(columns, "rejected", "rejected"), tags)
        return Preference(Conversation(turns=turns, system=system or None, tools=tools), chosen, rejected)
    _check_nonempty(turns, messages_col)
    if turns[-1].role != "assistant":
        raise RecordError("the conversation must end with an assistant turn", messages_col)
    if kind == "feedback":
        label = _get_bool(record, _col(columns, "kto_tag", "label"))
        if not turns[-1].content.strip():
            raise RecordError("empty response", f"{messages_col}[{len(messages) - 1}].{content_tag}")
        return Feedback(Conversation(turns=turns[:-1], system=system or None, tools=tools), turns[-1], label)
    return Conversation(turns=turns, system=system or None, tools=tools)


def openai(
    record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, kind: str = "sft", **_: Any
) -> Conversation | Preference | Feedback:
    """OpenAI messages: a list of {role, content} with roles system / user / assistant / tool (the sharegpt
    rules with these tags, preference and feedback included)."""
    return sharegpt(
        record,
        kind=kind,
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
    """Dolly: instruction, context (optional), response; ``category`` is ignored (SFT only)."""
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


_CHAT_ROLES = ("user", "assistant", "tool")


def _chat(value: Any, col: str, *, system_ok: bool) -> tuple[str | None, list[Turn]]:
    """A conversational TRL column: a list of {role, content}; a leading system message when ``system_ok``."""
    if not isinstance(value, list):
        raise RecordError(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}", col)
    system, turns = None, []
    for i, message in enumerate(value):
        where = f"{col}[{i}]"
        if not isinstance(message, Mapping):
            raise RecordError(f"expected an object, got {type(message).__name__}", where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            got = "nothing" if content is None else type(content).__name__
            raise RecordError(f"expected a string, got {got}", f"{where}.content")
        if role == "system" and i == 0 and system_ok:
            system = content
            continue
        if role not in _CHAT_ROLES:
            raise RecordError(f"unknown role {role!r} (expected one of {', '.join(_CHAT_ROLES)})", f"{where}.role")
        turns.append(Turn(role, content))
    return system, turns


def _trl_prompt(record: Mapping[str, Any], col: str) -> Conversation:
    """TRL's ``prompt``: a string (one user turn) or a list of messages ending with a user or tool turn."""
    value = record.get(col)
    if value is None:
        raise RecordError("missing required column", col)
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("empty prompt", col)
        return Conversation(turns=[Turn("user", value)])
    system, turns = _chat(value, col, system_ok=True)
    if not turns or turns[-1].role == "assistant":
        raise RecordError("the prompt must end with a user or tool turn", col)
    return Conversation(turns=turns, system=system or None)


def _trl_reply(record: Mapping[str, Any], col: str) -> Turn:
    """A TRL reply (chosen, rejected, completion): a string or a list of exactly one assistant message."""
    value = record.get(col)
    if value is None:
        raise RecordError("missing required column", col)
    if isinstance(value, str):
        text, where = value, col
    else:
        _, turns = _chat(value, col, system_ok=False)
        if len(turns) != 1 or turns[0].role != "assistant":
            raise RecordError(f"expected one assistant message, got {len(turns)} message(s) ({'/'.join(t.role for t in turns)})", col)
        text, where = turns[0].content, f"{col}[0].content"
    if not text.strip():
        raise RecordError("empty response", where)
    return Turn("assistant", text)


def _implicit_prompt(record: Mapping[str, Any], chosen_col: str, rejected_col: str) -> Preference:
    """TRL's implicit prompt: chosen and rejected are whole conversations; their shared first turns are the prompt
    and each must go on with exactly one assistant reply (a pair with equal conversations: the last turn)."""
    values = []
    for col in (chosen_col, rejected_col):
        value = record.get(col)
        if value is None:
            raise RecordError("missing required column", col)
        if not isinstance(value, list):
            raise RecordError(
                f"no prompt column: an implicit prompt needs conversational {chosen_col} and {rejected_col} "
                f"(lists of {{role, content}}), got {type(value).__name__}", col)
        values.append(_chat(value, col, system_ok=True))
    (sys_c, chosen), (sys_r, rejected) = values
    if sys_c != sys_r:
        raise RecordError(f"the system message differs from {chosen_col}'s (an implicit prompt is shared)", rejected_col)
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if chosen == rejected:
        k = len(chosen) - 1
    replies = []
    for col, turns in ((chosen_col, chosen), (rejected_col, rejected)):
        rest = turns[k:]
        if len(rest) != 1 or rest[0].role != "assistant" or k == 0:
            raise RecordError(
                f"after the turns shared with the other reply (the implicit prompt: {k} turn(s)) expected one "
                f"assistant message, got {len(rest)} ({'/'.join(t.role for t in rest)})", col)
        if not rest[0].content.strip():
            raise RecordError("empty response", f"{col}[{len(record[col]) - 1}].content")
        replies.append(rest[0])
    prompt = Conversation(turns=chosen[:k], system=sys_c or None)
    if prompt.turns[-1].role == "assistant":
        raise RecordError("the implicit prompt must end with a user or tool turn", chosen_col)
    return Preference(prompt, replies[0], replies[1])


def trl(
    record: Mapping[str, Any], *, columns: Mapping[str, str] | None = None, kind: str = "sft", **_: Any
) -> Conversation | Preference | Feedback:
    """TRL's dataset types (standard or conversational): prompt + completion (sft); prompt + chosen + rejected,
    or chosen + rejected with an implicit prompt (preference); prompt + completion + label (feedback)."""
    prompt_col = _col(columns, "prompt", "prompt")
    if kind == "preference":
        chosen_col, rejected_col = _col(columns, "chosen", "chosen"), _col(columns, "rejected", "rejected")
        if record.get(prompt_col) is None:
            return _implicit_prompt(record, chosen_col, rejected_col)
        prompt = _trl_prompt(record, prompt_col)
        return Preference(prompt, _trl_reply(record, chosen_col), _trl_reply(record, rejected_col))
    prompt = _trl_prompt(record, prompt_col)
    completion_col = _col(columns, "response", "completion")
    if kind == "feedback":
        completion = _trl_reply(record, completion_col)
        return Feedback(prompt, completion, _get_bool(record, _col(columns, "kto_tag", "label")))
    value = record.get(completion_col)
    completion = Turn("assistant", value) if isinstance(value, str) else _trl_reply(record, completion_col)
    return Conversation(turns=[*prompt.turns, completion], system=prompt.system)


FormatFn = Callable[..., Conversation | Preference | Feedback]

#: Format name → function. ``csv`` files use the alpaca format with (renamable) instruction/input/output columns.
FORMATS: dict[str, FormatFn] = {
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "openai": openai,
    "lima": lima,
    "dolly": dolly,
    "text": text,
    "trl": trl,
}


def guess_format(record: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(format, columns) of a bare file (no dataset_info.json entry), from the keys of its first record."""
    keys = set(record)
    fmt, columns = _guess(record, keys)
    if fmt != "trl" and guess_kind(record) == "feedback":
        columns = {**columns, "kto_tag": "label"}
    return fmt, columns


def _guess(record: Mapping[str, Any], keys: set) -> tuple[str, dict[str, str]]:
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
    if {"chosen", "rejected"} <= keys or {"prompt", "completion"} <= keys:
        return "trl", {}
    if keys == {"text"} or ("text" in keys and "output" not in keys):
        return "text", {"prompt": "text"}
    return "alpaca", {}


def guess_kind(record: Mapping[str, Any]) -> str:
    """What a bare file's records are, from the keys of its first record: ``preference`` (chosen and rejected),
    ``feedback`` (a boolean ``label`` beside a ``completion`` or messages) or ``sft``."""
    if "chosen" in record and "rejected" in record:
        return "preference"
    if isinstance(record.get("label"), bool) and {"completion", "messages", "conversations"} & set(record):
        return "feedback"
    return "sft"
