"""Where weights and tokenizers come from: a hub id, a local directory, or a GGUF file.

A hub id is a Hugging Face id unless ``USE_MODELSCOPE_HUB=1`` or ``USE_OPENMIND_HUB=1`` points it at ModelScope or
Modelers (``litft.model.hubs``): then it resolves to the downloaded folder, for the model and its tokenizer alike.

A GGUF file is dequantized once by transformers and cached as a plain safetensors checkpoint
(``$LITFT_CACHE/gguf/<fingerprint>/``): transformers marks GGUF-loaded models as quantized, which
makes them refuse to train or save, so every later step works on the plain copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from litft.errors import LitFTError
from litft.io import atomic_dir
from litft.model.hubs import download, selected_hub

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """litft's cache folder: ``$LITFT_CACHE`` or ``~/.cache/litft``."""
    return Path(os.environ.get("LITFT_CACHE", Path.home() / ".cache" / "litft"))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def expand_path(name_or_path: str) -> str:
    """``pkg:<module>`` names the folder of an installed Python package (models shipped on PyPI)."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    module = name_or_path[4:]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LitFTError(f"model.name_or_path: Python package '{module}' is not installed")
    return list(spec.submodule_search_locations)[0]


def check_source(name_or_path: str, gguf_file: str | None = None) -> None:
    """Fail early, in one line, when a local model path or GGUF file does not exist."""
    name_or_path = expand_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if gguf_file is not None:
        gguf = path / gguf_file if not Path(gguf_file).is_absolute() else Path(gguf_file)
        if not gguf.is_file():
            raise LitFTError(f"model.gguf_file: no GGUF file at {gguf}")
        return
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise LitFTError(f"model.name_or_path: {path} is a folder without config.json (not a transformers model)")
        return
    if not _looks_like_hub_id(name_or_path):
        raise LitFTError(f"model.name_or_path: no such model folder: {path}")


def from_other_hub(name_or_path: str) -> str:
    """A hub id's local folder when ``USE_MODELSCOPE_HUB`` / ``USE_OPENMIND_HUB`` selects that hub; anything else
    (a Hugging Face id, a local path, ``pkg:``) unchanged."""
    hub = selected_hub()
    if hub is None or name_or_path.startswith("pkg:") or Path(name_or_path).expanduser().exists():
        return name_or_path
    if not _looks_like_hub_id(name_or_path):
        return name_or_path  # check_source names the missing folder
    return download(hub, name_or_path)


def resolve_model_path(name_or_path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False) -> str:
    """The path (or Hugging Face id) that ``from_pretrained`` should read: ids of another selected hub are
    downloaded (``litft.model.hubs``); GGUF files are converted once and cached."""
    name_or_path = from_other_hub(name_or_path)
    check_source(name_or_path, gguf_file)
    name_or_path = expand_path(name_or_path)
    if gguf_file is None:
        return str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists() else name_or_path
    gguf = Path(name_or_path).expanduser() / gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return str(target)
    _convert_gguf(gguf, target, trust_remote_code=trust_remote_code)
    return str(target)


def _convert_gguf(gguf: Path, target: Path, *, trust_remote_code: bool) -> None:
    """Dequantize a GGUF file into a plain fp32 safetensors checkpoint, written atomically."""
    log.info("Converting %s to a plain checkpoint in %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=trust_remote_code)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Rebuild without the GGUF quantization flag, then copy the dequantized weights in.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    with atomic_dir(target, replace=False) as tmp:  # another process converting the same file may win the race
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
NAMED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
_HUB_KERNEL = re.compile(r"[\w.-]+/[\w.-]+(@[\w.-]+)?(:[\w.-]+)?")
"""A hub kernel id as transformers takes it: ``org/repo``, optionally ``@revision`` and ``:function``."""


def check_attn_name(name: str | None) -> None:
    """``model.attn_implementation`` is one of transformers' named implementations or a hub kernel id."""
    if name is None or name in NAMED_ATTENTION or _HUB_KERNEL.fullmatch(name):
        return
    raise LitFTError(f"model.attn_implementation: '{name}' is not one of {', '.join(NAMED_ATTENTION)} or a hub "
                     "kernel id such as kernels-community/flash-attn2")


def check_attn_implementation(name: str | None) -> None:
    """One line instead of transformers' ImportError traceback when a flash-attention kernel is not installed."""
    check_attn_name(name)
    if name and "/" in name and importlib.util.find_spec("kernels") is None:
        raise LitFTError(f"model.attn_implementation: {name} is a hub kernel, which transformers loads with the "
                         "kernels package, not installed: pip install kernels (or set model.attn_implementation: sdpa)")
    package = _FLASH_PACKAGES.get(name or "")
    if package is not None and importlib.util.find_spec(package) is None:
        install = "pip install flash-attn --no-build-isolation" if name == "flash_attention_2" else "build flash-attn 3 (hopper/)"
        raise LitFTError(
            f"model.attn_implementation: {name} needs the {package} package, which is not installed: {install} "
            "(CUDA GPUs), or set model.attn_implementation: sdpa"
        )


def load_tokenizer(name_or_path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False):
    """The model's own tokenizer, with a pad token (the EOS token when the tokenizer has none)."""
    path = resolve_model_path(name_or_path, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        reason = " ".join(str(err).split())  # one line
        raise LitFTError(f"model.name_or_path: cannot load a tokenizer from {name_or_path}: {reason}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
