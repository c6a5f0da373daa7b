"""The one record every format becomes: a system prompt, optional tools, and a list of turns."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class Turn:
    role: str
    """One of ``user``, ``assistant``, ``tool``."""
    content: str
    """The text of the turn."""
    input: str | None = field(default=None, compare=False)
    """Alpaca's ``input`` field when the record had one (``content`` is then instruction + "\n" + input); a
    declarative template with an ``input`` block renders it as a block of its own."""
    instruction: str | None = field(default=None, compare=False)
    """Alpaca's ``instruction`` field, set together with ``input``."""


@dataclass
class Conversation:
    """A chat (system, tools, turns) or, with ``text`` set, a plain document for continued pre-training."""

    turns: list[Turn] = field(default_factory=list)
    """User / assistant / tool turns in order."""
    system: str | None = None
    """System prompt, or None for the template's default."""
    tools: str | None = None
    """Tool descriptions (a JSON string), passed to the chat template as ``tools``."""
    text: str | None = None
    """A plain document (continued pre-training): every token is trained, no template."""

    def messages(self) -> list[dict[str, str]]:
        """The turns as chat-template messages ({role, content}), the system prompt first when set."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [
            {"role": t.role, "content": t.content, **({"instruction": t.instruction, "input": t.input} if t.input else {})}
            for t in self.turns
        ]
