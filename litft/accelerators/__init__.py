"""Accelerators litft adds to Lightning (registered before the CLI parses)."""


def register() -> None:
    """Register litft's accelerators in Lightning's AcceleratorRegistry (idempotent)."""
