"""The figures of a data preparation (reported by ``prepare``, logged by the data module, kept in the cache)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """Figures reported by ``prepare`` and logged by the data module."""

    kind: str = "sft"
    """What the rows are: sft, preference (one row per pair) or feedback (see :mod:`litft.data.preference`)."""
    records: int = 0
    """Raw records read."""
    skipped: int = 0
    """Bad records skipped (data.on_bad_record: skip)."""
    samples: int = 0
    """Samples kept after truncation (preference: pairs; feedback: examples)."""
    tokens: int = 0
    """Tokens in the kept samples (preference: chosen and rejected rows together)."""
    trained_tokens: int = 0
    """Trained (label != -100) tokens in the kept samples."""
    truncated: int = 0
    """Samples cut to cutoff_len (preference: pairs with a row cut)."""
    chunked: int = 0
    """Plain-text documents longer than cutoff_len, split into several samples."""
    dropped: int = 0
    """Samples dropped (prompt alone fills cutoff_len, or nothing to train)."""
    identical: int = 0
    """Preference pairs whose chosen and rejected rows are equal (after tokenization and truncation): dropped."""
    desirable: int = 0
    """Feedback examples labelled desirable (the others of ``samples`` are undesirable)."""
    rows: int = 0
    """Training rows (== samples unless packed)."""
    packing_efficiency: float | None = None
    """Real tokens / (rows × cutoff_len) when packed."""
    per_dataset: dict[str, int] = field(default_factory=dict)
    """Samples per dataset name."""

    def merge(self, other: "Stats") -> None:
        for k in ("records", "skipped", "samples", "tokens", "trained_tokens", "truncated", "chunked", "dropped", "identical",
                  "desirable"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, v in other.per_dataset.items():
            self.per_dataset[k] = self.per_dataset.get(k, 0) + v
