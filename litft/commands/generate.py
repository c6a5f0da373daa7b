"""``python -m litft generate --config X.yaml [--adapter DIR] --prompt "..."``: one completion, printed.

The prompt is rendered with the same chat template as the training data (``data.template``, else the
tokenizer's own), so a fine-tuned adapter sees exactly the format it was trained on. The model is the one
training builds (``litft.inference.load_model``: same dtype and 4/8-bit quantization) plus the adapter.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

from litft.errors import LitFTError
from litft.generation import generate
from litft.inference import GenerationSettings, add_inference_arguments, load_model, prompt_ids


def add_arguments(parser) -> None:
    add_inference_arguments(parser, batched=False)
    parser.add_argument("--prompt", type=Optional[str], default=None, help="The user message.")


def run(cli) -> int:
    cfg, model_spec, template = cli.config, cli.model.spec, cli.datamodule.template
    if not cfg.prompt:
        raise LitFTError("generate: give --prompt \"...\"")
    model, tokenizer = load_model(model_spec, adapter=cfg.adapter, dtype=cfg.dtype, precision=cfg.get("trainer.precision"))
    ids = prompt_ids(tokenizer, [{"role": "user", "content": cfg.prompt}], template=template, system=cfg.system)
    [text] = generate(model, tokenizer, [ids], **asdict(GenerationSettings.from_config(cfg)))
    print(text)
    return 0
