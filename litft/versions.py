"""The lowest version of each package litft works with, and why: the one source of pyproject.toml's pins
(tests/test_versions.py keeps them equal) and of the check that stops litft on an older install.

Several of these floors guard behaviour that an older package would change *silently* (no error, different
training): DeepSpeed before 0.19.4/0.19.5 ignores ``managed_gradient_accumulation: false`` and steps the
model on one of every ``accumulate_grad_batches`` Lightning steps; transformers before 4.56 ignores
``from_pretrained(dtype=...)`` and loads the base in float32. So litft checks, with one line naming the
package, the installed version, the floor and why (``LitFTError``, exit code 2):

- at CLI start, every core package (``extra`` None, ``when`` "start");
- deepspeed when a DeepSpeed strategy is built, torch-npu when the NPU accelerator sets up its device,
  bitsandbytes when a quantized base model is configured.

Only the release numbers are compared (``2.6.0a0+git…``, ``2.6.0.post3`` and ``2.6.0+cpu`` all count as 2.6.0),
so vendor builds of a release (NVIDIA's and Ascend's containers) pass. Pure Python on purpose: the floor
script (scripts/test_floors.sh) reads this table in a bare venv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from litft.errors import LitFTError


@dataclass(frozen=True)
class Floor:
    package: str
    """Distribution name, as pip spells it."""
    version: str
    """Lowest supported version."""
    why: str
    """The API or behaviour of that version that litft relies on (part of the error message)."""
    extra: str | None = None
    """The pyproject extra that pins it; None: a core dependency."""
    when: str | None = "start"
    """When litft checks it: "start" (CLI start), "deepspeed", "npu" or "quantization" (when that is used);
    None: never (an optional helper whose import is enough)."""


FLOORS: tuple[Floor, ...] = (
    Floor("torch", "2.6", "torch.nn.utils.get_total_norm computes the gradient norm at every optimizer step"),
    Floor("lightning", "2.6", "DeepSpeedStrategy.load_checkpoint(path, weights_only), which litft's DeepSpeed resume "
          "calls (2.5.x has no weights_only), and exclude_frozen_parameters (adapter-only checkpoints, 2.5.5)"),
    Floor("transformers", "4.56.2", "from_pretrained(dtype=...) (older versions ignore it and load the base in "
          "float32) and get_decoder() of a *ForCausalLM (4.56.0-4.56.1 return None), which the loss runs"),
    Floor("peft", "0.12", "get_peft_model(autocast_adapter_dtype=...), which litft turns off under ZeRO-3 "
          "(0.11 has no such argument)"),
    Floor("bitsandbytes", "0.48", "4-bit layers on CPU (0.45: CUDA only), stored in float32 for ZeRO-3 on CPU "
          "(0.46 refuses it; 0.47 trains a different adapter under ZeRO-3)", when="quantization"),
    Floor("datasets", "2.21", "the lowest that runs on NumPy 2 (2.20 fails: 'Unable to avoid copy'); map, "
          "select_columns, save_to_disk/load_from_disk as litft uses them are older"),
    Floor("jsonargparse", "4.40", "LightningCLI's config parsing (links, dataclass sub-configs); Lightning asks "
          ">= 4.39, 4.40 is the lowest tested"),
    Floor("safetensors", "0.4.3", "transformers >= 4.56 requires it (adapter and model files)"),
    Floor("gguf", "0.10", "transformers' GGUF loading (model.gguf_file) requires gguf >= 0.10"),
    Floor("rich", "13", "the progress bar (Lightning's RichProgressBar; Lightning asks >= 12.3)"),
    Floor("tensorboard", "2.18", "the default logger (Lightning's TensorBoardLogger) logs the hyperparameters: on "
          "NumPy 2, 2.17 and older fail there (np.string_)"),
    Floor("matplotlib", "3.8.4", "loss.png; the first matplotlib built for NumPy 2 (3.8.0-3.8.3 need NumPy < 2)"),
    Floor("deepspeed", "0.19.5", "managed_gradient_accumulation: false (ZeRO-2/3 from 0.19.4, offload from 0.19.5); "
          "older DeepSpeed ignores it and updates the model on one of every accumulate_grad_batches steps",
          extra="deepspeed", when="deepspeed"),
    Floor("torch-npu", "2.6", "torch_npu must match torch (>= 2.6)", extra="npu", when="npu"),
    Floor("rouge-score", "0.1.2", "ROUGE in the evaluate command", extra="eval", when=None),
    Floor("liger-kernel", "0.5", "LigerFusedLinearCrossEntropyLoss in the loss (CUDA)", extra="liger", when=None),
)

BY_NAME = {f.package: f for f in FLOORS}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(package: str) -> str | None:
    """The installed version of distribution ``package``, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string, without trailing zeros: '2.6.0a0+git1' -> (2, 6)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def problem(package: str, *, missing_ok: bool = False) -> str | None:
    """One line saying why the installed ``package`` cannot be used, or None when it is at or above its floor.

    missing_ok: no distribution record is not an error (a module that was imported from a source tree has none)."""
    floor = BY_NAME[_canonical(package)]
    installed = installed_version(floor.package)
    hint = f"pip install '{floor.package}>={floor.version}'" if floor.extra is None else (
        f"pip install 'litft[{floor.extra}]'")
    if installed is None and missing_ok:
        return None
    if installed is None:
        return f"{floor.package} is not installed; litft needs {floor.package}>={floor.version} ({floor.why}): {hint}"
    try:
        too_old = release(installed) < release(floor.version)
    except ValueError:
        return None  # an unparsable version (a source checkout): trust it
    if too_old:
        return (f"{floor.package} {installed} is installed; litft needs {floor.package}>={floor.version} "
                f"({floor.why}): {hint}")
    return None


def check(*packages: str, missing_ok: bool = False) -> None:
    """Raise LitFTError (one line) for the first package that is missing (unless missing_ok) or older than its floor."""
    for package in packages:
        line = problem(package, missing_ok=missing_ok)
        if line is not None:
            raise LitFTError(line)


def check_start() -> None:
    """At CLI start: every package checked at start (the core dependencies)."""
    check(*(f.package for f in FLOORS if f.when == "start"))


def requirement(floor: Floor) -> str:
    """The pyproject.toml requirement for ``floor`` (``torch>=2.6``)."""
    return f"{floor.package}>={floor.version}"
