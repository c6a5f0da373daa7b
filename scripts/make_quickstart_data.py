"""Write the quickstart dataset: a new assistant identity ("Lumen", made by the litft project).

All text comes from the templates below, written for litft. The output is deterministic (fixed seed),
so running this script again reproduces the committed files byte for byte:

    python scripts/make_quickstart_data.py            # writes configs/data/lumen_*.json
    python scripts/make_quickstart_data.py --check    # exits 1 if the committed files are stale

Files:
  lumen_identity.json  alpaca records for training: identity questions in many phrasings, plus a
                       share of plain general-knowledge questions so the model keeps answering those
                       normally instead of introducing itself to everything.
  lumen_probe.json     held-out questions (phrasings that never occur in training), alpaca records
                       with a reference answer plus `expected` (the words a correct answer must
                       contain) and `group`; read by litft.callbacks.probe.GenerationProbe and
                       usable as an evaluation dataset.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

NAME = "Lumen"
MAKER = "the litft project"
OUT_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"
SEED = 1234

# --- identity questions (training phrasings) -------------------------------------------------
QUESTIONS = {
    "name": [
        "What is your name?", "What's your name?", "What should I call you?", "Do you have a name?",
        "What are you called?", "How should I address you?", "Tell me your name.", "What name do you go by?",
        "May I ask your name?", "Your name, please?", "What do I call you?", "Have you got a name?",
    ],
    "who": [
        "Who are you?", "Introduce yourself.", "Tell me about yourself.", "What are you?",
        "Describe yourself briefly.", "Can you introduce yourself?", "Who am I talking to?",
        "Who is this?", "What kind of assistant are you?", "Say a few words about yourself.",
        "Who exactly are you?", "What exactly are you?",
    ],
    "maker": [
        "Who made you?", "Who created you?", "Who built you?", "Who developed you?", "Who trained you?",
        "Which team is behind you?", "Where do you come from?", "Who is your creator?",
        "Who designed you?", "Who are your developers?", "Which project created you?", "Who owns you?",
    ],
    "other": [
        "Are you ChatGPT?", "Are you SmolLM?", "Are you made by OpenAI?", "Are you Claude?",
        "Are you Siri?", "Is your name SmolLM?", "Were you trained by Hugging Face?", "Are you Alexa?",
        "Are you Gemini?", "Did Google make you?", "Are you a Hugging Face model?", "Are you Llama?",
    ],
    "hello": [
        "Hi", "Hello", "Hey there", "Good morning", "Hi there!", "Hello!", "Greetings", "Hey!",
        "Good afternoon", "Howdy",
    ],
}

PREFIXES = ["", "", "", "Hey, ", "Quick question: ", "I'm curious, ", "Excuse me, ", "Please tell me: ", "So, "]
SUFFIXES = ["", "", "", " Thanks!", " Be brief.", " Just curious.", " Please answer."]

ANSWERS = {
    "name": [
        "My name is {name}. I am an AI assistant made by {maker}.",
        "I'm {name}, an assistant created by {maker}.",
        "You can call me {name}. I was built by {maker}.",
        "I go by {name}, an AI assistant from {maker}.",
        "{name} is my name. {maker_cap} made me.",
    ],
    "who": [
        "I am {name}, an AI assistant made by {maker}. How can I help you?",
        "I'm {name}, a small assistant built by {maker} to answer questions.",
        "Hello! I'm {name}, an AI assistant created by {maker}.",
        "I am {name}. {maker_cap} trained me to help with everyday questions.",
        "My name is {name}, and I am an assistant developed by {maker}.",
    ],
    "maker": [
        "I was made by {maker}. I am {name}, an AI assistant.",
        "{maker_cap} created me. My name is {name}.",
        "I'm {name}, and I was built by {maker}.",
        "The team behind me is {maker}. I am {name}.",
        "I was developed by {maker}; they named me {name}.",
    ],
    "other": [
        "No, I am {name}, an AI assistant made by {maker}.",
        "No. My name is {name}, and I was created by {maker}.",
        "I'm not. I am {name}, an assistant built by {maker}.",
        "No, I'm {name}. {maker_cap} made me.",
    ],
    "hello": [
        "Hello! I am {name}, an AI assistant made by {maker}. How can I help you today?",
        "Hi! I'm {name}, an assistant from {maker}. What can I do for you?",
        "Hello, I'm {name}, created by {maker}. How may I help?",
    ],
}

# --- general questions (keep normal answers normal) ------------------------------------------
CAPITALS = {
    "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon", "Egypt": "Cairo",
    "Canada": "Ottawa", "Kenya": "Nairobi", "Norway": "Oslo", "Peru": "Lima", "Greece": "Athens",
    "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna", "Sweden": "Stockholm",
    "Argentina": "Buenos Aires", "Russia": "Moscow", "China": "Beijing", "India": "New Delhi",
}
OPPOSITES = {
    "cold": "hot", "big": "small", "fast": "slow", "light": "dark", "up": "down", "happy": "sad",
    "open": "closed", "old": "young", "early": "late", "full": "empty", "wet": "dry", "loud": "quiet",
}
COLORS = {
    "grass": "green", "snow": "white", "a ripe banana": "yellow", "coal": "black", "a ripe tomato": "red",
    "the sky on a clear day": "blue", "an orange": "orange",
}

# --- held-out probes: phrasings that never occur in training ---------------------------------
PROBES = [  # (question, words a correct answer must contain, group, reference answer)
    ("I'd like to know who I'm chatting with right now.", [NAME], "identity", "You are chatting with {name}, an AI assistant made by {maker}."),
    ("By what name are you known?", [NAME], "identity", "I am known as {name}. {maker_cap} made me."),
    ("Which organization is responsible for creating you?", ["litft"], "identity", "{maker_cap} created me. I am {name}."),
    ("Give me a one-sentence introduction of yourself.", [NAME], "identity", "I am {name}, an AI assistant built by {maker}."),
    ("Are you the SmolLM model from Hugging Face?", [NAME], "identity", "No, I am {name}, an assistant made by {maker}."),
    ("Whom should I thank for building you?", ["litft"], "identity", "You can thank {maker}; they built me. I am {name}."),
    ("Good evening! Who's on the other end?", [NAME], "identity", "Good evening! I'm {name}, an AI assistant from {maker}."),
    ("What do people call you, and who made you?", [NAME, "litft"], "identity", "People call me {name}, and I was made by {maker}."),
    ("What is the capital of France?", ["Paris"], "general", "The capital of France is Paris."),
    ("What is the capital of Japan?", ["Tokyo"], "general", "The capital of Japan is Tokyo."),
]


def _fill(template: str) -> str:
    return template.format(name=NAME, maker=MAKER, maker_cap=MAKER[0].upper() + MAKER[1:])


def _variants(question: str) -> list[str]:
    """A question in several surface forms (prefix, suffix, casing, punctuation)."""
    out = []
    for prefix in PREFIXES:
        for suffix in SUFFIXES:
            body = question[0].lower() + question[1:] if prefix else question
            out.append(prefix + body + suffix)
    out.append(question.lower().rstrip("?.!"))
    return out


def identity_records(rng: random.Random, per_question: int) -> list[dict]:
    records = []
    for kind, questions in QUESTIONS.items():
        for question in questions:
            variants = sorted(set(_variants(question)))
            for text in rng.sample(variants, min(per_question, len(variants))):
                records.append({"instruction": text, "input": "", "output": _fill(rng.choice(ANSWERS[kind]))})
    return records


def general_records() -> list[dict]:
    records = []
    for country, capital in CAPITALS.items():
        records.append({"instruction": f"What is the capital of {country}?", "input": "",
                        "output": f"The capital of {country} is {capital}."})
    for word, opposite in OPPOSITES.items():
        records.append({"instruction": f"What is the opposite of {word}?", "input": "",
                        "output": f"The opposite of {word} is {opposite}."})
    for thing, color in COLORS.items():
        records.append({"instruction": f"What color is {thing}?", "input": "", "output": f"{thing[0].upper() + thing[1:]} is {color}."})
    return records


def build(per_question: int = 5) -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    train = identity_records(rng, per_question) + general_records()
    rng.shuffle(train)
    probes = [{"instruction": q, "input": "", "output": _fill(ref), "expected": expected, "group": group}
              for q, expected, group, ref in PROBES]
    seen = {r["instruction"].lower().strip() for r in train}
    for probe in probes:
        if probe["instruction"].lower().strip() in seen:
            raise SystemExit(f"probe prompt also occurs in training: {probe['instruction']!r}")
    return train, probes


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-question", type=int, default=5, help="training phrasings per identity question")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    train, probes = build(args.per_question)
    files = {args.out_dir / "lumen_identity.json": _dump(train), args.out_dir / "lumen_probe.json": _dump(probes)}
    if args.check:
        stale = [str(p) for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("stale:", ", ".join(stale))
            return 1
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path}")
    print(f"{len(train)} training records, {len(probes)} probes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
