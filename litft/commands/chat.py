"""``python -m litft chat --config X.yaml [--adapter DIR]``: an interactive chat that keeps the history.

Reads one user message per line from stdin (works piped too); replies stream as they are generated.
``/clear`` starts a new conversation, ``/exit`` (or end of input) quits. Same template and model as training.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from transformers import TextStreamer

from litft.generation import generate
from litft.inference import GenerationSettings, add_inference_arguments, load_model, prompt_ids


def add_arguments(parser) -> None:
    add_inference_arguments(parser, batched=False)


def _lines():
    """The user's lines: prompted on a terminal, read as they come when piped; ends at end of input."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            try:
                line = input("user> ")
            except EOFError:
                return
        else:
            line = sys.stdin.readline()
            if not line:
                return
        yield line.strip()


def chat(model, tokenizer, *, template, system, settings: GenerationSettings) -> None:
    """The chat loop on stdin/stdout."""
    history: list[dict] = []
    print("litft chat: type a message; /clear resets the conversation, /exit quits.", file=sys.stderr)
    for line in _lines():
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/clear":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        ids = prompt_ids(tokenizer, history, template=template, system=system)
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        [reply] = generate(model, tokenizer, [ids], streamer=streamer, **asdict(settings))
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply})


def run(cli) -> int:
    cfg, model_spec, template = cli.config, cli.model.spec, cli.datamodule.template
    model, tokenizer = load_model(model_spec, adapter=cfg.adapter, dtype=cfg.dtype, precision=cfg.get("trainer.precision"))
    chat(model, tokenizer, template=template, system=cfg.system, settings=GenerationSettings.from_config(cfg))
    return 0
