"""Causal-LM loss on trained positions only, computed from hidden states, in memory bounded by one chunk.

Positions whose (shifted) label is -100 are dropped *before* the output projection, so the vocabulary-wide
head runs only where a token is trained. The head + cross-entropy then runs chunk by chunk and no chunk's
logits outlive it:

* ``chunked`` (any device): with a frozen head, each chunk's gradient with respect to its hidden states is
  computed right away in the forward pass (the logits are freed before the next chunk) and the backward
  pass only scales it; with a trainable head, each chunk is recomputed in the backward pass
  (``torch.utils.checkpoint``). Memory: one chunk's logits, not trained tokens x vocabulary. The same chunks
  give one cross-entropy per trained token (:func:`token_losses_from_hidden`) for the preference methods'
  per-sequence log-probabilities (``litft/methods/logps.py``).
* ``liger`` (only when asked: ``model.loss_kernel: liger``): Liger's fused linear cross-entropy kernel
  (``liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss``). It needs CUDA, ``liger-kernel`` installed and
  a whole plain ``nn.Linear`` head (not partitioned by ZeRO-3, not wrapped by PEFT); anything else stops with one
  line naming the key (:func:`liger_unusable`). Its matmuls take the hidden states and the head weight as they come
  (older releases multiply them outside autocast, newer ones pick a path by dtype), so the hidden states are cast to
  the head weight's dtype first: under QLoRA the head is fp32 (peft's ``prepare_model_for_kbit_training``) while a
  model may hand over bf16 hidden states; casting the trained tokens' hidden states (tokens x hidden) costs far less
  than casting the head (vocabulary x hidden).

Sharded heads (DeepSpeed ZeRO-3, the only sharding litft offers): every call of a partitioned head is a
collective, so ranks must make the same calls whatever their number of trained tokens (zero included). A frozen
``nn.Linear`` head under ZeRO-3 is gathered once per call of :func:`lm_loss_from_hidden` and the chunks run on
the gathered weight (:mod:`litft.model.zero3_head`); any other head under ``symmetric=True`` runs the chunk count
agreed across ranks (one all-reduce), empty chunks included. Every path runs at least one chunk, so the loss
always depends on the hidden states and every rank runs the whole backward pass, even with no trained token.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from litft.errors import LitFTError
from litft.labels import IGNORE_INDEX
from litft.model import zero3_head

log = logging.getLogger(__name__)

CHUNK_LOGITS_BYTES = 256 * 2**20
"""Default chunk: as many trained tokens as keep one chunk's fp32 logits near 256 MiB."""
KERNELS = ("chunked", "liger")
"""``model.loss_kernel`` values; chunked is the default on every device."""

_logged: set[str] = set()


def _log_once(message: str, *args) -> None:
    text = message % args
    if text not in _logged:
        _logged.add(text)
        log.info(text)


def default_chunk_size(vocab_size: int) -> int:
    """Trained tokens per chunk so that one chunk's fp32 logits take about ``CHUNK_LOGITS_BYTES``."""
    return max(16, CHUNK_LOGITS_BYTES // (4 * max(int(vocab_size), 1)))


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _ce_tokens(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def _chunks(n: int, chunk_size: int, n_chunks: int):
    for i in range(n_chunks):
        yield slice(min(i * chunk_size, n), min((i + 1) * chunk_size, n))


class _FrozenHeadCE(torch.autograd.Function):
    """Cross-entropy of ``project(hidden)``, summed (``per_token=False``) or one value per row of ``hidden``; each
    chunk's gradient with respect to ``hidden`` is computed in the forward pass while its logits exist, then the
    logits are freed. Backward scales the stored gradient (row by row for per-token values: a row's loss depends on
    that row only). Only for a projection without trainable parameters (their gradients would be lost)."""

    @staticmethod
    def forward(ctx, hidden, targets, project, chunk_size, n_chunks, per_token=False):
        n = hidden.shape[0]
        out = torch.zeros((n,) if per_token else (), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for part in _chunks(n, chunk_size, n_chunks):
            with torch.enable_grad():
                h = hidden[part].detach().requires_grad_(True)
                if per_token:
                    tokens = _ce_tokens(project(h), targets[part])
                    loss = tokens.sum()
                else:
                    loss = _ce_sum(project(h), targets[part])
                (g,) = torch.autograd.grad(loss, h)
            grad[part] = g
            if per_token:
                out[part] = tokens.detach()
            else:
                out += loss.detach()
        ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        scale = grad_output.to(grad.dtype)
        return grad * (scale.unsqueeze(-1) if scale.dim() else scale), None, None, None, None, None


def _recomputed_chunks(hidden, targets, project, chunk_size, n_chunks, per_token=False) -> torch.Tensor:
    """Cross-entropy (summed, or per token), each chunk recomputed in backward (a trainable head gets its gradients
    normally)."""
    if per_token:
        parts = [checkpoint(_chunk_tokens, project, hidden[p], targets[p], use_reentrant=False)
                 for p in _chunks(hidden.shape[0], chunk_size, n_chunks)]
        return torch.cat(parts)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for part in _chunks(hidden.shape[0], chunk_size, n_chunks):
        total = total + checkpoint(_chunk_loss, project, hidden[part], targets[part], use_reentrant=False)
    return total


def _chunk_loss(project, hidden, targets):
    return _ce_sum(project(hidden), targets)


def _chunk_tokens(project, hidden, targets):
    return _ce_tokens(project(hidden), targets)


def _agreed_chunk_count(n_chunks: int, device: torch.device) -> int:
    """The largest chunk count over all ranks (one all-reduce), so every rank makes the same head calls."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n_chunks
    count = torch.tensor([n_chunks], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())


def _frozen(head: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in head.parameters())


def _plain_linear(head: torch.nn.Module) -> bool:
    return type(head) is torch.nn.Linear


def _liger_loss():
    """Liger's fused linear cross-entropy (summed), or None when liger-kernel is not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional (litft[liger]), CUDA only
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def liger_unusable(on_cuda: bool, head: torch.nn.Module, *, sharded: bool) -> Optional[str]:
    """Why Liger's fused kernel cannot compute this loss (None: it can).

    on_cuda: the hidden states are on a CUDA device. sharded: the strategy may partition the head (ZeRO-3)."""
    if not on_cuda:
        return "Liger's kernel runs on CUDA devices only"
    if _liger_loss() is None:
        return "liger-kernel is not installed (pip install 'litft[liger]')"
    if sharded or zero3_head.is_partitioned(head) or type(getattr(head, "weight", None)) is not torch.nn.Parameter:
        return "the output head is sharded (DeepSpeed ZeRO-3); Liger needs the whole weight"
    if not _plain_linear(head):
        return (f"the output head is a {type(head).__name__}, not a plain nn.Linear (adapted or trained through "
                "model.lora?)")
    return None


def check_liger(on_cuda: bool, head: torch.nn.Module, *, sharded: bool) -> None:
    """One line naming ``model.loss_kernel`` when Liger's kernel cannot run here."""
    reason = liger_unusable(on_cuda, head, sharded=sharded)
    if reason is not None:
        raise LitFTError(f"model.loss_kernel=liger: {reason}; use model.loss_kernel: chunked")


def _liger_sum(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Liger's summed cross-entropy, the hidden states in the head weight's dtype (see the module's docstring)."""
    if hidden.dtype != head.weight.dtype:
        _log_once("loss: Liger: hidden states cast from %s to the head's %s", str(hidden.dtype).replace("torch.", ""),
                  str(head.weight.dtype).replace("torch.", ""))
        hidden = hidden.to(head.weight.dtype)
    loss = _liger_loss()(head.weight, hidden, targets, head.bias)
    loss = loss[0] if isinstance(loss, tuple) else getattr(loss, "loss", loss)
    return loss.float()


def lm_loss_from_hidden(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    *,
    chunk_size: Optional[int] = None,
    symmetric: bool = False,
    kernel: str = "chunked",
    shifted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of trained positions) for hidden states ``(B, T, H)``.

    chunk_size: trained tokens per head call; None = :func:`default_chunk_size` of the head's vocabulary.
    symmetric: the head may be sharded (DeepSpeed ZeRO-3): make every rank run the same head calls.
    kernel: "chunked" (default) or "liger" (Liger's fused kernel; a LitFTError where it cannot run).
    shifted: ``labels[:, t]`` is already the target of position t (sequence parallelism): no shift here.
    """
    if kernel not in KERNELS:
        raise ValueError(f"loss kernel must be one of {KERNELS}, got {kernel!r}")
    targets = labels if shifted else labels[..., 1:]
    mask = targets != IGNORE_INDEX
    selected = (hidden if shifted else hidden[..., :-1, :])[mask]
    wanted = targets[mask]
    n = wanted.numel()
    if kernel == "liger":
        check_liger(hidden.is_cuda, head, sharded=symmetric)
        if n > 0:  # no trained token: the chunked path's empty chunk keeps the loss in the graph
            _log_once("loss: Liger fused linear cross-entropy (liger-kernel)")
            return _liger_sum(selected, head, wanted), mask.sum()

    total = _chunked_ce(selected, wanted, head, chunk_size=chunk_size, symmetric=symmetric)
    return total, mask.sum()


def token_losses_from_hidden(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    *,
    chunk_size: Optional[int] = None,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each trained position ``(n,)``, in row-major order; the trained-position mask
    ``(B, T-1)``) for hidden states ``(B, T, H)``: the chunked head of :func:`lm_loss_from_hidden` (same memory bound,
    same rank-symmetric calls of a sharded head), one value per token for losses made of per-row sums (preference
    methods: ``-`` a row's sum is its log-probability)."""
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    tokens = _chunked_ce(hidden[..., :-1, :][mask], targets[mask], head, chunk_size=chunk_size, symmetric=symmetric,
                         per_token=True)
    return tokens, mask


def _chunked_ce(selected: torch.Tensor, wanted: torch.Tensor, head: torch.nn.Module, *, chunk_size: Optional[int],
                symmetric: bool, per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of ``head(selected)`` against ``wanted`` (hidden states ``(n, H)`` of trained positions and
    their targets ``(n,)``), chunk by chunk: summed, or ``(n,)`` per token with ``per_token``."""
    size = int(chunk_size or default_chunk_size(zero3_head.full_rows(head.weight)))
    if size < 1:
        raise ValueError(f"loss chunk_size must be >= 1, got {size}")
    n = selected.shape[0]
    n_chunks = max(1, -(-n // size))
    gathered = None
    project: Callable[[torch.Tensor], torch.Tensor] = head
    if _frozen(head) and _plain_linear(head):
        gathered = zero3_head.gather_once(head)
    gathered_once = gathered is not None
    if gathered_once:
        # One all-gather of the head on every rank, chunks on the gathered weight (no per-call module hooks).
        project = _linear_of(head)
        kind = "head gathered once per micro-batch (ZeRO-3)"
    elif symmetric:
        n_chunks = _agreed_chunk_count(n_chunks, selected.device)
        kind = "chunk count agreed across ranks"
    else:
        kind = "local chunk count"
    if gathered is None:
        gathered = contextlib.nullcontext()
    # A trainable head gets its gradients from chunks recomputed in backward. So does a partitioned head called
    # through its module (ZeRO-3 hooks gather it at each call): ZeRO-3 supports recomputation (activation
    # checkpointing), not a backward pass run inside the forward pass.
    recompute = not _frozen(head) or (zero3_head.is_partitioned(head) and not gathered_once)
    with gathered:
        if not (torch.is_grad_enabled() and selected.requires_grad):
            with torch.no_grad():
                if per_token:
                    total = torch.cat([_ce_tokens(project(selected[p]), wanted[p]) for p in _chunks(n, size, n_chunks)])
                else:
                    total = sum((_ce_sum(project(selected[p]), wanted[p]) for p in _chunks(n, size, n_chunks)),
                                torch.zeros((), dtype=torch.float32, device=selected.device))
        elif recompute:
            total = _recomputed_chunks(selected, wanted, project, size, n_chunks, per_token)
        else:
            total = _FrozenHeadCE.apply(selected, wanted, project, size, n_chunks, per_token)
    _log_once("loss: chunked head + cross-entropy, %d trained tokens per chunk, %s head%s, %s", size,
              "frozen" if _frozen(head) else "trainable", " (chunks recomputed in backward)" if recompute else "", kind)
    return total


def _linear_of(head: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: F.linear(h, head.weight, head.bias)


def lm_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, shifted: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of trained positions) for logits ``(B, T, V)``; ``shifted``: as in
    :func:`lm_loss_from_hidden`."""
    targets = labels if shifted else labels[..., 1:]
    mask = targets != IGNORE_INDEX
    loss = F.cross_entropy((logits if shifted else logits[..., :-1, :])[mask].float(), targets[mask], reduction="sum")
    return loss, mask.sum()


def token_losses_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each trained position ``(n,)``, the trained-position mask ``(B, T-1)``) for logits
    ``(B, T, V)``."""
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    return F.cross_entropy(logits[..., :-1, :][mask].float(), targets[mask], reduction="none"), mask


def hidden_shortcut_holds(model: torch.nn.Module, decoder: torch.nn.Module, head: torch.nn.Module,
                          inputs: dict, *, tokens: int = 16) -> bool:
    """Whether the model's logits are exactly ``head(decoder(...).last_hidden_state)``.

    Runs the model once on the first ``tokens`` positions of the first row (no gradients; a 4-D block mask of
    packed rows is cut to match), recording the
    decoder's output and the head's input and output with forward hooks: a model that scales the hidden states
    before the head or post-processes the logits after it (multipliers, soft-capping) fails the check.
    """
    short = {k: v[:1, :, :tokens, :tokens] if v.dim() == 4 else v[:1, :tokens] for k, v in inputs.items()}
    seen: dict[str, torch.Tensor] = {}

    def on_decoder(module, args, out):
        seen["hidden"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def on_head(module, args, out):
        seen["head_in"], seen["head_out"] = args[0], out

    handles = [decoder.register_forward_hook(on_decoder), head.register_forward_hook(on_head)]
    modes = {m: m.training for m in model.modules()}
    device = next(iter(short.values())).device
    # Eval mode (no dropout) and a forked RNG: the check must not change what training draws next, or a resumed
    # run (which checks at its first step) would diverge from an uninterrupted one.
    rng = torch.random.fork_rng(devices=[] if device.type == "cpu" else [device],
                                device_type="cuda" if device.type == "cpu" else device.type)
    try:
        with rng, torch.no_grad():
            model.eval()
            logits = model(**short, use_cache=False).logits
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    if len(seen) != 3 or seen["head_in"].shape != seen["hidden"].shape or seen["head_out"].shape != logits.shape:
        return False
    same = lambda a, b: torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)  # noqa: E731
    return same(seen["head_in"], seen["hidden"]) and same(seen["head_out"], logits)
