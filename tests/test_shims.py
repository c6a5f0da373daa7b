"""The private library internals in litft/shims still exist in the installed libraries."""

from __future__ import annotations

import pytest


def test_bitsandbytes_linear4bit_has_the_cpu_packing_flag():
    bnn = pytest.importorskip("bitsandbytes.nn")
    from litft.shims.bitsandbytes import CPU_PACKING_FLAG

    layer = bnn.Linear4bit(8, 8)
    assert hasattr(layer, CPU_PACKING_FLAG), (
        f"bitsandbytes {__import__('bitsandbytes').__version__}: Linear4bit has no `{CPU_PACKING_FLAG}` any more; "
        "check litft/shims/bitsandbytes.py (is eval-time CPU repacking still there, and how is it turned off now?)"
    )


def test_lightning_precision_choices_are_importable_and_include_ours():
    import typing

    import lightning

    try:
        from litft.shims.lightning import PRECISION_INPUT
    except ImportError as err:
        pytest.fail(f"lightning {lightning.__version__}: {err}; update litft/shims/lightning.py")

    def flatten(t):
        args = typing.get_args(t)
        return [x for a in args for x in flatten(a)] if args else [t]

    choices = set(flatten(PRECISION_INPUT))
    assert {"auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"} <= choices, choices
