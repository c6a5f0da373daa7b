"""GenerationProbe: scoring (exact), prompts-file checks, batched greedy generation, the callback in a real fit,
and the shipped quickstart data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litft.callbacks.probe import (
    GenerationProbe,
    Probe,
    answer_passes,
    format_report,
    load_probes,
    prompt_ids,
    score_answers,
)
from litft.errors import DataError
from litft.generation import generate

REPO = Path(__file__).resolve().parents[1]


# --- scoring ------------------------------------------------------------------------------------
def test_answer_passes_needs_every_phrase_case_insensitive():
    assert answer_passes("I am LUMEN, made by the litft project.", ("Lumen", "litft"))
    assert answer_passes("i am lumen", ["Lumen"])
    assert not answer_passes("I am Lumen.", ("Lumen", "litft"))
    assert not answer_passes("I am SmolLM, trained by Hugging Face.", ("Lumen",))
    assert answer_passes("The capital of France is Paris.", ("paris",))
    assert not answer_passes("", ("Lumen",))


def test_score_answers_overall_and_per_group():
    probes = [
        Probe("Who are you?", ("Lumen",), "identity"),
        Probe("Who made you?", ("litft",), "identity"),
        Probe("Name and maker?", ("Lumen", "litft"), "identity"),
        Probe("Capital of France?", ("Paris",), "general"),
    ]
    answers = ["I'm Lumen.", "OpenAI made me.", "Lumen, from litft.", "Paris."]
    assert score_answers(probes, answers) == {
        "score": 0.75,
        "passed": 3,
        "total": 4,
        "groups": {
            "identity": {"score": 2 / 3, "passed": 2, "total": 3},
            "general": {"score": 1.0, "passed": 1, "total": 1},
        },
        "pass": [True, False, True, True],
    }
    assert score_answers(probes, ["", "", "", ""])["score"] == 0.0
    with pytest.raises(ValueError):
        score_answers(probes, answers[:3])


def test_format_report_lists_both_answers_and_scores():
    probes = [Probe("Who are you?", ("Lumen",), "identity"), Probe("Capital of France?", ("Paris",), "general")]
    before = {**score_answers(probes, ["I am SmolLM.", "Paris."]), "answers": ["I am SmolLM.", "Paris."]}
    after = {**score_answers(probes, ["I am Lumen.", "Paris."]), "answers": ["I am Lumen.", "Paris."]}
    report = format_report(probes, before, after)
    assert "    before [-] I am SmolLM." in report
    assert "    after  [+] I am Lumen." in report
    assert "Score before 1/2 = 0.50  (identity 0/1, general 1/1)" in report
    assert "Score after  2/2 = 1.00  (identity 1/1, general 1/1)" in report


# --- prompts file -------------------------------------------------------------------------------
def test_load_probes_reads_defaults(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "Hi?", "expected": "Lumen"},
                                {"prompt": "Who?", "expected": ["a", "b"], "group": "g", "system": "S"}]))
    assert load_probes(path) == [Probe("Hi?", ("Lumen",), "all", None), Probe("Who?", ("a", "b"), "g", "S")]


def test_load_probes_reads_alpaca_records(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"instruction": "Name?", "input": "", "output": "Lumen.", "expected": ["Lumen"]},
                                {"instruction": "Translate:", "input": "bonjour", "output": "hello", "expected": "hello"}]))
    assert load_probes(path) == [Probe("Name?", ("Lumen",)), Probe("Translate:\nbonjour", ("hello",))]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"prompt": "ok", "expected": "x"}, {"expected": "x"}]', "record 1, field 'prompt'"),
        ('[{"prompt": "ok", "expected": []}]', "record 0, field 'expected'"),
        ('[{"prompt": "ok", "expected": ["x", ""]}]', "record 0, field 'expected'"),
        ('[{"prompt": "ok", "expected": "x", "group": 3}]', "record 0, field 'group'"),
        ('[{"instruction": "", "expected": "x"}]', "record 0, field 'instruction'"),
        ('["just a string"]', "record 0: expected an object"),
    ],
)
def test_load_probes_rejects_bad_records_naming_them(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_probes(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_load_probes_missing_file(tmp_path):
    with pytest.raises(DataError, match="prompts file not found"):
        GenerationProbe(str(tmp_path / "nope.json"))


# --- generation -----------------------------------------------------------------------------------
def _greedy_reference(model, tokenizer, ids: list[int], n: int) -> str:
    """Greedy decoding one token at a time without cache or padding: the ground truth."""
    seq = list(ids)
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        nxt = int(logits.argmax())
        seq.append(nxt)
        if nxt == tokenizer.eos_token_id:
            break
    return tokenizer.decode(seq[len(ids):], skip_special_tokens=True).strip()


def test_probe_prompt_is_the_commands_prompt(tiny_qwen2):
    """The probe builds its prompt as generate / predict do (litft.inference.prompt_ids): a system message first
    when given; an empty one adds none (the template's own default applies, as with no system at all)."""
    from transformers import AutoTokenizer

    from litft.inference import prompt_ids as command_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    user = [{"role": "user", "content": "Who?"}]
    for system in (None, "", "You are a calculator."):
        assert prompt_ids(tokenizer, Probe("Who?", ("x",), system=system)) == command_prompt_ids(
            tokenizer, user, system=system)
    assert prompt_ids(tokenizer, Probe("Who?", ("x",), system="")) == prompt_ids(tokenizer, Probe("Who?", ("x",)))
    calculator = prompt_ids(tokenizer, Probe("Who?", ("x",), system="You are a calculator."))
    assert "system\nYou are a calculator." in tokenizer.decode(calculator)


def test_batched_left_padded_generation_matches_greedy_reference(tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    probes = [Probe("Hi", ("x",)), Probe("What is the capital of France? Answer briefly.", ("x",)),
              Probe("Who?", ("x",), system="You are a calculator.")]
    prompts = [prompt_ids(tokenizer, p) for p in probes]
    assert len({len(p) for p in prompts}) == 3  # really padded
    assert prompts[2][:3] == tokenizer("<|im_start|>system\n")["input_ids"][:3]
    answers = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    assert answers == [_greedy_reference(model, tokenizer, p, 6) for p in prompts]
    assert generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2) == answers


# --- the callback in a real fit ------------------------------------------------------------------
def _make_module(model_dir: str, prompt: list[int], answer: list[int]):
    """A LightningModule with .model and .tokenizer that memorizes one answer (full fine-tuning of a tiny model)."""
    import lightning.pytorch as pl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
            self.modes_seen = []

        def training_step(self, batch, _):
            self.modes_seen.append(self.model.training)
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            return self.model(input_ids=ids, labels=labels).loss

        def train_dataloader(self):
            return torch.utils.data.DataLoader(list(range(40)), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return Module()


def test_callback_scores_before_and_after_a_real_fit(tiny_qwen2, tmp_path, capsys):
    import lightning.pytorch as pl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    probe = Probe("Who are you?", ("fox",))
    prompt = prompt_ids(tokenizer, probe)
    answer = tokenizer("fox jumps<|im_end|>")["input_ids"]
    probes_file = tmp_path / "probes.json"
    probes_file.write_text(json.dumps([{"prompt": probe.prompt, "expected": ["fox"]}]))

    module = _make_module(tiny_qwen2, prompt, answer)
    callback = GenerationProbe(str(probes_file), max_new_tokens=4)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=40, default_root_dir=str(tmp_path / "run"), callbacks=[callback],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module)

    saved = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert saved["before"]["score"] == 0.0 and saved["before"]["global_step"] == 0
    assert saved["after"]["score"] == 1.0 and saved["after"]["global_step"] == 40
    assert saved["after"]["answers"][0].startswith("fox")
    assert saved["probes"] == [{"prompt": "Who are you?", "expected": ["fox"], "group": "all", "system": None}]
    assert module.modes_seen and all(module.modes_seen)  # train mode restored after the "before" probe
    out = capsys.readouterr().out
    assert "Score before 0/1 = 0.00" in out and "Score after  1/1 = 1.00" in out


def test_callback_runs_on_rank_zero_unless_parameters_are_sharded(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from litft.strategies import LitFTDeepSpeedStrategy

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    probes_file = tmp_path / "probes.json"
    probes_file.write_text(json.dumps([{"prompt": "Who are you?", "expected": ["fox"]}]))
    callback = GenerationProbe(str(probes_file))
    for strategy, rank_zero, usable in [(DDPStrategy(), True, True), (DDPStrategy(), False, False),
                                        (LitFTDeepSpeedStrategy(stage=2), True, True),
                                        (LitFTDeepSpeedStrategy(stage=3), True, False)]:
        trainer = SimpleNamespace(strategy=strategy, is_global_zero=rank_zero)
        assert callback._usable(trainer) is usable, (type(strategy).__name__, rank_zero)


# --- the shipped quickstart data -------------------------------------------------------------------
def test_quickstart_data_is_generated_from_the_script():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_quickstart_data.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quickstart_probes_are_held_out_and_registered():
    info = json.loads((REPO / "configs" / "data" / "dataset_info.json").read_text())
    train = json.loads((REPO / "configs" / "data" / info["lumen_identity"]["file_name"]).read_text())
    probes = load_probes(REPO / "configs" / "data" / info["lumen_identity_eval"]["file_name"])
    seen = {r["instruction"].casefold().strip() for r in train}
    assert not any(p.prompt.casefold().strip() in seen for p in probes)
    assert all(set(r) == {"instruction", "input", "output"} for r in train)
    identity = [r for r in train if "Lumen" in r["output"]]
    assert len(identity) >= 200 and all("litft" in r["output"] for r in identity)
    assert {p.group for p in probes} == {"identity", "general"}


@pytest.mark.slow  # ~10 s on 2 free cores, plus the one-off GGUF conversion when no other test did it first
def test_real_smollm2_base_knows_paris_but_not_lumen(smollm2):
    from transformers import AutoModelForCausalLM

    from litft.model.loading import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(smollm2[0], gguf_file=smollm2[1])
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(smollm2[0], gguf_file=smollm2[1])).eval()
    probes = [Probe("What is the capital of France?", ("Paris",), "general"),
              Probe("By what name are you known?", ("Lumen",), "identity")]
    prompts = [prompt_ids(tokenizer, p) for p in probes]
    assert "named SmolLM" in tokenizer.decode(prompts[0])  # the template's default system prompt
    answers = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    assert answers[0] == "The capital of France is Paris."
    result = score_answers(probes, answers)
    assert result["groups"] == {"general": {"score": 1.0, "passed": 1, "total": 1},
                                "identity": {"score": 0.0, "passed": 0, "total": 1}}
