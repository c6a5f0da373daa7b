"""Test helpers: the tiny models and data of :mod:`litft.testing` (usable from pytest fixtures, tests/conftest.py,
and from scripts the tests start in other processes:
``python -c "from tests.helpers import build_tiny_model; build_tiny_model('llama', '/tmp/x')"``), and where
LLaMA-Factory's demo data is.
"""

from __future__ import annotations

import os
from pathlib import Path

from litft.testing import (  # noqa: F401  (re-exported for the tests)
    CHATML_TEMPLATE,
    LLAMA3_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tokenizer,
    write_alpaca,
)

LLAMAFACTORY_ENV = "LITFT_LLAMAFACTORY_DATA"
"""Folder with LLaMA-Factory's own demo data and dataset_info.json (set by .ci/run when it has a copy).
Tests that read those files skip, with this name in the reason, when it is unset."""


def llamafactory_dir() -> Path | None:
    """LLaMA-Factory's demo data folder named by $LITFT_LLAMAFACTORY_DATA, or None when unset."""
    value = os.environ.get(LLAMAFACTORY_ENV)
    if not value:
        return None
    path = Path(value)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{LLAMAFACTORY_ENV}={value}: no dataset_info.json there")
    return path


def attach_trainer(module, *, strategy=None, precision: str = "32-true", device: str = "cpu"):
    """Give ``module`` what ``LitFTModule.configure_model`` reads from its trainer (strategy, accelerator, precision):
    a one-process run on ``device`` unless ``strategy`` is given; through Lightning's public ``trainer`` setter."""
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import SingleDeviceStrategy

    strategy = strategy or SingleDeviceStrategy(device=torch.device(device))
    module.trainer = SimpleNamespace(strategy=strategy, accelerator=CPUAccelerator(), precision=precision)
    return module
