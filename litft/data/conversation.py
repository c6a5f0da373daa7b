"""The records formats produce: a :class:`Conversation` (system prompt, optional tools, turns) for SFT, a
:class:`Preference` (prompt + chosen + rejected reply) for DPO / ORPO / SimPO, a :class:`Feedback` (prompt + reply +
desirable or not) for KTO. One dataset entry gives records of one kind (:data:`KINDS`)."""

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


@dataclass
class Preference:
    """A preference pair (DPO, ORPO, SimPO): one prompt and two replies to it, the preferred one first.

    ``prompt`` holds the system prompt, tools and the turns before the replies; its last turn is a user (or tool)
    turn. ``chosen`` and ``rejected`` are single assistant turns. The chosen row is ``prompt.turns + [chosen]``,
    rendered and masked exactly as SFT renders that conversation with only its last assistant turn trained
    (:meth:`conversation`); the rejected row likewise.
    """

    prompt: Conversation
    """System prompt, tools and the turns the replies answer (ends with a user or tool turn)."""
    chosen: Turn
    """The preferred reply (role ``assistant``)."""
    rejected: Turn
    """The dispreferred reply (role ``assistant``)."""

    def conversation(self, which: str) -> Conversation:
        """The prompt followed by the ``"chosen"`` or ``"rejected"`` reply."""
        reply = {"chosen": self.chosen, "rejected": self.rejected}[which]
        return Conversation(turns=[*self.prompt.turns, reply], system=self.prompt.system, tools=self.prompt.tools)


@dataclass
class Feedback:
    """An unpaired, labelled example (KTO): one prompt, one reply, and whether the reply is desirable.

    The row is ``prompt.turns + [completion]``, rendered and masked like SFT with only the last assistant turn
    trained (:meth:`conversation`).
    """

    prompt: Conversation
    """System prompt, tools and the turns the reply answers (ends with a user or tool turn)."""
    completion: Turn
    """The judged reply (role ``assistant``)."""
    label: bool
    """True: desirable (LLaMA-Factory's ``kto_tag`` true, TRL's ``label`` true); False: undesirable."""

    def conversation(self) -> Conversation:
        """The prompt followed by the reply."""
        return Conversation(turns=[*self.prompt.turns, self.completion], system=self.prompt.system, tools=self.prompt.tools)


KINDS = ("sft", "preference", "feedback")
"""What a dataset's records become: :class:`Conversation` (sft), :class:`Preference` or :class:`Feedback`."""

RECORD_TYPES = {"sft": Conversation, "preference": Preference, "feedback": Feedback}
"""Kind → the record type its format functions return."""
