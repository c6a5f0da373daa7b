"""data.template: built-in names, Jinja (inline / .jinja file), declarative YAML; exact masking for each; the
training template shipped in the saved tokenizer; LLaMA-Factory 0.9.5's templates of the same names."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from litft.data.conversation import Conversation, Turn
from litft.data.formats import alpaca
from litft.data.template_spec import builtin_names
from litft.data.templates import IGNORE_INDEX, chat_template_for, encode_many, encode_prompt, render_with_spans
from litft.errors import LitFTError

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
PHI2 = str(EXAMPLES / "templates" / "phi2-dialogsum.yaml")
DOLLY = str(EXAMPLES / "templates" / "dolly-backtranslation.yaml")
STANFORD = {  # Stanford Alpaca's prompt, with its ### Input: block
    "default_system": "Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.",
    "system": "{content}\n\n", "user": "### Instruction:\n{content}\n\n", "input": "### Input:\n{content}\n\n",
    "assistant": "### Response:\n{content}", "end_of_turn": "{eos}",
}
JINJA = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
         "{% endif %}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")


def _trained(tok, ids, labels) -> list[str]:
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.fixture(scope="module")
def tok(tiny_qwen2):
    return AutoTokenizer.from_pretrained(tiny_qwen2)


def _records(n=20, seed=0) -> list[Conversation]:
    """Alpaca records with and without input, system and history (CJK included)."""
    rng = random.Random(seed)
    words = "the cat sat on mat what is 2 plus answer tell me about river write poem 你好 世界 Paris".split()

    def sent(k):
        return " ".join(rng.choice(words) for _ in range(k)).capitalize() + rng.choice([".", "?", ""])

    out = []
    for k in range(n):
        rec = {"instruction": sent(5), "input": sent(4) if k % 3 == 0 else "", "output": sent(7)}
        if k % 4 == 1:
            rec["system"] = "You are terse."
        if k % 5 == 2:
            rec["history"] = [[sent(3), sent(4)]]
        out.append(alpaca(rec))
    return out


def test_declarative_phi2_blurb_trains_summary_and_end(tok):
    conv = alpaca({"instruction": "#Person1#: Hi.\n#Person2#: Hello.", "input": "", "output": "They greet."})
    ids, labels = encode_many(tok, [conv], template=PHI2)[0]
    assert tok.decode(ids) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruct: Summarize the below conversation.\n\n#Person1#: Hi.\n#Person2#: Hello.\n\n"
        "### Output:\nThey greet.\n\n### End"
    )
    assert _trained(tok, ids, labels) == ["They greet.\n\n### End"]
    prompt = encode_prompt(tok, conv.messages()[:-1], template=PHI2)
    assert ids[: len(prompt)] == prompt and tok.decode(prompt).endswith("### Output:\n")


def test_declarative_input_block_and_default_system(tok):
    conv = alpaca({"instruction": "Add them.", "input": "2 and 3", "output": "5"})
    ids, labels = encode_many(tok, [conv], template=STANFORD)[0]
    assert tok.decode(ids).endswith(
        "request.\n\n### Instruction:\nAdd them.\n\n### Input:\n2 and 3\n\n### Response:\n5<|im_end|>")
    assert _trained(tok, ids, labels) == ["5<|im_end|>"]
    # without input: the user block alone; a record's own system prompt replaces the default
    conv = alpaca({"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be kind."})
    assert tok.decode(encode_many(tok, [conv], template=STANFORD)[0][0]) == (
        "Be kind.\n\n### Instruction:\nSay hi.\n\n### Response:\nhi<|im_end|>")
    dolly = alpaca({"instruction": "A long answer.", "input": "", "output": "What is X?"})
    ids, labels = encode_many(tok, [dolly], template=DOLLY)[0]
    assert "### Input:\nA long answer.\n\n### Response:\n" in tok.decode(ids)
    assert _trained(tok, ids, labels) == ["What is X?<|im_end|>"]


def test_jinja_inline_and_file(tok, tmp_path):
    conv = Conversation(turns=[Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2"), Turn("assistant", "a2")])
    path = tmp_path / "t.jinja"
    path.write_text(JINJA)
    for template in (JINJA, str(path)):
        ids, labels = encode_many(tok, [conv], template=template)[0]
        assert ids == list(tok.apply_chat_template(conv.messages(), chat_template=JINJA, tokenize=True, return_dict=False))
        # " a1" is one token: it carries content, so it is trained with the template's space
        assert _trained(tok, ids, labels) == [" a1<|im_end|>", " a2<|im_end|>"]


@pytest.mark.parametrize("spec,match", [
    ({"user": "{content}", "assistant": "{content}", "colour": "x"}, "unknown key 'colour'"),
    ({"user": "no placeholder", "assistant": "{content}"}, "'user' must hold {content} exactly once"),
    ({"user": "{content}", "assistant": "{content} tail"}, "'assistant' must end with {content}"),
    ({"assistant": "{content}"}, "'user' is required"),
    ("nonexistent", "unknown template 'nonexistent'"),
    ("missing.yaml", "no such template file"),
])
def test_bad_templates_are_one_line_errors(tok, spec, match):
    with pytest.raises(LitFTError, match=match):
        encode_many(tok, [Conversation(turns=[Turn("user", "q"), Turn("assistant", "a")])], template=spec)


def test_yaml_file_errors_name_the_file(tok, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("user: '{content}'\nassistant: '{content}'\nend_of_turn: 3\n")
    with pytest.raises(LitFTError, match=r"mine.yaml: 'end_of_turn' must be text"):
        encode_many(tok, [Conversation(turns=[Turn("user", "q"), Turn("assistant", "a")])], template=str(path))


def test_tools_are_rendered_or_refused_never_dropped(tok):
    tools = '[{"name": "get_weather", "parameters": {"city": "string"}}]'
    conv = Conversation(turns=[Turn("user", "Weather?"), Turn("assistant", "Sunny.")], tools=tools)
    for name in ("qwen", "chatml", "alpaca"):
        with pytest.raises(LitFTError, match="does not render the record's tools"):
            encode_many(tok, [conv], template=name)
    with_tools = JINJA.replace("{% for m in messages %}", "{% if tools %}TOOLS: {{ tools | tojson }}\n{% endif %}"
                                                          "{% for m in messages %}")
    ids, _ = encode_many(tok, [conv], template=with_tools)[0]
    assert 'TOOLS: [{"name": "get_weather"' in tok.decode(ids)
    with pytest.raises(LitFTError, match="not JSON"):
        encode_many(tok, [Conversation(turns=conv.turns, tools="get_weather(city)")], template=with_tools)


@pytest.mark.parametrize("template", [*builtin_names(), "phi2", "stanford", "jinja"])
def test_saved_tokenizer_chat_template_reproduces_training(tok, tmp_path, template):
    """What the adapter and export ship: apply_chat_template on the saved tokenizer == the training render."""
    spec = {"phi2": PHI2, "stanford": STANFORD, "jinja": JINJA}.get(template, template)
    saved = AutoTokenizer.from_pretrained(tok.name_or_path)
    saved.chat_template = chat_template_for(saved, spec)
    saved.save_pretrained(tmp_path)
    served = AutoTokenizer.from_pretrained(tmp_path)
    for conv in _records(3, seed=1):
        text, _ = render_with_spans(tok, conv, template=spec)
        messages = conv.messages()
        assert served.apply_chat_template(messages, tokenize=False) == text
        ids, _ = encode_many(tok, [conv], template=spec)[0]
        assert list(served.apply_chat_template(messages, tokenize=True, return_dict=False)) == ids
        assert served.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) == \
            tok.decode(encode_prompt(tok, messages[:-1], template=spec))


# LLaMA-Factory 0.9.5's templates of the same names (src/llamafactory/data/template.py, read for the facts): the
# slots of each message, encoded piece by piece; EOS/BOS are tokens. Llama-2 fuses the system into the first query.
_EOS, _BOS = object(), object()
_ALPACA_SYS = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n")
_CHATML = dict(user=["<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"], assistant=["{}<|im_end|>\n"],
               system=["<|im_start|>system\n{}<|im_end|>\n"])
LLAMAFACTORY = {
    "alpaca": dict(user=["### Instruction:\n{}\n\n### Response:\n"], assistant=["{}", _EOS, "\n\n"], system=["{}"],
                   default=_ALPACA_SYS),
    "chatml": dict(**_CHATML, default=""),
    "qwen": dict(**_CHATML, default="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "phi": dict(user=["<|user|>\n{}<|end|>\n<|assistant|>\n"], assistant=["{}<|end|>\n"],
                system=["<|system|>\n{}<|end|>\n"], default=""),
    "empty": dict(user=["{}"], assistant=["{}"], system=["{}"], default=""),
    "llama2": dict(user=[_BOS, "[INST] {} [/INST]"], assistant=["{}", _EOS], system=["<<SYS>>\n{}\n<</SYS>>\n\n"],
                   default="", fuse=True),
}


def _llamafactory(tok, name, conv) -> tuple[list[int], str]:
    t = LLAMAFACTORY[name]
    system = conv.system or t["default"]
    ids, text = [], []

    def put(slots, content):
        for slot in slots:
            if slot is _EOS:
                ids.append(tok.eos_token_id)
                text.append(tok.eos_token)
            elif slot is _BOS:
                if tok.bos_token_id is not None:
                    ids.append(tok.bos_token_id)
                    text.append(tok.bos_token)
            elif slot.replace("{}", content):
                ids.extend(tok.encode(slot.replace("{}", content), add_special_tokens=False))
                text.append(slot.replace("{}", content))

    for i, turn in enumerate(conv.turns):
        content = turn.content
        if turn.role == "user" and i == 0 and system:
            if t.get("fuse"):
                content = t["system"][0].replace("{}", system) + content
            else:
                put(t["system"], system)
        put(t["user"] if turn.role == "user" else t["assistant"], content)
    return ids, "".join(text)


@pytest.mark.parametrize("name", sorted(LLAMAFACTORY))
def test_builtin_names_match_llamafactory(tiny_llama, tiny_qwen2, name):
    """Same text as LLaMA-Factory for 20 records; same ids with these byte-level BPE tokenizers, except llama2
    (README: LLaMA-Factory's separately tokenized reply gets SentencePiece's space on Llama-2's own tokenizer)."""
    for model in (tiny_llama, tiny_qwen2):
        tok = AutoTokenizer.from_pretrained(model)
        for conv in _records(20):
            lf_ids, lf_text = _llamafactory(tok, name, conv)
            text, _ = render_with_spans(tok, conv, template=name)
            ids, _ = encode_many(tok, [conv], template=name)[0]
            if name == "llama2":
                assert text == lf_text.replace(" [/INST]", " [/INST] ")
            else:
                assert text == lf_text
                assert ids == lf_ids


def test_inline_mapping_in_a_config_stays_text(tiny_qwen2, tmp_path):
    import yaml

    from litft.cli import LitFTCLI

    spec = {"user": "U: {content}\n", "assistant": "A: {content}", "end_of_turn": "{eos}"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name_or_path": tiny_qwen2}, "data": {"dataset": "x", "template": spec}}))
    dm = LitFTCLI(args=["--config", str(config)], run=False).datamodule
    assert dm.template == spec
    conv = Conversation(turns=[Turn("user", "q"), Turn("assistant", "a")])
    ids, labels = encode_many(dm.tokenizer, [conv], template=dm.template)[0]
    assert dm.tokenizer.decode(ids) == "U: q\nA: a<|im_end|>" and _trained(dm.tokenizer, ids, labels) == [" a<|im_end|>"]
