"""For tests/test_qlora_zero3.py, run in its own process (one rank, gloo): load each model folder given on the command
line 4-bit (bf16 storage) twice -- whole, and under ``litft.model.partition`` as litft loads it under ZeRO-3 -- and
print, per folder, which parameters were partitioned while loading and the largest difference of the two models'
logits (the partitioned one run with its parameters gathered)."""

from __future__ import annotations

import json
import os
import sys

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", DS_ACCELERATOR="cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from litft.model import partition  # noqa: E402

CONFIG = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}


def main(folders: list[str]) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    ids = torch.randint(0, 400, (1, 10), generator=torch.Generator().manual_seed(0))
    results = {}
    for folder in folders:
        whole = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=quantization,
                                                     device_map={"": "cpu"})
        with torch.no_grad():
            expected = whole(ids).logits.float()
        hf_config = HfDeepSpeedConfig(CONFIG)  # noqa: F841 (transformers keeps a weak reference: ZeRO-3 while alive)
        with partition.loading_into_partitions(CONFIG):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=quantization)
        streamed = sorted(n for n, p in model.named_parameters() if hasattr(p, "ds_id"))
        partition.partition_now(model, CONFIG)
        unpartitioned = sorted(n for n, p in model.named_parameters() if not hasattr(p, "ds_id"))
        with deepspeed.zero.GatheredParameters(list(model.parameters())), torch.no_grad():
            got = model(ids).logits.float()
        del hf_config
        results[folder] = {"streamed": streamed, "params": sorted(n for n, _ in model.named_parameters()),
                           "unpartitioned": unpartitioned, "max_diff": (got - expected).abs().max().item()}
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
