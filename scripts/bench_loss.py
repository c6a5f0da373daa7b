"""Loss memory benchmark (scenario ``loss-memory``): one training step of a tiny Llama with Qwen2.5's 151,936-token
vocabulary on 4 rows x 2,048 trained tokens, three ways side by side:

    old   the loss before the chunked one (litft <= this change): head + cross-entropy on trained positions in
          chunks of 8,192 tokens, every chunk's fp32 logits kept by autograd until backward
    new   litft's loss now (LitFTModule.loss_sum): chunks whose logits never outlive the chunk
    hf    transformers' default, model(input_ids, labels=...).loss (full logits of every position)

Each variant runs in its own process: model build, one warm-up step, then one measured step (forward, loss,
backward, AdamW step on the LoRA weights). Reported per variant: the step's peak RSS above the RSS just before
it (VmHWM reset through /proc/self/clear_refs), that step's wall time, and the loss value (equal across variants).

    python scripts/bench_loss.py --out docs/bench/loss_memory.json
    python scripts/bench_loss.py --rows 4 --seq 512 --out /tmp/small.json     # smaller, for a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import write_results  # noqa: E402  (the scripts folder: one helper for the benchmark scripts)
VOCAB = 151_936
VARIANTS = ("old", "new", "hf")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


def _mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def build_model(out: Path, vocab: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


def old_loss_from_hidden(hidden, head, labels, chunk_size: int = 8192):
    """The loss as it was: chunks of 8,192 trained tokens, autograd keeps each chunk's fp32 logits."""
    import torch.nn.functional as F

    targets = labels[..., 1:]
    mask = targets != -100
    selected = hidden[..., :-1, :][mask]
    wanted = targets[mask]
    total = hidden.new_zeros((), dtype=hidden.dtype).float()
    for start in range(0, wanted.numel(), chunk_size):
        logits = head(selected[start : start + chunk_size]).float()
        total = total + F.cross_entropy(logits, wanted[start : start + chunk_size], reduction="sum")
    return total, mask.sum()


def run_variant(variant: str, model_dir: str, rows: int, seq: int) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from litft.model.config import LoraConfig
    from litft.model.module import LitFTModule

    module = LitFTModule(model_dir, lora=LoraConfig(r=16, alpha=32, dropout=0.0))
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (rows, seq + 1), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        if variant == "new":
            total, n = module.loss_sum(batch)
        elif variant == "old":
            base = module.base_model()
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
            total, n = old_loss_from_hidden(hidden, base.get_output_embeddings(), batch["labels"])
        else:
            loss = module.model(**batch).loss
            total, n = loss * rows * seq, torch.tensor(rows * seq)
        loss = total / n
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step()  # warm-up: first-call costs (allocator, the shortcut check of the new loss)
    _reset_peak()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    value = step()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"variant": variant, "step_s": round(seconds, 3),
            "step_peak_above_start_mib": round((peak - before) / 1024, 1),
            "rss_before_step_mib": round(before / 1024, 1), "loss_after_one_step": value,
            "trained_tokens": rows * seq, "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=False, help="JSON file to write (atomically)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048, help="trained tokens per row")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-gib", type=float, default=20.0,
                        help="address-space cap of each variant's process (a shared machine fails one run, not others)")
    parser.add_argument("--_variant", help=argparse.SUPPRESS)
    parser.add_argument("--_model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._variant:
        print(json.dumps(run_variant(args._variant, args._model, args.rows, args.seq)))
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    full_logits_mib = args.rows * args.seq * VOCAB * 4 / 2**20
    results: dict = {"vocab": VOCAB, "rows": args.rows, "trained_tokens_per_row": args.seq,
                     "fp32_logits_of_all_trained_tokens_mib": round(full_logits_mib, 1),
                     "mem_available_at_start_mib": round(_mem_available_mib()), "cpus": os.cpu_count(),
                     "load_avg_at_start": os.getloadavg(), "address_space_cap_gib": args.max_gib, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", VOCAB)
        for variant in variants:
            if variant != "new" and _mem_available_mib() < 4 * full_logits_mib:
                results["variants"][variant] = {"skipped": f"needs ~{4 * full_logits_mib:.0f} MiB free"}
                continue
            cmd = [sys.executable, __file__, "--_variant", variant, "--_model", str(model_dir),
                   "--rows", str(args.rows), "--seq", str(args.seq)]
            cap = int(args.max_gib * 2**30)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
            if proc.returncode != 0:
                results["variants"][variant] = {"failed": proc.stderr[-600:]}
                print(f"bench_loss.py: variant {variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results["variants"][variant] = res
            print(json.dumps(res), flush=True)
    done = {k: v for k, v in results["variants"].items() if "step_s" in v}
    if "old" in done and "new" in done:
        results["old_over_new_memory"] = round(done["old"]["step_peak_above_start_mib"]
                                               / max(done["new"]["step_peak_above_start_mib"], 1e-9), 2)
        results["new_over_old_time"] = round(done["new"]["step_s"] / done["old"]["step_s"], 3)
    if "hf" in done and "new" in done:
        results["hf_over_new_memory"] = round(done["hf"]["step_peak_above_start_mib"]
                                              / max(done["new"]["step_peak_above_start_mib"], 1e-9), 2)
        results["new_over_hf_time"] = round(done["new"]["step_s"] / done["hf"]["step_s"], 3)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
