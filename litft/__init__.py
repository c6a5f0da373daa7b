"""litft: fine-tune open LLMs with LoRA/QLoRA from one YAML, built on Lightning."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# torch >= 2.5 imports torch_npu through an entry point at `import torch`, which fails on hosts without
# CANN (login nodes, CPU machines). litft imports torch_npu itself, guarded (litft/accelerators/npu.py).
# Set TORCH_DEVICE_BACKEND_AUTOLOAD=1 to restore torch's behaviour.
if "torch" not in _sys.modules:
    _os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
