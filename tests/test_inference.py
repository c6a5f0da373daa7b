"""One typed way from config to an inference model (litft.model.build.inference_model), the inference functions on plain values
(litft/inference.py), the shared batched generation helper with stop strings, and the evaluation scores (CJK-aware ROUGE, BLEU-4, exact match)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from litft import inference
from litft.cli import run as litft_run
from litft.errors import LitFTError
from litft.generation import cut_at_stop, generate
from litft.metrics import bleu4, exact_match, rouge, score
from litft.model.build import inference_model
from litft.model.config import QuantizationConfig
from litft.model.module import LitFTModule
from litft.testing import write_alpaca


def test_inference_model_loads_the_base_as_training_does(tiny_qwen2):
    import bitsandbytes as bnb

    qlora = LitFTModule(tiny_qwen2, quantization=QuantizationConfig(bits=4)).spec
    model = inference_model(qlora, device="cpu")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14  # 2 layers x 7 linears
    assert not model.training and model.config.use_cache
    plain = inference_model(qlora, device="cpu", quantized=False)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())
    assert inference_model(LitFTModule(tiny_qwen2, dtype="bfloat16").spec, device="cpu").dtype == torch.bfloat16
    auto = LitFTModule(tiny_qwen2).spec  # dtype auto follows the trainer's precision
    assert inference_model(auto, device="cpu", precision="bf16-mixed").dtype == torch.bfloat16
    assert inference_model(auto, device="cpu", precision="32-true").dtype == torch.float32
    assert inference_model(auto, device="cpu", dtype="float16").dtype == torch.float16
    with pytest.raises(LitFTError, match="not a PEFT adapter folder"):
        inference_model(auto, "/nonexistent/adapter")


@pytest.mark.parametrize("quantized", [True, False], ids=["qlora", "lora"])
def test_training_and_inference_build_the_same_base(tiny_qwen2, quantized):
    """One builder: the base LitFTModule trains (configure_model under bf16-mixed) and the base inference loads for
    that precision hold the same weights, in the same dtype, 4-bit where training quantized it (same packed weights,
    same compute dtype)."""
    import bitsandbytes as bnb

    from litft.model.config import LoraConfig
    from tests.helpers import attach_trainer

    module = LitFTModule(tiny_qwen2, lora=LoraConfig(r=4, alpha=8, dropout=0.0),
                         quantization=QuantizationConfig(bits=4) if quantized else None)
    attach_trainer(module, precision="bf16-mixed").configure_model()
    trained = {n.replace(".base_layer", ""): m for n, m in module.base_model().named_modules() if "lora_" not in n}
    served = dict(inference_model(module.spec, device="cpu", precision="bf16-mixed").named_modules())
    assert sorted(trained) == sorted(served)
    n_4bit = 0
    for name, s in served.items():
        t = trained[name]
        assert type(s) is type(t), name
        if isinstance(s, bnb.nn.Linear4bit):
            n_4bit += 1
            assert s.compute_dtype == t.compute_dtype == torch.bfloat16, name
            assert torch.equal(s.weight.data, t.weight.data), name
            unpacked = [bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in (s, t)]
            assert torch.equal(*unpacked), name
            continue
        for key, p in s.named_parameters(recurse=False):
            q = t.get_parameter(key)
            assert p.dtype == torch.bfloat16 and torch.equal(p, q.to(p.dtype)), f"{name}.{key}"
            if not quantized:  # a LoRA base stays in the dtype it was loaded in (QLoRA upcasts its norms to fp32)
                assert q.dtype == torch.bfloat16, f"{name}.{key}"
    assert n_4bit == (14 if quantized else 0)  # 2 layers x 7 linears


def test_stop_strings_cut_the_text_before_the_first_one():
    assert cut_at_stop("A summary.\n### End\nmore", ["### End"]) == "A summary."
    assert cut_at_stop("x ### End y <|x|> z", ["<|x|>", "### End"]) == "x"
    assert cut_at_stop(" no stop here ", ["### End"]) == "no stop here"
    assert cut_at_stop("abc", None) == "abc"


def test_generation_with_a_stop_string_is_the_unstopped_text_cut(tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    prompts = [tok("hello there")["input_ids"], tok("a longer prompt to pad")["input_ids"]]
    full = generate(model, tok, prompts, max_new_tokens=12, batch_size=2)
    assert all(len(t) > 4 for t in full)
    stop = full[0][2:4]  # a piece of the first answer
    stopped = generate(model, tok, prompts, max_new_tokens=12, batch_size=2, stop=[stop])
    assert stopped == [cut_at_stop(t, [stop]) for t in full]
    assert stopped[0] == full[0][: full[0].find(stop)].strip()


def test_rouge_scores_chinese_partial_matches_per_character():
    # 公司甲碳排放量 vs 公司乙用水量: unigrams 公 司 量 shared (P 3/7, R 3/6), one shared bigram 公司 (P 1/6, R 1/5),
    # LCS 公司量 (3).
    scores = rouge(["公司甲碳排放量"], ["公司乙用水量"])
    assert scores["rouge1"] == pytest.approx(100 * 6 / 13)
    assert scores["rouge2"] == pytest.approx(100 * 2 / 11)
    assert scores["rougeL"] == pytest.approx(100 * 6 / 13)
    mixed = rouge(["排放量 is 3 tons"], ["排放量 was 3 tons"])  # CJK characters and stemmed English together
    assert mixed["rouge1"] == pytest.approx(100 * 5 / 6)


def test_bleu4_and_exact_match_exact_values():
    assert bleu4(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu4(["the cat"], ["the cat sat on the mat"]) == 0.0  # no 4-gram
    # pred 5 tokens vs ref 6: p1 5/5, p2 4/4, p3 3/3, p4 2/2; brevity penalty exp(1 - 6/5)
    assert bleu4(["the cat sat on the"], ["the cat sat on the mat"]) == pytest.approx(100 * 2.718281828 ** (1 - 6 / 5))
    assert bleu4(["公司甲碳排放量"], ["公司甲碳排放量"]) == pytest.approx(100.0)
    assert exact_match(["a  b ", "c"], ["a b", "d"]) == 50.0
    assert set(score(["a"], ["a"])) == {"rouge1", "rouge2", "rougeL", "bleu4", "exact_match"}


def test_inference_functions_take_plain_values(tiny_qwen2, tmp_path):
    """Model spec, examples, template, system message and settings in; prediction rows out; no CLI anywhere."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_alpaca(tmp_path / "d.json", n=3)
    own = write_alpaca(tmp_path / "own.json", n=1, with_system=True)
    examples = inference.load_examples(f"{data},{own}", dataset_dir=str(tmp_path), max_samples=2)
    assert [ex.reference for ex in examples] == ["0", "2"]
    examples.append(inference.load_examples(str(own), dataset_dir=str(tmp_path))[0])  # a record with its own system
    model, tokenizer = inference.load_model(LitFTModule(tiny_qwen2).spec, device="cpu")
    settings = inference.GenerationSettings(max_new_tokens=5, batch_size=2)
    rows = inference.predict(model, tokenizer, examples, settings=settings, system="Be brief.")
    assert [r["reference"] for r in rows] == ["0", "2", "0"]
    assert [r["prompt"] for r in rows] == ["What is 0 plus 0?\nAnswer with a number.", "What is 1 plus 1?",
                                           "What is 0 plus 0?\nAnswer with a number."]
    # Independently: the tokenizer's chat template with the system message first (the record's own system kept),
    # greedy decoding one prompt at a time.
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    ref = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    for row, ex, system in zip(rows, examples, ["Be brief.", "Be brief.", "You are a calculator."]):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert inference.prompt_ids(tokenizer, ex.messages, system="Be brief.", tools=ex.tools) == ids
        with torch.no_grad():
            out = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert row["prediction"] == tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    path = inference.write_jsonl(rows, inference.predictions_path(tmp_path, None))
    assert path.name == "predictions-base.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_generation_settings_flags_round_trip():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    inference.GenerationSettings.add_arguments(parser)
    cfg = parser.parse_args(["--max_new_tokens", "7", "--stop", "a", "b", "--gen_batch_size", "3"])
    assert inference.GenerationSettings.from_config(cfg) == inference.GenerationSettings(
        max_new_tokens=7, stop=["a", "b"], batch_size=3)
    one = ArgumentParser()
    inference.GenerationSettings.add_arguments(one, batched=False)  # generate and chat: one prompt at a time
    assert inference.GenerationSettings.from_config(one.parse_args([])) == inference.GenerationSettings()
    with pytest.raises(SystemExit):
        one.parse_args(["--gen_batch_size", "3"])


def test_evaluate_reads_its_examples_once(tiny_qwen2, tmp_path, monkeypatch, capsys):
    """Base and fine-tuned predict the same list: the evaluation file is read once."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import litft.data.records as records

    adapter = tmp_path / "out" / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2), LoraConfig(r=2, target_modules=["q_proj"])
                   ).save_pretrained(adapter)
    data = write_alpaca(tmp_path / "d.json", n=3)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "model": {"name_or_path": tiny_qwen2},
                                      "data": {"dataset": "unused", "eval_dataset": str(data)}}))
    reads = []
    real = records.iter_file
    monkeypatch.setattr(records, "iter_file", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    assert litft_run(["evaluate", "--config", str(config), "--max_new_tokens", "2", "--max_samples", "2"]) == 0
    assert reads == [str(data)] * 2  # its first record (are these pairs? litft.methods.evaluation), then the examples
    base, tuned = ([json.loads(x) for x in (tmp_path / "out" / name).read_text().splitlines()]
                   for name in ("predictions-base.jsonl", "predictions.jsonl"))
    assert [(r["prompt"], r["reference"]) for r in base] == [(r["prompt"], r["reference"]) for r in tuned] == [
        ("What is 0 plus 0?\nAnswer with a number.", "0"), ("What is 1 plus 1?", "2")]
    assert f"scored: {data} (data.eval_dataset)" in capsys.readouterr().out
