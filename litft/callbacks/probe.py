"""Show that fine-tuning worked: greedy answers to held-out prompts before and after training, scored.

The prompts file is a JSON list of records::

    [{"prompt": "By what name are you known?", "expected": ["Lumen"], "group": "identity"}, ...]

Alpaca records with these extra keys work too (the prompt is then ``instruction``, plus ``"\n" + input``
when the input is not empty), so one file can be both an evaluation dataset and the probe's prompts.
``expected`` (a string or a list of strings) are the words a correct answer must contain, all of them,
case-insensitively; ``group`` (optional, default ``"all"``) gets a score of its own; ``system``
(optional) is a system message for that prompt (added as the generate / predict commands add theirs:
:func:`litft.inference.prompt_ids`; an empty one adds none).

:class:`GenerationProbe` answers every prompt when fit starts (the base model with its adapters still at
their no-op initial values; when resuming, the checkpoint's weights) and again when training ends (before
Lightning's teardown moves the model off its device), prints a before/after table with the scores, and
writes both to ``<default_root_dir>/probe.json``. Generation runs on global rank 0 only; it is skipped
when parameters are sharded (DeepSpeed ZeRO-3), where one rank alone cannot run the model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from litft import inference
from litft.errors import DataError
from litft.generation import generate
from litft.io import atomic_write_text
from litft.strategies import is_zero3

DEFAULT_GROUP = "all"


@dataclass(frozen=True)
class Probe:
    """One held-out prompt and what a correct answer must contain."""

    prompt: str
    """The user message."""
    expected: tuple[str, ...]
    """Words or phrases the answer must all contain (case-insensitive)."""
    group: str = DEFAULT_GROUP
    """Prompts of one group are scored together (e.g. 'identity', 'general')."""
    system: str | None = None
    """Optional system message sent before the prompt (empty: none)."""


def load_probes(path: str | os.PathLike) -> list[Probe]:
    """Read and check a prompts file; bad input raises DataError naming the file, record and field."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("prompts file not found", file=str(path)) from None
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at line {err.lineno})", file=str(path)) from None
    if not isinstance(records, list) or not records:
        raise DataError("expected a non-empty JSON list of {prompt, expected} records", file=str(path))
    probes = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError("expected an object", file=str(path), record=i)
        field = "instruction" if "instruction" in rec and "prompt" not in rec else "prompt"
        prompt = rec.get(field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("missing or empty", file=str(path), record=i, field=field)
        query = rec.get("input", "") if field == "instruction" else ""
        if not isinstance(query, str):
            raise DataError("must be a string", file=str(path), record=i, field="input")
        if query.strip():
            prompt = f"{prompt}\n{query}"
        expected = rec.get("expected")
        if isinstance(expected, str):
            expected = [expected]
        if not isinstance(expected, list) or not expected or not all(isinstance(e, str) and e.strip() for e in expected):
            raise DataError("must be a non-empty string or list of non-empty strings", file=str(path), record=i, field="expected")
        group = rec.get("group", DEFAULT_GROUP)
        if not isinstance(group, str) or not group:
            raise DataError("must be a non-empty string", file=str(path), record=i, field="group")
        system = rec.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError("must be a string", file=str(path), record=i, field="system")
        probes.append(Probe(prompt=prompt, expected=tuple(expected), group=group, system=system))
    return probes


def answer_passes(answer: str, expected: tuple[str, ...] | list[str]) -> bool:
    """True when the answer contains every expected phrase, ignoring case."""
    text = answer.casefold()
    return all(e.casefold() in text for e in expected)


def score_answers(probes: list[Probe], answers: list[str]) -> dict[str, Any]:
    """Fraction of answers that pass, overall and per group (groups in order of first appearance)."""
    if len(probes) != len(answers):
        raise ValueError(f"{len(probes)} probes but {len(answers)} answers")
    passed = [answer_passes(a, p.expected) for p, a in zip(probes, answers)]
    groups: dict[str, list[bool]] = {}
    for p, ok in zip(probes, passed):
        groups.setdefault(p.group, []).append(ok)
    return {
        "score": sum(passed) / len(passed),
        "passed": sum(passed),
        "total": len(passed),
        "groups": {g: {"score": sum(v) / len(v), "passed": sum(v), "total": len(v)} for g, v in groups.items()},
        "pass": passed,
    }


def prompt_ids(tokenizer, probe: Probe, template: str | None = None) -> list[int]:
    """Token ids of the prompt up to the start of the assistant's answer, built the way training builds them
    (:func:`litft.inference.prompt_ids`, as the generate and predict commands build theirs)."""
    messages = [{"role": "user", "content": probe.prompt}]
    return list(inference.prompt_ids(tokenizer, messages, template=template, system=probe.system))


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(probes: list[Probe], before: dict | None, after: dict | None, width: int = 60) -> str:
    """A plain-text before/after table followed by the scores."""
    lines = ["", "Held-out probes (greedy answers; [+] = contains " + "the expected words)"]
    for i, probe in enumerate(probes):
        lines.append(f"{i + 1:>2}. {probe.prompt}   (expects: {', '.join(probe.expected)})")
        for label, result in (("before", before), ("after", after)):
            if result is not None:
                mark = "+" if result["pass"][i] else "-"
                lines.append(f"    {label:<6} [{mark}] {_shorten(result['answers'][i], width)}")
    for label, result in (("before", before), ("after", after)):
        if result is None:
            continue
        groups = result["groups"]
        per_group = "" if len(groups) == 1 else "  (" + ", ".join(
            f"{g} {v['passed']}/{v['total']}" for g, v in groups.items()) + ")"
        lines.append(f"Score {label:<6} {result['passed']}/{result['total']} = {result['score']:.2f}{per_group}")
    return "\n".join(lines)


class GenerationProbe(Callback):
    """Answer held-out prompts greedily before and after fine-tuning; print and save the scores.

    Args:
        prompts_file: JSON list of ``{"prompt", "expected", "group"?, "system"?}`` records.
        max_new_tokens: longest answer generated per prompt.
        batch_size: prompts generated together (left-padded).
        template: chat template name passed to ``litft.inference.prompt_ids``; None takes the
            data module's ``template`` attribute when it has one, else the tokenizer's own template.
        filename: result file, written inside the trainer's ``default_root_dir``.
    """

    def __init__(
        self,
        prompts_file: str,
        max_new_tokens: int = 48,
        batch_size: int = 16,
        template: str | None = None,
        filename: str = "probe.json",
    ):
        self.prompts_file = prompts_file
        self.probes = load_probes(prompts_file)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.template = template
        self.filename = filename
        self.results: dict[str, dict] = {}

    # --- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._usable(trainer):
            self.results.pop("after", None)
            self._run("before", trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_train_end, not on_fit_end: Lightning's teardown (before on_fit_end) moves the model to the CPU.
        if self._usable(trainer):
            self._run("after", trainer, pl_module)
            print(format_report(self.probes, self.results.get("before"), self.results.get("after")), flush=True)

    # --- internals -----------------------------------------------------------------------------
    def _usable(self, trainer: Trainer) -> bool:
        if not trainer.is_global_zero:
            return False
        if is_zero3(trainer.strategy):  # the only sharding litft offers (FSDP is refused: litft/strategies/compat.py)
            rank_zero_warn("GenerationProbe: skipped, parameters are sharded across ranks (ZeRO-3)")
            return False
        return True

    def _template(self, trainer: Trainer) -> str | None:
        if self.template is not None:
            return self.template
        datamodule = getattr(trainer, "datamodule", None)
        return getattr(datamodule, "template", None)

    def _run(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        model, tokenizer = pl_module.model, pl_module.tokenizer
        template = self._template(trainer)
        prompts = [prompt_ids(tokenizer, p, template) for p in self.probes]
        was_training = model.training
        model.eval()
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            with trainer.precision_plugin.forward_context():
                answers = generate(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        finally:
            model.train(was_training)
        result = score_answers(self.probes, answers)
        result["answers"] = answers
        result["seconds"] = round(time.perf_counter() - start, 2)
        result["cpu_seconds"] = round(time.process_time() - start_cpu, 2)  # all threads; shows contention
        result["global_step"] = trainer.global_step
        if stage == "before" and trainer.ckpt_path:  # resuming: the weights are the checkpoint's, not the base's
            result["resumed_from"] = str(trainer.ckpt_path)
        self.results[stage] = result
        print(f"GenerationProbe {stage}: {result['passed']}/{result['total']} = {result['score']:.2f} "
              f"({result['seconds']:.1f} s)", flush=True)
        report = {"prompts_file": str(self.prompts_file), "probes": [asdict(p) for p in self.probes], **self.results}
        atomic_write_text(Path(trainer.default_root_dir) / self.filename,
                          json.dumps(report, ensure_ascii=False, indent=1) + "\n")
