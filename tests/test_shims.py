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
