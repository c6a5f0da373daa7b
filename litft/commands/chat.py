"""``python -m litft chat --config X.yaml [--adapter DIR]``: an interactive chat that keeps the history.

Reads one user message per line from stdin (works piped too); replies stream as they are generated.
``/clear`` starts a new conversation, ``/exit`` (or end of input) quits. Same template and model as training.
"""

from __future__ import annotations

import sys

from transformers import TextStreamer

from litft.commands.generate import add_generation_arguments, generation_kwargs, inference_model
from litft.data.templates import encode_prompt
from litft.generation import generate


def add_arguments(parser) -> None:
    add_generation_arguments(parser)


def run(cli) -> int:
    cfg = cli.config
    model, tokenizer = inference_model(cli, cfg.adapter)
    template = cli.datamodule.template
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
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + history
        ids = encode_prompt(tokenizer, messages, template=template)
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        [reply] = generate(model, tokenizer, [ids], streamer=streamer, **generation_kwargs(cfg))
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply})
    return 0
