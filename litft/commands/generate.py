"""``python -m litft generate --config X.yaml [--adapter DIR] --prompt "..."``: one completion, printed.

The prompt is rendered with the same chat template as the training data (``data.template``, else the
tokenizer's own), so a fine-tuned adapter sees exactly the format it was trained on.
"""

from __future__ import annotations

from typing import Optional

from litft.errors import LitFTError
from litft.inference import _get, encode_messages, generate, load_for_inference

NEEDS_TRAINER = False


def add_generation_arguments(parser, adapter_help: str = "PEFT adapter folder (default: the base model alone).") -> None:
    """Flags shared by generate, chat, predict and evaluate."""
    parser.add_argument("--adapter", type=Optional[str], default=None, help=adapter_help)
    parser.add_argument("--system", type=Optional[str], default=None, help="System prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Most tokens to generate.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding; > 0 samples.")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (with temperature > 0).")


def add_arguments(parser) -> None:
    add_generation_arguments(parser)
    parser.add_argument("--prompt", type=Optional[str], default=None, help="The user message.")


def messages_for(system: Optional[str], user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def run(cli) -> int:
    cfg = cli.config
    prompt = _get(cfg, "prompt")
    if not prompt:
        raise LitFTError("generate: give --prompt \"...\"")
    model, tokenizer = load_for_inference(_get(cfg, "model"), _get(cfg, "adapter"))
    ids = encode_messages(tokenizer, messages_for(_get(cfg, "system"), prompt), template=_get(_get(cfg, "data"), "template"))
    [text] = generate(model, tokenizer, [ids], max_new_tokens=_get(cfg, "max_new_tokens", 256),
                      temperature=_get(cfg, "temperature", 0.0), top_p=_get(cfg, "top_p", 1.0))
    print(text)
    return 0
