"""``python -m litft predict --config X.yaml [--adapter DIR] [--eval_dataset NAME|FILE] [--predictions OUT.jsonl]``

Generates a completion for every record of a dataset (any format the data pipeline reads; the last assistant
turn is the reference) and writes JSONL lines ``{"prompt", "prediction", "reference"}`` atomically.
litft's predict is this command (Lightning's own ``predict`` subcommand is not used: it would need a
prediction loader and a writer callback for what is plain batched generation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from litft.commands.generate import add_generation_arguments
from litft.errors import LitFTError
from litft.inference import _get, encode_messages, generate, load_for_inference
from litft.io import atomic_write_text

NEEDS_TRAINER = False
log = logging.getLogger(__name__)


def add_prediction_arguments(parser, **kwargs) -> None:
    add_generation_arguments(parser, **kwargs)
    parser.add_argument("--eval_dataset", type=Optional[str], default=None,
                        help="Dataset name(s) in dataset_info.json or file path(s) (default: data.dataset).")
    parser.add_argument("--max_samples", type=Optional[int], default=None, help="Use at most this many records.")
    parser.add_argument("--gen_batch_size", type=int, default=8, help="Prompts generated together.")


def add_arguments(parser) -> None:
    add_prediction_arguments(parser)
    parser.add_argument("--predictions", type=Optional[str], default=None,
                        help="Output JSONL (default: <output_dir>/predictions.jsonl, or predictions-base.jsonl without --adapter).")


def load_examples(data_cfg, dataset: Optional[str] = None, max_samples: Optional[int] = None) -> list[tuple[list[dict], str, Optional[str]]]:
    """(prompt messages, reference, tools) for each record: the conversation up to its last assistant turn."""
    from litft.data.registry import resolve
    from litft.data.tokenize import conversations

    name = dataset or _get(data_cfg, "dataset")
    examples = []
    for entry in resolve(name, _get(data_cfg, "dataset_dir", "data")):
        for conv in conversations(entry):
            messages = conv.messages()
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None:
                raise LitFTError(f"predict: dataset '{entry.name}' has records without an assistant turn (no reference)")
            examples.append((messages[:last], messages[last]["content"], conv.tools))
    return examples[:max_samples] if max_samples else examples


def predict(cli_config, adapter: Optional[str]) -> list[dict]:
    """Predictions for the evaluation dataset with the base model (+ adapter)."""
    data_cfg = _get(cli_config, "data")
    examples = load_examples(data_cfg, _get(cli_config, "eval_dataset"), _get(cli_config, "max_samples"))
    model, tokenizer = load_for_inference(_get(cli_config, "model"), adapter)
    template = _get(data_cfg, "template")
    system = _get(cli_config, "system")
    prompts = []
    for messages, _, tools in examples:
        if system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}] + messages
        prompts.append(encode_messages(tokenizer, messages, template=template, tools=tools))
    outputs = generate(model, tokenizer, prompts, max_new_tokens=_get(cli_config, "max_new_tokens", 256),
                       temperature=_get(cli_config, "temperature", 0.0), top_p=_get(cli_config, "top_p", 1.0),
                       batch_size=_get(cli_config, "gen_batch_size", 8))
    return [{"prompt": messages[-1]["content"], "prediction": out, "reference": ref}
            for (messages, ref, _), out in zip(examples, outputs)]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def default_path(output_dir: str, adapter: Optional[str]) -> Path:
    return Path(output_dir) / ("predictions.jsonl" if adapter else "predictions-base.jsonl")


def run(cli) -> int:
    cfg = cli.config
    adapter = _get(cfg, "adapter")
    path = _get(cfg, "predictions") or default_path(_get(cfg, "output_dir"), adapter)
    rows = predict(cfg, adapter)
    write_jsonl(rows, path)
    print(f"{len(rows)} predictions written to {path}")
    return 0
