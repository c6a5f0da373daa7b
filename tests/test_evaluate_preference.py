"""``python -m litft evaluate`` on preference pairs: base (adapter off) vs fine-tuned (base + adapter), every number
equal to a direct computation from the models' full logits, pair by pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from litft.cli import run as litft_run
from litft.errors import LitFTError
from litft.methods.evaluation import METRICS, format_table

# Similar lengths on both sides: a random model prefers either reply.
PAIRS = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i} exactly", "rejected": f"{2 * i + 1} exactly"}
         for i in range(7)] + [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A dog."}]


@pytest.fixture(scope="module")
def run_dir(tiny_qwen2, tmp_path_factory):
    """A config (DPO, cutoff 64, eval batch 3: padded and uneven batches), the pairs, and a random LoRA adapter in
    <output_dir>/adapter (B != 0, so the adapter moves every log-probability)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("eval-pairs")
    (root / "pairs.json").write_text(json.dumps(PAIRS))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(root / "out" / "adapter")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(root / "out"),
        "model": {"name_or_path": tiny_qwen2, "method": "dpo", "dpo": {"beta": 0.25}},
        "data": {"dataset": str(root / "pairs.json"), "eval_dataset": str(root / "pairs.json"), "cutoff_len": 64,
                 "batch_size": 2, "eval_batch_size": 3},
    }))
    return root, config


def direct_logps(model_dir: str, adapter: Path | None) -> list[tuple[float, float, int, int]]:
    """(summed log p chosen, rejected, their token counts) per pair from the full logits, one row at a time: the
    trained tokens are the reply and its <|im_end|> (ChatML), after apply_chat_template(prompt)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for pair in PAIRS:
        prompt = [{"role": "user", "content": pair["prompt"]}]
        p = len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
        row = []
        for side in ("chosen", "rejected"):
            ids = tok.apply_chat_template(prompt + [{"role": "assistant", "content": pair[side]}], tokenize=True,
                                          return_dict=False)
            assert ids[-2] == end  # ... reply <|im_end|> \n: the newline is not trained
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            row.append((sum(lp[t - 1, ids[t]].item() for t in range(p, len(ids) - 1)), len(ids) - 1 - p))
        out.append((row[0][0], row[1][0], row[0][1], row[1][1]))
    return out


def expected(base, tuned, *, mean: bool, beta: float) -> dict[str, dict[str, float]]:
    def score(c, r, nc, nr):
        return (c / nc, r / nr) if mean else (c, r)

    def of(rows):
        s = [score(*row) for row in rows]
        n = len(s)
        return {"preference/accuracy": sum(c > r for c, r in s) / n, "preference/margin": sum(c - r for c, r in s) / n,
                "logps/chosen": sum(c for c, _ in s) / n, "logps/rejected": sum(r for _, r in s) / n}

    rewards = [(beta * (t[0] - b[0]), beta * (t[1] - b[1])) for b, t in zip(base, tuned)]
    n = len(rewards)
    return {"base": of(base), "fine-tuned": {**of(tuned),
            "rewards/accuracies": sum(c > r for c, r in rewards) / n,
            "rewards/margins": sum(c - r for c, r in rewards) / n,
            "rewards/chosen": sum(c for c, _ in rewards) / n, "rewards/rejected": sum(r for _, r in rewards) / n}}


def assert_results(got: dict, want: dict) -> None:
    assert set(got) == set(want) == {"base", "fine-tuned"}
    for label in want:
        assert set(got[label]) == set(want[label]), label
        for name, value in want[label].items():
            assert got[label][name] == pytest.approx(value, rel=1e-5, abs=1e-5), (label, name)


def test_evaluate_pairs_equals_a_direct_computation(run_dir, tiny_qwen2, capsys):
    root, config = run_dir
    base, tuned = direct_logps(tiny_qwen2, None), direct_logps(tiny_qwen2, root / "out" / "adapter")
    # The data is not one-sided, and the adapter moves every reply: a swap of chosen and rejected or a missing
    # adapter changes the numbers.
    assert 0 < sum(c > r for c, r, *_ in base) < len(PAIRS)
    assert all(abs(t[0] - b[0]) > 1e-3 and abs(t[1] - b[1]) > 1e-3 for b, t in zip(base, tuned))

    capsys.readouterr()
    assert litft_run(["evaluate", "--config", str(config)]) == 0  # DPO: summed log-probabilities, beta 0.25
    printed = capsys.readouterr().out
    report = json.loads((root / "out" / "eval_results.json").read_text())
    assert_results(report["scores"], expected(base, tuned, mean=False, beta=0.25))
    assert (report["kind"], report["method"], report["pairs"], report["beta"]) == ("preference", "dpo", len(PAIRS), 0.25)
    assert report["data"] == f"{root / 'pairs.json'} (data.eval_dataset)"
    assert report["change"] == {m: report["scores"]["fine-tuned"][m] - report["scores"]["base"][m]
                                for m in ("preference/accuracy", "preference/margin", "logps/chosen", "logps/rejected")}
    lines = printed.splitlines()
    assert lines[0].split() == ["metric", "base", "fine-tuned", "change"]
    assert lines[1].split() == ["preference/accuracy", f"{report['scores']['base']['preference/accuracy']:.4f}",
                                f"{report['scores']['fine-tuned']['preference/accuracy']:.4f}",
                                f"{report['change']['preference/accuracy']:+.4f}"]
    assert lines[5].split()[:2] == ["rewards/accuracies", "-"]  # the base has no reward of its own

    # SimPO scores a reply by its mean token log-probability; rewards stay DPO's (model.dpo.beta, default 0.1).
    assert litft_run(["evaluate", "--config", str(config), "--model.method", "simpo", "--model.dpo.beta", "0.1"]) == 0
    report = json.loads((root / "out" / "eval_results.json").read_text())
    assert_results(report["scores"], expected(base, tuned, mean=True, beta=0.1))
    assert report["score"] == "mean log-probability per reply token"

    # An SFT run whose evaluation data is pairs is scored the same way (summed), from --eval_dataset; --max_samples.
    assert litft_run(["evaluate", "--config", str(config), "--model.method", "sft", "--data.eval_dataset", "null",
                      "--data.dataset", "unused.json", "--eval_dataset", str(root / "pairs.json"),
                      "--max_samples", "5"]) == 0
    report = json.loads((root / "out" / "eval_results.json").read_text())
    assert report["pairs"] == 5 and report["data"] == f"{root / 'pairs.json'} (--eval_dataset)"
    assert_results(report["scores"], expected(base[:5], tuned[:5], mean=False, beta=0.25))


def test_held_out_split_and_no_evaluation_data(run_dir):
    root, config = run_dir
    out = root / "out"
    assert litft_run(["evaluate", "--config", str(config), "--data.eval_dataset", "null", "--data.val_size", "3"]) == 0
    report = json.loads((out / "eval_results.json").read_text())
    assert report["pairs"] == 3
    assert report["data"] == f"{root / 'pairs.json'} (data.val_size: 3 held out, seed 42)"
    with pytest.raises(LitFTError, match=r"^no evaluation pairs: set data.eval_dataset or data.val_size"):
        litft_run(["evaluate", "--config", str(config), "--data.eval_dataset", "null"])


def test_table_marks_what_the_base_has_not():
    base = {"preference/accuracy": 0.5, "preference/margin": -1.0, "logps/chosen": -3.0, "logps/rejected": -2.0}
    tuned = {**base, "preference/accuracy": 0.75, "rewards/accuracies": 1.0, "rewards/margins": 0.5,
             "rewards/chosen": 0.25, "rewards/rejected": -0.25}
    lines = format_table({"base": base, "fine-tuned": tuned}, 4, method="dpo", beta=0.1).splitlines()
    assert [line.split()[0] for line in lines[1:9]] == list(METRICS)
    assert lines[1].split() == ["preference/accuracy", "0.5000", "0.7500", "+0.2500"]
    assert lines[5].split() == ["rewards/accuracies", "-", "1.0000", "-"]
    assert lines[9].startswith("(4 pairs; logps: summed log-probability of the reply tokens (dpo)")
