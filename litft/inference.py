"""Inference from plain values: the model to generate with, evaluation examples, prompts, predictions, JSONL.

The commands ``generate``, ``chat``, ``predict``, ``evaluate`` and ``export`` (``litft/commands/``) read the CLI once
and call these functions with what they pulled off it (the typed ``model:`` section, the template, the generation
settings, paths); nothing here sees the CLI. The flags these commands share are registered here too, so commands
never import each other. Generation itself is :func:`litft.generation.generate` (also used by the probe callback);
scoring is :mod:`litft.metrics`.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, NamedTuple, Optional

import docstring_parser  # a dependency of jsonargparse[signatures]: reads the fields' docstrings for --help

from litft.data.records import conversations
from litft.data.registry import resolve
from litft.data.templates import encode_prompt
from litft.errors import LitFTError
from litft.generation import generate
from litft.io import atomic_write_text
from litft.model import build
from litft.model.build import ModelSpec
from litft.model.loading import load_tokenizer


# ---------------------------------------------------------------------------------------------------- flags
@dataclass
class GenerationSettings:
    """How completions are generated: the generation flags of generate, chat, predict and evaluate."""

    max_new_tokens: int = 256
    """Most tokens to generate."""
    temperature: float = 0.0
    """0 = greedy decoding; > 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    stop: Optional[list[str]] = None
    """Stop strings: generation stops at the first one, and the text is cut before it."""
    batch_size: int = 8
    """Prompts generated together."""

    FLAGS: ClassVar[dict[str, str]] = {"batch_size": "gen_batch_size"}  # field -> flag name where they differ

    @classmethod
    def add_arguments(cls, parser, *, batched: bool = True) -> None:
        """One flag per field (help: the field's docstring); ``batched=False`` leaves out ``--gen_batch_size``
        (generate and chat complete one prompt at a time)."""
        helps = {p.arg_name: p.description for p in docstring_parser.parse_from_object(cls).params}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "batch_size" and not batched:
                continue
            kind = dict(type=str, nargs="+") if f.name == "stop" else dict(type=hints[f.name])
            parser.add_argument(f"--{cls.FLAGS.get(f.name, f.name)}", default=f.default, help=helps[f.name], **kind)

    @classmethod
    def from_config(cls, cfg) -> "GenerationSettings":
        """The settings from a parsed config (flags that a command does not register keep their defaults)."""
        values = {}
        for f in fields(cls):
            value = cfg.get(cls.FLAGS.get(f.name, f.name))
            if value is not None:
                values[f.name] = value
        return cls(**values)


def add_inference_arguments(parser, *, adapter_help: str = "PEFT adapter folder (default: the base model alone).",
                            batched: bool = True) -> None:
    """Flags of generate, chat, predict and evaluate: the adapter, the system message, the inference dtype and
    :class:`GenerationSettings`."""
    parser.add_argument("--adapter", type=Optional[str], default=None, help=adapter_help)
    parser.add_argument("--system", type=Optional[str], default=None, help="System prompt.")
    parser.add_argument("--dtype", type=Optional[str], default=None,
                        help="Override model.dtype for inference (float32, bfloat16, float16); the base is quantized "
                             "as in training (model.quantization) unless you pass --model.quantization null.")
    GenerationSettings.add_arguments(parser, batched=batched)


def add_eval_data_arguments(parser) -> None:
    """Flags of predict and evaluate: which records to predict (see :func:`eval_source`, :func:`load_examples`)."""
    parser.add_argument("--eval_dataset", type=Optional[str], default=None,
                        help="Dataset name(s) in dataset_info.json or file path(s) (default: data.eval_dataset).")
    parser.add_argument("--on_training_data", type=bool, default=False,
                        help="Score the training data (data.dataset) when no evaluation data is given.")
    parser.add_argument("--max_samples", type=Optional[int], default=None, help="Use at most this many records.")


# ---------------------------------------------------------------------------------------------------- the model
def load_model(spec: ModelSpec, *, adapter: Optional[str] = None, dtype: Optional[str] = None, precision=None,
               quantized: bool = True, device: Optional[str] = None):
    """(model, tokenizer) to generate with or merge: the base that training builds from ``spec`` (the ``model:``
    section; same dtype, same 4/8-bit quantization: :func:`litft.model.build.inference_model`) plus the PEFT
    ``adapter``; eval mode, KV cache on. ``dtype`` overrides ``model.dtype``; ``auto`` follows ``precision``
    (``trainer.precision``); ``quantized=False`` loads the base unquantized; ``device`` defaults to cuda when
    available, else cpu.

    The one place inference builds a model: every command goes through it."""
    model = build.inference_model(spec, adapter, dtype=dtype, precision=precision, quantized=quantized, device=device)
    tokenizer = load_tokenizer(spec.name_or_path, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------- examples
class Example(NamedTuple):
    """One record to predict: the conversation up to its last assistant turn, that turn's text, the tools."""

    messages: list[dict]
    reference: str
    tools: Optional[str] = None


def eval_source(eval_dataset: Optional[str], *, configured: Optional[str], training: str,
                on_training_data: bool) -> tuple[str, str]:
    """(dataset names/paths to predict, where they come from): ``--eval_dataset``, else ``data.eval_dataset``
    (``configured``), else the training data ``data.dataset`` only with ``--on_training_data``."""
    if eval_dataset:
        return eval_dataset, "--eval_dataset"
    if configured:
        return configured, "data.eval_dataset"
    if on_training_data:
        return training, "data.dataset: the TRAINING data (--on_training_data)"
    raise LitFTError("no evaluation data: set data.eval_dataset or --eval_dataset "
                     "(or pass --on_training_data to score the training data, data.dataset)")


def load_examples(dataset: str, *, dataset_dir: str = "data", on_bad_record: str = "error",
                  max_samples: Optional[int] = None) -> list[Example]:
    """The records of ``dataset`` (any format the data pipeline reads) as :class:`Example` s, at most
    ``max_samples``. Read once per command: evaluate predicts base and fine-tuned from the same list."""
    examples = []
    for entry in resolve(dataset, dataset_dir):
        for conv in conversations(entry, on_bad_record=on_bad_record):
            messages = conv.messages()
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None:
                raise LitFTError(f"predict: dataset '{entry.name}' has records without an assistant turn (no reference)")
            examples.append(Example(messages[:last], messages[last]["content"], conv.tools))
    return examples[:max_samples] if max_samples else examples


# ---------------------------------------------------------------------------------------------------- prompts
def prompt_ids(tokenizer, messages: Sequence[dict], *, template=None, system: Optional[str] = None,
               tools: Optional[str] = None) -> list[int]:
    """Token ids of ``messages`` (ending with a user turn) plus the assistant generation prompt, rendered with the
    training template (``data.template``; None = the tokenizer's own). ``system`` is put first as a system turn,
    unless it is empty or the conversation has its own: the one place commands add the system message."""
    messages = list(messages)
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + messages
    return encode_prompt(tokenizer, messages, template=template, tools=tools)


# ---------------------------------------------------------------------------------------------------- generation
def predict(model, tokenizer, examples: Sequence[Example], *, settings: GenerationSettings, template=None,
            system: Optional[str] = None) -> list[dict]:
    """Prediction rows ``{"prompt", "prediction", "reference"}`` for ``examples`` (the prompt is the last user
    message)."""
    prompts = [prompt_ids(tokenizer, ex.messages, template=template, system=system, tools=ex.tools) for ex in examples]
    outputs = generate(model, tokenizer, prompts, **asdict(settings))
    return [{"prompt": ex.messages[-1]["content"], "prediction": out, "reference": ex.reference}
            for ex, out in zip(examples, outputs)]


def predictions_path(output_dir: str | Path, adapter: Optional[str]) -> Path:
    """Where predictions go by default: ``predictions.jsonl`` with an adapter, ``predictions-base.jsonl`` without."""
    return Path(output_dir) / ("predictions.jsonl" if adapter else "predictions-base.jsonl")


def write_jsonl(rows: Sequence[dict], path: str | Path) -> Path:
    """One JSON object per line, written atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
