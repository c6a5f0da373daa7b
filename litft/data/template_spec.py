"""What ``data.template`` may be, and the built-in templates.

``data.template`` is one of:

- ``null``: the tokenizer's own chat template;
- a built-in name (:data:`BUILTIN`): alpaca, chatml, empty, llama2, llama3, phi, qwen;
- a Jinja chat template, inline (any string holding ``{{`` or ``{%``) or a ``.jinja`` file
  (``apply_chat_template`` syntax; trained span = assistant content through the next special token);
- a small declarative template: a ``.yaml``/``.yml`` file or an inline mapping with the blocks below.

Declarative blocks (text with the placeholders ``{content}``, ``{bos}``, ``{eos}``)::

    prefix:          text at the very start (e.g. "{bos}")
    system:          how a system prompt is written          (default "{content}")
    default_system:  the system prompt of records without one (default none)
    user:            a user turn                              (required)
    input:           alpaca's `input` field as a block of its own (default: appended to the instruction
                     after a newline, inside the user block)
    tool:            a tool result                             (default: the user block)
    assistant:       the assistant turn up to and including its content; the text before {content} is the
                     generation prompt                         (required, ends with {content})
    end_of_turn:     text after each assistant turn; trained with the reply (e.g. "{eos}" or "\\n### End")

Every declarative template (built-ins included) compiles to one Jinja chat template, so training, generation and
the tokenizer shipped with the adapter/export render through the same ``apply_chat_template``. Records with
``tools`` need a template that renders them (a Jinja one, or the tokenizer's own): litft stops with an error rather
than dropping them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from litft.errors import LitFTError


@dataclass(frozen=True)
class Template:
    """A resolved template: Jinja source and its end-of-turn text."""

    name: str
    """Built-in name, file path, or "inline"."""
    jinja: str
    """The chat template (``apply_chat_template`` syntax)."""
    eot: str | None = None
    """End-of-turn text trained after each reply (``{eos}`` is the tokenizer's EOS); None: up to the next
    special token (Jinja templates)."""


@dataclass(frozen=True)
class Spec:
    """A declarative template (see the module docstring)."""

    user: str
    assistant: str
    system: str = "{content}"
    default_system: str | None = None
    prefix: str = ""
    input: str | None = None
    tool: str | None = None
    end_of_turn: str = "{eos}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> "Spec":
        known = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping):
            raise LitFTError(f"{where}: a declarative template is a mapping of blocks ({', '.join(sorted(known))})")
        unknown = sorted(set(data) - known)
        if unknown:
            raise LitFTError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        for key in ("user", "assistant"):
            if not isinstance(data.get(key), str):
                raise LitFTError(f"{where}: '{key}' is required (text with {{content}})")
        for key, value in data.items():
            if value is not None and not isinstance(value, str):
                raise LitFTError(f"{where}: '{key}' must be text, got {type(value).__name__}")
        spec = cls(**dict(data))
        for key in ("user", "system", "input", "tool", "assistant"):
            block = getattr(spec, key)
            if block is not None and block.count("{content}") != 1:
                raise LitFTError(f"{where}: '{key}' must hold {{content}} exactly once")
        if not spec.assistant.endswith("{content}"):
            raise LitFTError(f"{where}: 'assistant' must end with {{content}} (put what follows in 'end_of_turn')")
        return spec

    def to_jinja(self) -> str:
        """The equivalent Jinja chat template."""
        sys_default = f"{{% set sys = {_lit(self.default_system)} %}}" if self.default_system else "{% set sys = '' %}"
        header = self.assistant[: -len("{content}")]
        user_plain = _block(self.user, "message['content']")
        if self.input is not None:
            user = (
                "{% if message.get('input') %}" + _block(self.user, "message.get('instruction', message['content'])")
                + _block(self.input, "message['input']") + "{% else %}" + user_plain + "{% endif %}"
            )
        else:
            user = user_plain
        return (
            _block(self.prefix, None) + sys_default
            + "{% set loop_messages = messages %}"
            + "{% if messages and messages[0]['role'] == 'system' %}"
            "{% set sys = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% endif %}"
            + "{% if sys %}" + _block(self.system, "sys") + "{% endif %}"
            + "{% for message in loop_messages %}"
            + "{% if message['role'] == 'user' %}" + user
            + "{% elif message['role'] == 'tool' %}" + _block(self.tool or self.user, "message['content']")
            + "{% elif message['role'] == 'assistant' %}" + _block(self.assistant, "message['content']")
            + _block(self.end_of_turn, None)
            + "{% endif %}{% endfor %}"
            + "{% if add_generation_prompt %}" + _block(header, None) + "{% endif %}"
        )


def _lit(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON escapes are valid Jinja string escapes)."""
    return json.dumps(text)


def _block(text: str, content_expr: str | None) -> str:
    """Jinja for one block: literal text, ``{content}`` → ``content_expr``, ``{bos}``/``{eos}`` → the tokens."""
    out = []
    for piece in re.split(r"(\{content\}|\{bos\}|\{eos\})", text):
        if piece == "{content}":
            out.append("{{ " + (content_expr or "''") + " }}")
        elif piece in ("{bos}", "{eos}"):
            out.append("{{ " + piece[1:-1] + "_token }}")
        elif piece:
            out.append("{{ " + _lit(piece) + " }}")
    return "".join(out)


_ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
_CHATML = dict(
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{content}",
    end_of_turn="<|im_end|>\n",
)

#: Built-in templates. Those that share a name with a LLaMA-Factory 0.9.5 template render the same text
#: (README "Templates" lists where the token ids can still differ, and why).
BUILTIN: dict[str, Spec] = {
    "alpaca": Spec(system="{content}", default_system=_ALPACA_SYSTEM, user="### Instruction:\n{content}\n\n",
                   assistant="### Response:\n{content}", end_of_turn="{eos}\n\n"),
    "chatml": Spec(**_CHATML, tool="<|im_start|>tool\n{content}<|im_end|>\n"),
    "qwen": Spec(**_CHATML, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                 tool="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"),
    "llama3": Spec(prefix="{bos}", system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
                   user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
                   tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
                   assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}", end_of_turn="<|eot_id|>"),
    "phi": Spec(system="<|system|>\n{content}<|end|>\n", user="<|user|>\n{content}<|end|>\n",
                assistant="<|assistant|>\n{content}", end_of_turn="<|end|>\n"),
    "empty": Spec(system="{content}", user="{content}", assistant="{content}", end_of_turn=""),
}

# Llama 2 puts the system prompt inside the first [INST] block, which the blocks above cannot say: its own Jinja.
# Text as LLaMA-Factory's llama2 (whose separately tokenized reply gets SentencePiece's leading space): "<s>[INST] "
# + "<<SYS>>\n{system}\n<</SYS>>\n\n" (first turn) + "{user} [/INST] {reply}</s>". The generation prompt ends at
# "[/INST]": the space belongs to the reply's first token, as in training.
_LLAMA2 = (
    "{% set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] in ['user', 'tool'] %}"
    "{{ bos_token }}[INST] {% if sys is not none and loop.first %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}"
    "{{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def builtin_names() -> list[str]:
    return sorted([*BUILTIN, "llama2"])


def _from_file(path: Path) -> Template:
    if not path.is_file():
        raise LitFTError(f"data.template: no such template file: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jinja":
        return Template(str(path), text, None)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LitFTError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    spec = Spec.from_mapping(data, str(path))
    return Template(str(path), spec.to_jinja(), spec.end_of_turn)


def load(template: str | Mapping[str, Any]) -> Template:
    """The template that ``data.template`` names (not None; None means the tokenizer's own)."""
    if isinstance(template, Mapping):
        spec = Spec.from_mapping(template, "data.template")
        return Template("inline", spec.to_jinja(), spec.end_of_turn)
    if not isinstance(template, str) or not template:
        raise LitFTError(f"data.template: expected a name, a Jinja template, a file or a mapping, got {template!r}")
    if template in BUILTIN:
        spec = BUILTIN[template]
        return Template(template, spec.to_jinja(), spec.end_of_turn)
    if template == "llama2":
        return Template("llama2", _LLAMA2, "{eos}")
    if "{{" in template or "{%" in template:
        return Template("inline", template, None)
    if template.endswith((".jinja", ".yaml", ".yml")):
        return _from_file(Path(template).expanduser())
    raise LitFTError(
        f"data.template: unknown template '{template}' (built-in: {', '.join(builtin_names())}; or a Jinja "
        "template, a .jinja file, a .yaml declarative template)"
    )
