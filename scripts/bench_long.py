"""Long-context memory benchmark (scenario ``long-context``): per-rank memory of one training step on long rows,
with sequence parallelism (N = 1 or 2 processes per sequence) and the tiled MLP off or on, on CPU.

Every run is a real ``litft fit`` on CPU through ``LitFTDeepSpeedStrategy`` (ZeRO-2, gloo): N = 1 is one process,
N = 2 two processes with ``sequence_parallel_size: 2`` (one sequence split over both). The model is a random tiny
Llama whose MLP is wide (hidden 128, intermediate 1,536, 2 layers, 4 heads / 2 kv heads, vocabulary 512) so that
activations, not weights or logits, dominate; LoRA r=16 on every linear layer, gradient checkpointing on, batch 1
row of exactly ``L`` tokens (rows cut at ``cutoff_len = L``), SGD, two optimizer steps.

Measured per rank: the peak resident set (RSS, Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` when the
second step starts) above the RSS at that moment, i.e. what the step itself adds (activations, gradients,
communication buffers); the second step so that one-time allocations are not counted. glibc's dynamic mmap threshold
is pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed large tensors return to the OS and RSS follows live memory.
Not torch's allocator: torch keeps no peak statistics for CPU memory.

For each setting the lengths are tried in increasing order until a step's per-rank peak exceeds ``--budget-mib``:
the longest length that stayed within it is that setting's longest fitting sequence (coarse: the lengths tried).

    python scripts/bench.py long-context --out docs/bench/long_context.json
    python scripts/bench_long.py --lengths 512,1024 --settings n1,n2 --budget-mib 1000      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import write_results  # noqa: E402  (the scripts folder: one helper for the benchmark scripts)
SCRIPTS = Path(__file__).resolve().parent
SHAPE = dict(hidden_size=128, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=1 << 17, tie_word_embeddings=False)
SETTINGS = {  # name -> (processes per sequence, model.tiled_mlp)
    "n1": (1, None),
    "n1-tiled": (1, 8),
    "n2": (2, None),
    "n2-tiled": (2, 8),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class StepMemory(pl.Callback):
    """Per rank: the second training step's peak RSS above the RSS when it starts (``step{rank}.json``)."""

    def __init__(self, record_dir: str):
        self.record_dir = record_dir
        self.before = 0
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
            self.before = _status_kib("VmRSS")
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != 1:
            return
        record = {"rank": trainer.global_rank, "step_s": round(time.perf_counter() - self.t0, 2),
                  "step_peak_above_start_mib": round((_status_kib("VmHWM") - self.before) / 1024, 1),
                  "rss_before_step_mib": round(self.before / 1024, 1),
                  "batch_tokens": int(batch["input_ids"].numel())}
        Path(self.record_dir, f"step{trainer.global_rank}.json").write_text(json.dumps(record))


def build_inputs(root: Path, longest: int) -> tuple[Path, Path]:
    """The tiny model (with litft's test tokenizer) and 4 alpaca records longer than ``longest`` tokens."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(REPO))
    from litft.testing import build_tokenizer

    model_dir = root / "model"
    tokenizer = build_tokenizer(model_dir, template="chatml")
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(model_dir)
    records = [{"instruction": f"Count on from {i}.", "input": "",
                "output": " ".join(str((i * 7919 + k) % 1000) for k in range(longest))} for i in range(4)]
    data = root / "rows.json"
    data.write_text(json.dumps(records))
    return model_dir, data


def run(setting: str, length: int, model_dir: Path, data: Path, root: Path, timeout: int) -> dict:
    import yaml

    n, tiled = SETTINGS[setting]
    out = root / f"{setting}-{length}"
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "output_dir": str(out), "seed_everything": 0,
        "model": {"name_or_path": str(model_dir), "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                  "gradient_checkpointing": True, "tiled_mlp": tiled,
                  "optimizer": {"name": "sgd", "lr": 1e-3}, "scheduler": {"name": "constant"}},
        "data": {"dataset": str(data), "cutoff_len": length, "batch_size": 1, "num_workers": 0, "val_size": 0},
        "trainer": {"accelerator": "cpu", "devices": n, "num_nodes": 1, "max_steps": 2, "precision": "32-true",
                    "strategy": {"class_path": "litft.strategies.LitFTDeepSpeedStrategy",
                                 "init_args": {"stage": 2, **({"sequence_parallel_size": n} if n > 1 else {})}},
                    "log_every_n_steps": 1, "enable_checkpointing": False, "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(out), "name": "", "version": "logs"}},
                    "callbacks": [{"class_path": "bench_long.StepMemory", "init_args": {"record_dir": str(out)}}]},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(SCRIPTS)]), "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MALLOC_MMAP_THRESHOLD_": "131072",
           "LITFT_CACHE": str(out / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", str(out / "config.yaml")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = round(time.perf_counter() - t0, 1)
    ranks = sorted(out.glob("step*.json"))
    if proc.returncode != 0 or len(ranks) != n:
        return {"failed": f"exit {proc.returncode}", "log_tail": (proc.stdout + proc.stderr)[-2000:], "wall_s": wall}
    per_rank = [json.loads(p.read_text()) for p in ranks]
    losses = []
    metrics = out / "logs" / "metrics.csv"
    if metrics.is_file():
        import csv

        losses = [float(r["train/loss"]) for r in csv.DictReader(open(metrics)) if r.get("train/loss")]
    return {"processes": n, "tiled_mlp": tiled, "length": length, "wall_s": wall, "losses": losses,
            "peak_mib_per_rank": [r["step_peak_above_start_mib"] for r in per_rank],
            "max_peak_mib": max(r["step_peak_above_start_mib"] for r in per_rank),
            "step_s": max(r["step_s"] for r in per_rank),
            "tokens_per_rank": length // n, "ranks": per_rank}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="row lengths to try, increasing")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="subset of: " + ", ".join(SETTINGS))
    parser.add_argument("--budget-mib", type=float, default=50.0, help="per-rank step peak a setting must stay within")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run")
    parser.add_argument("--out", help="JSON file to write (atomically)")
    args = parser.parse_args(argv)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    settings = [s for s in args.settings.split(",") if s]
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings: {', '.join(sorted(unknown))}")
    results: dict = {"shape": SHAPE, "lora_r": 16, "gradient_checkpointing": True, "tiled_mlp_shards": 8,
                     "budget_mib": args.budget_mib, "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                     "measure": "per-rank peak RSS (VmHWM) of the second step above the RSS at its start",
                     "runs": {}, "longest_fitting": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, data = build_inputs(root, max(lengths) + 64)
        for setting in settings:
            fits = None
            for length in lengths:
                res = run(setting, length, model_dir, data, root, args.timeout)
                results["runs"][f"{setting}@{length}"] = res
                print(f"bench_long.py: {setting} L={length}: {json.dumps(res)[:400]}", file=sys.stderr, flush=True)
                if "failed" in res or res["max_peak_mib"] > args.budget_mib:
                    break
                fits = length
            results["longest_fitting"][setting] = fits
    runs = results["runs"]
    ratios = {}
    for length in lengths:
        for tiled in ("", "-tiled"):
            one, two = runs.get(f"n1{tiled}@{length}", {}), runs.get(f"n2{tiled}@{length}", {})
            if "max_peak_mib" in one and "max_peak_mib" in two:
                ratios[f"n2{tiled}/n1{tiled}@{length}"] = round(two["max_peak_mib"] / one["max_peak_mib"], 3)
        plain, tiled_run = runs.get(f"n1@{length}", {}), runs.get(f"n1-tiled@{length}", {})
        if "max_peak_mib" in plain and "max_peak_mib" in tiled_run:
            ratios[f"n1-tiled/n1@{length}"] = round(tiled_run["max_peak_mib"] / plain["max_peak_mib"], 3)
    results["peak_ratios"] = ratios
    write_results(results, args.out)


if __name__ == "__main__":
    main()
