"""litft: fine-tune open LLMs with LoRA/QLoRA from one YAML, built on Lightning."""

__version__ = "0.1.0"
