"""Exact tokenization and masking: ids equal apply_chat_template, trained tokens = assistant content + EOT."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from litft.data.conversation import Conversation, Turn
from litft.data.template_spec import builtin_names
from litft.data.templates import IGNORE_INDEX, encode_many, encode_prompt


def _ids(x):
    return list(x["input_ids"]) if hasattr(x, "keys") else list(x)


def _chat_ids(tok, messages, **kw):
    return _ids(tok.apply_chat_template(messages, tokenize=True, **kw))


def _trained_runs(tok, ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


MULTI = Conversation(
    turns=[
        Turn("user", "What is 2 plus 2?"),
        Turn("assistant", "4"),
        Turn("user", "And 3 plus 3?"),
        Turn("assistant", "The answer is 6."),
    ],
    system="Be brief.",
)
SINGLE = Conversation(turns=[Turn("user", "hi"), Turn("assistant", "Hello! How can I help you today?")])


@pytest.fixture(scope="module")
def toks(tiny_llama, tiny_qwen2):
    return {"llama": AutoTokenizer.from_pretrained(tiny_llama), "qwen2": AutoTokenizer.from_pretrained(tiny_qwen2)}


@pytest.mark.parametrize("arch,eot", [("llama", "<|eot_id|>"), ("qwen2", "<|im_end|>")])
@pytest.mark.parametrize("conv", [MULTI, SINGLE], ids=["multi", "single"])
def test_ids_equal_chat_template_and_mask_is_exact(toks, arch, eot, conv):
    tok = toks[arch]
    messages = conv.messages()
    ids, labels = encode_many(tok, [conv])[0]
    assert ids == _chat_ids(tok, messages)
    # Independent expectation, built token-wise: each assistant turn's trained ids start right after the
    # generation prompt and are exactly tokenize(content + EOT).
    expected = [IGNORE_INDEX] * len(ids)
    offset = len(messages) - len(conv.turns)
    for i, turn in enumerate(conv.turns):
        if turn.role != "assistant":
            continue
        start = len(_chat_ids(tok, messages[: offset + i], add_generation_prompt=True))
        piece = tok(turn.content + eot, add_special_tokens=False)["input_ids"]
        assert ids[start : start + len(piece)] == piece
        expected[start : start + len(piece)] = piece
    assert labels == expected
    assert _trained_runs(tok, ids, labels) == [t.content + eot for t in conv.turns if t.role == "assistant"]


def test_chatml_trailing_newline_not_trained(toks):
    tok = toks["qwen2"]
    ids, labels = encode_many(tok, [SINGLE])[0]
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    last_eot = max(i for i, x in enumerate(ids) if x == eot)
    assert labels[last_eot] == eot
    assert tok.decode(ids[last_eot + 1 :]) == "\n"
    assert all(x == IGNORE_INDEX for x in labels[last_eot + 1 :])


def test_mask_history_and_train_on_prompt(toks):
    tok = toks["qwen2"]
    ids, labels = encode_many(tok, [MULTI], mask_history=True)[0]
    assert _trained_runs(tok, ids, labels) == ["The answer is 6.<|im_end|>"]
    ids2, labels2 = encode_many(tok, [MULTI], train_on_prompt=True)[0]
    assert ids2 == ids and labels2 == ids


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_encode_prompt_is_training_prefix(toks, arch):
    tok = toks[arch]
    messages = MULTI.messages()[:-1]  # ends with the second user turn
    prompt = encode_prompt(tok, messages)
    assert prompt == _chat_ids(tok, messages, add_generation_prompt=True)
    ids, labels = encode_many(tok, [MULTI])[0]
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX


# SmolLM2-135M-Instruct's own chat template: a default system prompt when the conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_default_system_prompt_template(tiny_qwen2):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    tok.chat_template = SMOLLM2_TEMPLATE
    for conv in (SINGLE, MULTI):
        ids, labels = encode_many(tok, [conv])[0]
        assert ids == _chat_ids(tok, conv.messages())
        assert _trained_runs(tok, ids, labels) == [t.content + "<|im_end|>" for t in conv.turns if t.role == "assistant"]
    prompt = encode_prompt(tok, SINGLE.messages()[:1])
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(prompt)
    assert encode_many(tok, [SINGLE])[0][0][: len(prompt)] == prompt


@pytest.mark.slow  # converts the real GGUF once per session (minutes on a busy 2-core machine)
def test_smollm2_default_system_prompt(smollm2):
    from litft.model.loading import load_tokenizer

    tok = load_tokenizer(smollm2[0], gguf_file=smollm2[1])
    for conv in (SINGLE, MULTI):
        ids, labels = encode_many(tok, [conv])[0]
        assert ids == _chat_ids(tok, conv.messages())
        assert _trained_runs(tok, ids, labels) == [t.content + "<|im_end|>" for t in conv.turns if t.role == "assistant"]
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(encode_prompt(tok, [{"role": "user", "content": "hi"}]))


# ---------------------------------------------------------------- named templates
# Trained span = reply + the template's end-of-turn text (as LLaMA-Factory 0.9.5 trains them).
@pytest.mark.parametrize(
    "name,eot,first",
    [
        ("chatml", "<|im_end|>\n", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"),
        ("qwen", "<|im_end|>\n", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"),
        ("llama3", "<|eot_id|>", "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"),
        ("phi", "<|end|>\n", "<|system|>\nBe brief.<|end|>\n<|user|>\n"),
        ("alpaca", "<|im_end|>\n\n", "Be brief.### Instruction:\nWhat is 2 plus 2?\n\n### Response:\n"),
        ("llama2", "<|im_end|>", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2 plus 2? [/INST] 4<|im_end|>[INST]"),
        ("empty", "", "Be brief.What is 2 plus 2?4And 3 plus 3?"),
    ],
)
def test_named_templates_mask_content_and_eot(toks, name, eot, first):
    tok = toks["qwen2"]  # eos <|im_end|>; named templates use eos where they have no end-of-turn of their own
    assert name in builtin_names()
    ids, labels = encode_many(tok, [MULTI], template=name)[0]
    assert tok.decode(ids).startswith(first)
    runs = _trained_runs(tok, ids, labels)
    assert [r.strip(" ") for r in runs] == [t.content + eot for t in MULTI.turns if t.role == "assistant"]
    prompt = encode_prompt(tok, MULTI.messages()[:-1], template=name)
    assert ids[: len(prompt)] == prompt


def test_tokenizer_without_template_needs_a_named_one(tmp_path):
    from litft.errors import LitFTError
    from tests.helpers import build_tokenizer

    tok = build_tokenizer(tmp_path, template="none")
    with pytest.raises(LitFTError, match="no chat template: set data.template"):
        encode_many(tok, [SINGLE])
    ids, labels = encode_many(tok, [SINGLE], template="alpaca")[0]
    assert _trained_runs(tok, ids, labels) == ["Hello! How can I help you today?<|endoftext|>\n\n"]


def test_plain_text_is_all_trained(toks):
    tok = toks["llama"]
    ids, labels = encode_many(tok, [Conversation(text="The quick brown fox.")])[0]
    assert labels == ids and ids[-1] == tok.eos_token_id


# ---------------------------------------------------------------- fuzz: equality and mask invariants
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(alphabet=st.sampled_from(list("abcdefgh XYZ0189.,!?\n你好") ), max_size=20)
_conv = st.builds(
    lambda system, pairs: Conversation(
        turns=[Turn(r, c) for q, a in pairs for r, c in (("user", q), ("assistant", a))], system=system or None
    ),
    st.one_of(st.none(), _text),
    st.lists(st.tuples(_text, _text), min_size=1, max_size=3),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(conv=_conv, arch=st.sampled_from(["llama", "qwen2"]))
def test_fuzz_equality_and_masks(toks, conv, arch):
    tok = toks[arch]
    eot = tok.eos_token
    ids, labels = encode_many(tok, [conv])[0]
    assert ids == _chat_ids(tok, conv.messages())
    # every assistant turn's end-of-turn token is trained, and nothing else but assistant text is
    eot_id = tok.convert_tokens_to_ids(eot)
    n_assistant = sum(t.role == "assistant" for t in conv.turns)
    trained_eots = [i for i, lab in enumerate(labels) if lab == eot_id]
    assert len(trained_eots) == n_assistant
    trained_text = "".join(_trained_runs(tok, ids, labels))
    expected = "".join(t.content + eot for t in conv.turns if t.role == "assistant")
    # a token straddling the template/content boundary may carry template whitespace, never other text
    assert trained_text.replace("\n", "").replace(" ", "") == expected.replace("\n", "").replace(" ", "")


def test_template_that_cannot_render_gives_one_line(toks):
    from litft.errors import LitFTError

    tok = toks["qwen2"]
    strict = tok.chat_template.replace("{% for message in messages %}", "{% for message in messages %}{% if message['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}")
    tok2 = type(tok).from_pretrained(tok.name_or_path)
    tok2.chat_template = strict
    conv = Conversation(turns=[Turn("user", "q"), Turn("assistant", "a"), Turn("tool", "r"), Turn("assistant", "b")])
    with pytest.raises(LitFTError, match="cannot render a conversation with roles user/assistant/tool/assistant: no tools"):
        encode_many(tok2, [conv])


def test_fast_labels_equal_the_token_loop():
    # _labels (bisection and slices) against the per-token loop, on random offsets (zero-width ones, starts going
    # back as a special token's may) and spans (in order, overlapping, empty, touching, now and then out of order).
    import random

    from litft.data.templates import _labels, _labels_loop

    rng = random.Random(0)
    for _ in range(5000):
        n = rng.randint(0, 40)
        offsets, pos = [], 0
        for _ in range(n):
            pos = max(0, pos + rng.choice((0, 1, 2, 3, 5, -2) if rng.random() < 0.2 else (0, 1, 2, 3, 5)))
            offsets.append((pos, pos + rng.choice((0, 1, 2, 4))))
        ends = sorted(rng.randint(0, pos + 5) for _ in range(rng.randint(0, 4)))
        if rng.random() < 0.1:
            rng.shuffle(ends)
        spans = [(max(0, e - rng.randint(0, 12)), e, i) for i, e in enumerate(ends)]
        ids = [rng.randint(0, 1000) for _ in range(n)]
        assert _labels(ids, offsets, spans) == _labels_loop(ids, offsets, spans)
