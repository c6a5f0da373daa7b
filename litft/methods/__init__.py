"""Training methods, one entry each (like a data format): what data they consume and how a micro-batch's loss is made.

``model.method`` selects one; its parameters are the section of the same name (``model.dpo``, ``model.orpo``,
``model.simpo``, ``model.kto``), a dataclass whose fields are documented where they are defined:

=======  ==============  ==========  ===========================================================================
method   data.kind       reference   loss per unit (pair or example), see the method's module
=======  ==============  ==========  ===========================================================================
sft      sft             no          token cross-entropy (litft.model.loss; normalised per trained token)
dpo      preference      yes         DPO sigmoid / IPO / hinge / robust on summed log-ratios (litft.methods.dpo)
orpo     preference      no          reply NLL + odds-ratio term on mean token log-probs (litft.methods.orpo)
simpo    preference      no          SimPO margin on mean token log-probs, optional SFT term (litft.methods.simpo)
kto      feedback        yes         KTO against a KL baseline from mismatched rows (litft.methods.kto)
=======  ==============  ==========  ===========================================================================

The reference is the model with its adapters off (:mod:`litft.methods.reference`). Log-probabilities come from the
chunked output head on trained positions only (:mod:`litft.methods.logps`). Preference losses are normalised per pair
(KTO: per example) over the whole optimizer step, like SFT's per-token loss (:mod:`litft.strategies.scale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from litft.methods.base import StepOutput
from litft.methods.dpo import DPOConfig
from litft.methods.feedback import feedback_step
from litft.methods.kto import KTOConfig
from litft.methods.orpo import ORPOConfig
from litft.methods.pairs import pair_step
from litft.methods.simpo import SimPOConfig


@dataclass(frozen=True)
class Method:
    name: str
    data_kind: str
    """What the method consumes: ``data.kind`` (sft, preference or feedback)."""
    config: Optional[type]
    """Its parameters' dataclass (the ``model.<name>`` section); None for SFT."""
    needs_reference: bool
    """Whether a step scores the rows with the reference model (the adapters off) too."""


METHODS: dict[str, Method] = {
    "sft": Method("sft", "sft", None, False),
    "dpo": Method("dpo", "preference", DPOConfig, True),
    "orpo": Method("orpo", "preference", ORPOConfig, False),
    "simpo": Method("simpo", "preference", SimPOConfig, False),
    "kto": Method("kto", "feedback", KTOConfig, True),
}
NAMES = tuple(METHODS)


def data_kind(method: str) -> str:
    """``data.kind`` for ``model.method`` (linked by the CLI)."""
    return METHODS[method].data_kind


def run_step(method: str, config, batch: dict, policy: Callable, reference: Optional[Callable] = None,
             reduce_sum: Callable = lambda t: t) -> StepOutput:
    """One micro-batch of a preference method (not SFT): see :func:`pair_step` and :func:`feedback_step`."""
    kind = METHODS[method].data_kind
    if kind == "preference":
        return pair_step(config, batch, policy, reference)
    if kind == "feedback":
        return feedback_step(config, batch, policy, reference, reduce_sum)
    raise ValueError(f"{method} is not a preference method")


__all__ = ["DPOConfig", "KTOConfig", "METHODS", "Method", "NAMES", "ORPOConfig", "SimPOConfig", "StepOutput",
           "data_kind", "run_step"]
