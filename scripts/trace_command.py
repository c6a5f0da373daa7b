"""The path of a config through the code: which litft functions a command passes on its way to the model load and
the generation (a dev helper for keeping the commands thin; not imported by litft).

    python scripts/trace_command.py predict|evaluate [WORKDIR]

Runs the command on a tiny random Qwen2 (built in WORKDIR, default a temporary folder) with an untrained adapter and
3 alpaca records, and records every call into a litft function from ``LitFTCLI.add_arguments_to_parser`` to the end
of the command's ``run``. Not descended into: the model load (``litft.model.build.inference_model``), the generation
(``litft.generation.generate``), the data pipeline (``litft.data``), the model package, ``litft.io`` and
``litft.metrics``. Prints, for the whole path and for the part from ``run(cli)``: the distinct functions (stops) in
the order first visited, the modules they are in, how often that order changes module and how often it goes back to
a module it had left, and how deep below ``run`` the model load and the generation are called (1 = called by run itself).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

import litft
from litft.cli import run
from litft.testing import build_tiny_model, write_alpaca

ROOT = os.path.dirname(litft.__file__)
TERMINALS = {("litft.model.build", "inference_model"), ("litft.generation", "generate")}
OPAQUE = ("litft.data", "litft.model", "litft.io", "litft.metrics")  # entered, not descended into


def _setup(work: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = work / "model"
    if not (model / "config.json").exists():
        build_tiny_model("qwen2", model)
    data = write_alpaca(work / "data.json", n=3)
    adapter = work / "out" / "adapter"
    if not (adapter / "adapter_config.json").exists():
        get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(r=2, target_modules=["q_proj"])
                       ).save_pretrained(adapter)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(work / "out"), "model": {"name_or_path": str(model)},
                                      "data": {"dataset": str(data), "eval_dataset": str(data)}}))
    return config


def trace(command: str, config: Path) -> list[tuple[str, str, int]]:
    """(module, function, depth) of each call on the path, in order."""
    calls: list[tuple[str, str, int]] = []
    stack: list[str] = []  # per litft frame: "path", "opaque" (a terminal or opaque module) or "inside"

    def profile(frame, event, arg):
        code = frame.f_code
        if event not in ("call", "return") or not code.co_filename.startswith(ROOT):
            return
        if code.co_name.startswith("<") or not code.co_flags & 1:  # comprehensions, lambdas, class bodies
            return
        if event == "return":
            if stack:
                stack.pop()
            return
        module = os.path.relpath(code.co_filename, os.path.dirname(ROOT))[:-3].replace("/", ".")
        if "opaque" in stack or "inside" in stack:
            stack.append("inside")
            return
        calls.append((module, code.co_name, sum(1 for s in stack if s == "path")))
        stop_here = (module, code.co_name) in TERMINALS or module.startswith(OPAQUE)
        stack.append("opaque" if stop_here else "path")

    args = [command, "--config", str(config), "--max_new_tokens", "2", "--max_samples", "2"]
    sys.setprofile(profile)
    try:
        run(args)
    finally:
        sys.setprofile(None)
    return calls


def report(label: str, calls: list[tuple[str, str, int]], *, depth: bool = False) -> None:
    stops: list[tuple[str, str]] = []
    for module, name, _ in calls:
        if (module, name) not in stops:
            stops.append((module, name))
    modules = list(dict.fromkeys(m for m, _ in stops))
    changes = back = 0
    seen: set[str] = set()
    prev = None
    for module, _ in stops:
        if prev is not None and module != prev:
            changes += 1
            back += module in seen
        seen.add(module)
        prev = module
    top = calls[0][2]
    deep = {name: d - top for m, name, d in calls if (m, name) in TERMINALS}
    print(f"{label}: {len(stops)} stops in {len(modules)} modules; {changes} module changes, {back} back to a module "
          f"already left" + (f"; calls below run: {deep}" if depth else ""))
    print("    " + " -> ".join(f"{m.removeprefix('litft.')}.{f}" for m, f in stops))


def main() -> None:
    command = sys.argv[1]
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="litft-trace-"))
    work.mkdir(parents=True, exist_ok=True)
    calls = trace(command, _setup(work))
    first = next(i for i, c in enumerate(calls) if c[:2] == ("litft.cli", "add_arguments_to_parser"))
    start = next(i for i, c in enumerate(calls) if c[:2] == (f"litft.commands.{command}", "run"))
    report(f"{command}, from the config (LitFTCLI.add_arguments_to_parser)", calls[first:])
    report(f"{command}, from run(cli)", calls[start:], depth=True)


if __name__ == "__main__":
    main()
