"""Tiny random models and data built locally, without a network: for trying a config or a pipeline end to end in
seconds on a CPU, and for litft's own tests and scripts.

    from litft.testing import build_tiny_model, write_alpaca
    build_tiny_model("llama", "tiny-llama")        # a 2-layer random Llama + a BPE tokenizer trained here
    write_alpaca("alpaca.json", n=32)              # learnable records: "What is i plus i?" -> "2i"

The models are random: they train and save like real ones, but say nothing useful.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PhiConfig, PreTrainedTokenizerFast, Qwen2Config

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A Llama-3-style template (header ids, <|eot_id|> ends each turn, BOS first).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<pad>",
]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Give three tips for staying healthy. Eat well, sleep enough and exercise.",
    "What is the capital of France? The capital of France is Paris.",
    "Translate the following sentence into French: good morning.",
    "Summarize the report: emissions fell by ten percent while revenue grew.",
    "Instruction, input and output fields make an alpaca record.",
    "user assistant system tool observation function call response",
    "You are a helpful assistant. Answer briefly and correctly.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 2025",
    "Hello! How can I help you today? I am fine, thank you.",
    "Sustainability, governance, entities, attributes and relationships in YAML.",
    "你好，世界。 今天天气很好。",
]


def build_tokenizer(out_dir: str | Path, *, template: str = "chatml", vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on a small corpus and save it as a transformers tokenizer.

    template: "chatml" (eos <|im_end|>, no BOS) or "llama3" (bos <|begin_of_text|>, eos <|eot_id|>).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if template == "chatml":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", chat_template=CHATML_TEMPLATE
        )
    elif template == "llama3":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<pad>",
            chat_template=LLAMA3_TEMPLATE,
        )
    elif template == "none":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")
    else:
        raise ValueError(template)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(arch: str, out_dir: str | Path, *, template: str | None = None, seed: int = 0) -> Path:
    """Save a tiny random causal LM (``llama``, ``qwen2`` or ``phi``) with a local tokenizer to out_dir."""
    out_dir = Path(out_dir)
    template = template or {"llama": "llama3", "qwen2": "chatml", "phi": "chatml"}[arch]
    tokenizer = build_tokenizer(out_dir, template=template)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "phi":
        common.pop("num_key_value_heads")
        config = PhiConfig(**common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def write_alpaca(path: str | Path, n: int = 32, *, with_system: bool = False) -> Path:
    """A small alpaca JSON file with deterministic, learnable records."""
    records = []
    for i in range(n):
        rec = {"instruction": f"What is {i} plus {i}?", "input": "" if i % 2 else "Answer with a number.", "output": f"{2 * i}"}
        if with_system:
            rec["system"] = "You are a calculator."
        records.append(rec)
    path = Path(path)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
