"""``python -m litft generate --config X.yaml [--adapter DIR] --prompt "..."``: one completion, printed.

The prompt is rendered with the same chat template as the training data (``data.template``, else the
tokenizer's own), so a fine-tuned adapter sees exactly the format it was trained on. The model is the one
training builds (``litft.model.build.inference_model``: same dtype and 4/8-bit quantization) plus the adapter.
"""

from __future__ import annotations

from typing import Optional

from litft.data.templates import encode_prompt
from litft.errors import LitFTError
from litft.generation import generate
from litft.model import build


def add_generation_arguments(parser, adapter_help: str = "PEFT adapter folder (default: the base model alone).") -> None:
    """Flags shared by generate, chat, predict and evaluate."""
    parser.add_argument("--adapter", type=Optional[str], default=None, help=adapter_help)
    parser.add_argument("--system", type=Optional[str], default=None, help="System prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="Most tokens to generate.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding; > 0 samples.")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (with temperature > 0).")
    parser.add_argument("--stop", type=str, nargs="+", default=None,
                        help="Stop strings: generation stops at the first one, and the text is cut before it.")
    parser.add_argument("--dtype", type=Optional[str], default=None,
                        help="Override model.dtype for inference (float32, bfloat16, float16); the base is quantized "
                             "as in training (model.quantization) unless you pass --model.quantization null.")


def add_arguments(parser) -> None:
    add_generation_arguments(parser)
    parser.add_argument("--prompt", type=Optional[str], default=None, help="The user message.")


def messages_for(system: Optional[str], user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def inference_model(cli, adapter: Optional[str]):
    """(model, tokenizer) for the CLI's typed LitFTModule: training's base (dtype, quantization) + ``adapter``."""
    cfg = cli.config
    trainer_cfg = cfg.get("trainer") or {}
    precision = trainer_cfg.get("precision") if hasattr(trainer_cfg, "get") else None
    model = build.inference_model(cli.model.spec, adapter, dtype=cfg.get("dtype"), precision=precision)
    return model, cli.model.tokenizer


def generation_kwargs(cfg) -> dict:
    return dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, stop=cfg.stop)


def run(cli) -> int:
    cfg = cli.config
    if not cfg.prompt:
        raise LitFTError("generate: give --prompt \"...\"")
    model, tokenizer = inference_model(cli, cfg.adapter)
    ids = encode_prompt(tokenizer, messages_for(cfg.system, cfg.prompt), template=cli.datamodule.template)
    [text] = generate(model, tokenizer, [ids], **generation_kwargs(cfg))
    print(text)
    return 0
