"""Strategies litft adds to Lightning (registered before the CLI parses)."""


def register() -> None:
    """Register litft's strategies in Lightning's StrategyRegistry (idempotent)."""
