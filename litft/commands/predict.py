"""``python -m litft predict --config X.yaml [--adapter DIR] [--eval_dataset NAME|FILE] [--predictions OUT.jsonl]``

Generates a completion for every record of the evaluation data (any format the data pipeline reads; the last
assistant turn is the reference) and writes JSONL lines ``{"prompt", "prediction", "reference"}`` atomically.
The data is ``--eval_dataset``, else ``data.eval_dataset``; scoring the training data (``data.dataset``) needs
``--on_training_data`` and is said so. litft's predict is this command (Lightning's own ``predict`` subcommand
is not used: it would need a prediction loader and a writer callback for what is plain batched generation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from litft.commands.generate import add_generation_arguments, generation_kwargs, inference_model
from litft.data.registry import resolve
from litft.data.templates import encode_prompt
from litft.data.records import conversations
from litft.errors import LitFTError
from litft.generation import generate
from litft.io import atomic_write_text

log = logging.getLogger(__name__)


def add_prediction_arguments(parser, **kwargs) -> None:
    add_generation_arguments(parser, **kwargs)
    parser.add_argument("--eval_dataset", type=Optional[str], default=None,
                        help="Dataset name(s) in dataset_info.json or file path(s) (default: data.eval_dataset).")
    parser.add_argument("--on_training_data", type=bool, default=False,
                        help="Score the training data (data.dataset) when no evaluation data is given.")
    parser.add_argument("--max_samples", type=Optional[int], default=None, help="Use at most this many records.")
    parser.add_argument("--gen_batch_size", type=int, default=8, help="Prompts generated together.")


def add_arguments(parser) -> None:
    add_prediction_arguments(parser)
    parser.add_argument("--predictions", type=Optional[str], default=None,
                        help="Output JSONL (default: <output_dir>/predictions.jsonl, or predictions-base.jsonl without --adapter).")


def eval_data(cli) -> tuple[str, str]:
    """(dataset names/paths to score, where they come from), or a LitFTError when there is no evaluation data."""
    cfg, dm = cli.config, cli.datamodule
    if cfg.eval_dataset:
        return cfg.eval_dataset, "--eval_dataset"
    if getattr(dm, "eval_dataset", None):
        return dm.eval_dataset, "data.eval_dataset"
    if cfg.on_training_data:
        return dm.dataset, "data.dataset: the TRAINING data (--on_training_data)"
    raise LitFTError("no evaluation data: set data.eval_dataset or --eval_dataset "
                     "(or pass --on_training_data to score the training data, data.dataset)")


def load_examples(dm, dataset: str, max_samples: Optional[int] = None) -> list[tuple[list[dict], str, Optional[str]]]:
    """(prompt messages, reference, tools) for each record: the conversation up to its last assistant turn."""
    examples = []
    for entry in resolve(dataset, dm.dataset_dir):
        for conv in conversations(entry, on_bad_record=dm.on_bad_record):
            messages = conv.messages()
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None:
                raise LitFTError(f"predict: dataset '{entry.name}' has records without an assistant turn (no reference)")
            examples.append((messages[:last], messages[last]["content"], conv.tools))
    return examples[:max_samples] if max_samples else examples


def predict(cli, adapter: Optional[str], examples=None) -> list[dict]:
    """Predictions for the evaluation data with the base model (+ adapter)."""
    cfg, dm = cli.config, cli.datamodule
    if examples is None:
        examples = load_examples(dm, eval_data(cli)[0], cfg.max_samples)
    model, tokenizer = inference_model(cli, adapter)
    prompts = []
    for messages, _, tools in examples:
        if cfg.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": cfg.system}] + messages
        prompts.append(encode_prompt(tokenizer, messages, template=dm.template, tools=tools))
    outputs = generate(model, tokenizer, prompts, batch_size=cfg.gen_batch_size, **generation_kwargs(cfg))
    return [{"prompt": messages[-1]["content"], "prediction": out, "reference": ref}
            for (messages, ref, _), out in zip(examples, outputs)]


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def default_path(output_dir: str, adapter: Optional[str]) -> Path:
    return Path(output_dir) / ("predictions.jsonl" if adapter else "predictions-base.jsonl")


def run(cli) -> int:
    cfg = cli.config
    dataset, source = eval_data(cli)
    print(f"predict: scoring {dataset} ({source})")
    path = cfg.predictions or default_path(cfg.output_dir, cfg.adapter)
    rows = predict(cli, cfg.adapter, load_examples(cli.datamodule, dataset, cfg.max_samples))
    write_jsonl(rows, path)
    print(f"{len(rows)} predictions written to {path}")
    return 0
