"""The console: library noise is silenced by exact message, real warnings stay visible."""

from __future__ import annotations

import logging
import warnings

from litft.console import LOG_LINES, WARNINGS, quiet_library_noise


def test_known_noise_is_silenced_and_other_warnings_are_not():
    quiet_library_noise()
    quiet_library_noise()  # idempotent
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_library_noise()  # filters go on top of the "default" just set
        for prefix in WARNINGS:
            warnings.warn(prefix + " ... details", UserWarning)
        warnings.warn("gradient_clip_val is ignored by this strategy", UserWarning)
    assert [str(w.message) for w in seen] == ["gradient_clip_val is ignored by this strategy"]


def test_known_log_lines_are_dropped_and_others_kept(caplog):
    quiet_library_noise()
    name, (prefix, _) = next(iter(LOG_LINES.items()))
    logger = logging.getLogger(name)
    with caplog.at_level(logging.INFO, logger=name):
        logger.info(prefix + " try this service")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records if r.name == name] == ["GPU available: False, used: False"]
    assert sum(type(f).__name__ == "_DropPrefix" for f in logger.filters) == 1
