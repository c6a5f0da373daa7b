"""``python -m litft chat --config X.yaml [--adapter DIR]``: an interactive chat that keeps the history.

Reads one user message per line from stdin (works piped too); replies stream as they are generated.
``/clear`` starts a new conversation, ``/exit`` (or end of input) quits. Same template as training.
"""

from __future__ import annotations

import sys

from litft.commands.generate import add_generation_arguments
from litft.inference import _get, encode_messages, generate, load_for_inference

NEEDS_TRAINER = False


def add_arguments(parser) -> None:
    add_generation_arguments(parser)


def run(cli) -> int:
    from transformers import TextStreamer

    cfg = cli.config
    model, tokenizer = load_for_inference(_get(cfg, "model"), _get(cfg, "adapter"))
    template = _get(_get(cfg, "data"), "template")
    system = _get(cfg, "system")
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    print("litft chat: type a message; /clear resets the conversation, /exit quits.", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("user> ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/clear":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = encode_messages(tokenizer, messages, template=template)
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        [reply] = generate(model, tokenizer, [ids], max_new_tokens=_get(cfg, "max_new_tokens", 256),
                           temperature=_get(cfg, "temperature", 0.0), top_p=_get(cfg, "top_p", 1.0), streamer=streamer)
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply})
    return 0
