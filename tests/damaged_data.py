"""Seeded generator of malformed and damaged dataset files (alpaca / ShareGPT / OpenAI messages; .json and .jsonl).

Records are written as JSON text directly, so values no Python object round-trips (5,000-deep arrays, numbers of
thousands of digits, lone surrogate escapes, NaN) can be put anywhere. Half of the files are damaged afterwards as
bytes: cut anywhere, bytes flipped, invalid UTF-8, a BOM, NUL bytes, deep nesting, UTF-16. No litft import: the same
corpus can be run against any version of the reader.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_RAW = "@@raw{}@@"


def _deep(rng: random.Random) -> str:
    depth = rng.choice([2, 64, 128, 129, 500, 999, 1000, 1500, 5000])
    kind = rng.randrange(3)
    if kind == 0:
        return "[" * depth + "]" * depth
    if kind == 1:
        return '{"a": ' * depth + "1" + "}" * depth
    return '[{"a": ' * (depth // 2) + "0" + "}]" * (depth // 2)


def _odd_value(rng: random.Random) -> str:
    """JSON text of a value that is wrong, extreme or both."""
    pick = rng.randrange(14)
    if pick == 0:
        return _deep(rng)
    if pick == 1:
        return ("-" if rng.random() < 0.3 else "") + "9" * rng.choice([20, 4300, 4301, 20000])
    if pick == 2:
        return rng.choice(["1e999999", "-1e-999999", "1" + "0" * 5000 + ".5", "0." + "0" * 6000 + "1", "1E+400"])
    if pick == 3:
        return rng.choice(["NaN", "Infinity", "-Infinity"])
    if pick == 4:  # surrogate escapes: lone high, lone low, a valid pair, a high followed by text, reversed pair
        return rng.choice(['"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\ud83d x"', '"\\ude00\\ud83d"',
                           '"\\\\ud800"', '"\\uD800\\uDBFF"'])
    if pick == 5:
        return rng.choice(['"\\u0000"', '"a\x00b"', '"\x01\x1f"', '"tab\there"', '"\\x41"', '"\\u12"'])
    if pick == 6:
        return json.dumps("x" * rng.choice([1, 1000, 70_000]))
    if pick == 7:
        return rng.choice(["1", "-0", "true", "false", "null", "[]", "{}", "0.5"])
    if pick == 8:
        return rng.choice(['[["q", "a"]]', '[["q"]]', '[[1, 2]]', '[null]', '["q", "a"]', '{"q": "a"}'])
    if pick == 9:
        return json.dumps(rng.choice(["caf\u00e9 \u2603", "\u2028\u2029", "\U0001F600", "\ufeff", "\r\n", ""]))
    if pick == 10:
        return json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])
    if pick == 11:
        return json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": ["a"]}])
    if pick == 12:
        return '"' + "\\" * rng.randrange(1, 4) + 'u"'
    return json.dumps({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})


def _value(rng: random.Random, raws: list[str], text: str, p_odd: float):
    if rng.random() < p_odd:
        raws.append(_odd_value(rng))
        return _RAW.format(len(raws) - 1)
    return text


def _record(rng: random.Random, layout: str) -> str:
    raws: list[str] = []
    p = rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 0.7])
    if layout == "alpaca":
        rec = {"instruction": _value(rng, raws, "Name a colour.", p), "input": _value(rng, raws, "", p),
               "output": _value(rng, raws, "Blue.", p)}
        for key in ("system", "history", "tools"):
            if rng.random() < 0.3:
                rec[key] = _value(rng, raws, "You are kind.", 1.0 if key != "system" else p)
    elif layout in ("sharegpt", "openai"):
        role, content, user, bot = ("from", "value", "human", "gpt") if layout == "sharegpt" else ("role", "content", "user", "assistant")
        others = ["system", "observation", "function_call", "tool", "function", "", "GPT", None, 3]
        turns = []
        for i in range(rng.choice([0, 1, 2, 2, 3, 4, 5])):
            r = (user if i % 2 == 0 else bot) if rng.random() > p else rng.choice(others)
            turn = {role: r, content: _value(rng, raws, f"turn {i}", p)}
            if rng.random() < p / 3:
                turn.pop(rng.choice([role, content]))
            turns.append(turn)
        rec = {("conversations" if layout == "sharegpt" else "messages"): turns}
        if rng.random() < p / 2:
            rec[next(iter(rec))] = _value(rng, raws, "not a list", 1.0)
        for key in ("system", "tools"):
            if rng.random() < 0.3:
                rec[key] = _value(rng, raws, "", 1.0)
    else:
        raise ValueError(layout)
    if rng.random() < p / 4:
        rec.pop(rng.choice(list(rec)))
    if rng.random() < 0.4:  # a column no format reads
        rec["meta"] = _value(rng, raws, "", 1.0)
    out = json.dumps(rec, ensure_ascii=rng.random() < 0.5)
    for k, raw in enumerate(raws):
        out = out.replace(json.dumps(_RAW.format(k)), raw, 1)
    return out


def _damage(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.randrange(9)
        at = rng.randrange(len(data) + 1)
        if kind == 0:  # cut anywhere
            data = data[:at]
        elif kind == 1:  # flipped bytes
            b = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                if b:
                    b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
            data = bytes(b)
        elif kind == 2:  # invalid UTF-8: a stray byte, a cut sequence, an encoded surrogate, past U+10FFFF
            data = data[:at] + rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]) + data[at:]
        elif kind == 3:  # a BOM: leading (allowed), twice, or in the middle
            data = rng.choice([b"\xef\xbb\xbf" + data, b"\xef\xbb\xbf\xef\xbb\xbf" + data, data[:at] + b"\xef\xbb\xbf" + data[at:]])
        elif kind == 4:  # NUL bytes
            data = data[:at] + b"\x00" * rng.randrange(1, 4) + data[at:]
        elif kind == 5:  # 5,000-deep nesting: the whole file, or inserted
            depth = rng.choice([1000, 5000])
            deep = b"[" * depth + b"]" * depth
            data = rng.choice([deep, data[:at] + deep + data[at:], b"[" * depth + data])
        elif kind == 6:  # another encoding
            data = data.decode("utf-8", "replace").encode(rng.choice(["utf-16", "utf-32", "latin-1"]), "replace")
        elif kind == 7:  # empty, or whitespace only
            data = rng.choice([b"", b"\n\n", b" \t\r\n", b"\x0c"])
        else:  # duplicated or dropped lines
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i]) if rng.random() < 0.5 else lines.pop(i)
            data = b"\n".join(lines)
    return data


def write_corpus(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` files under ``folder``: malformed records in every file, half of the files also damaged as bytes."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        layout = rng.choice(["alpaca", "sharegpt", "openai"])
        records = [_record(rng, layout) for _ in range(rng.randrange(1, 6))]
        suffix = rng.choice([".json", ".jsonl"])
        if suffix == ".jsonl" or rng.random() < 0.15:  # JSON lines (also in a .json file)
            text = rng.choice(["\n", "\r\n", "\n\n"]).join(records) + rng.choice(["", "\n"])
        elif len(records) == 1 and rng.random() < 0.3:  # one object
            text = records[0]
        else:
            text = "[" + rng.choice([",", ",\n", " , "]).join(records) + "]" + rng.choice(["", "\n", " x"])
        data = text.encode("utf-8", "surrogatepass")
        if i % 2:
            data = _damage(rng, data)
        path = folder / f"{i:04d}-{layout}{suffix}"
        path.write_bytes(data)
        paths.append(path)
    return paths
