"""Model hubs other than Hugging Face: ModelScope and Modelers (openMind), chosen as LLaMA-Factory does.

``USE_MODELSCOPE_HUB=1`` or ``USE_OPENMIND_HUB=1`` (ModelScope first when both are set) makes a hub id in
``model.name_or_path`` (``Qwen/Qwen2.5-14B-Instruct``) resolve to a local snapshot downloaded by that hub's own client
(``modelscope.snapshot_download`` or ``openmind_hub.snapshot_download``, revision ``master`` / ``main``, into the
client's own cache: ``MODELSCOPE_CACHE`` for ModelScope); the model and its tokenizer then load from that folder.
Without either variable, hub ids go to the Hugging Face hub through transformers, as before. An existing local
folder, ``pkg:`` names and GGUF files inside a folder never touch a hub.

The processes of a job download one after another under a file lock in litft's cache (``$LITFT_CACHE/hub``): on
a shared filesystem the first process downloads and the others find the snapshot; with node-local caches each
node downloads once. A resolution is remembered for the rest of the process (model and tokenizer share it).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from filelock import FileLock

from litft.errors import LitFTError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hub:
    name: str
    env: str
    module: str
    package: str
    revision: str


HUBS = (
    Hub("ModelScope", "USE_MODELSCOPE_HUB", "modelscope", "modelscope", "master"),
    Hub("Modelers (openMind)", "USE_OPENMIND_HUB", "openmind_hub", "openmind_hub", "main"),
)
"""In order of precedence; revision: what LLaMA-Factory passes for its default ``main`` (ModelScope calls it master)."""

_resolved: dict[tuple[str, str], str] = {}


def selected_hub(env: dict[str, str] | None = None) -> Hub | None:
    """The hub whose variable is set to 1/true, None for Hugging Face."""
    env = os.environ if env is None else env
    for hub in HUBS:
        if env.get(hub.env, "0").strip().lower() in ("1", "true"):
            return hub
    return None


def download(hub: Hub, model_id: str) -> str:
    """The local folder of ``model_id`` on ``hub``: downloaded once per cache, then remembered in this process."""
    key = (hub.env, model_id)
    if key in _resolved and os.path.isdir(_resolved[key]):
        return _resolved[key]
    try:
        client = __import__(hub.module, fromlist=["snapshot_download"])
        snapshot_download = client.snapshot_download
    except ImportError:
        raise LitFTError(
            f"model.name_or_path: {hub.env}=1 needs the {hub.package} package to download {model_id!r}: "
            f"pip install {hub.package}"
        ) from None
    from litft.model.loading import cache_root  # import cycle: litft.model.loading imports this module

    lock = cache_root() / "hub" / f"{hub.module}-{re.sub(r'[^A-Za-z0-9._-]', '_', model_id)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        try:
            path = snapshot_download(model_id, revision=hub.revision)
        except Exception as err:  # the clients raise their own types (not found, network, authorization)
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            raise LitFTError(f"model.name_or_path: cannot download {model_id!r} from {hub.name} ({hub.env}=1): "
                             f"{reason}") from None
    if not os.path.isdir(str(path)):
        raise LitFTError(f"model.name_or_path: {hub.name} returned no folder for {model_id!r} ({path!r})")
    log.info("model: %s from %s in %s", model_id, hub.name, path)
    _resolved[key] = str(path)
    return str(path)
