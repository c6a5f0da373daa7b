"""Optimizer and learning-rate schedule for the trainable parameters."""

from __future__ import annotations

import math

import torch

from litft.errors import LitFTError
from litft.model.config import OptimizerConfig, SchedulerConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters, with weight decay on matrices only (not biases or norms)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise LitFTError("the model has no trainable parameters (check model.lora)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # No empty group: DeepSpeed ZeRO-3 drops them, and the LR scheduler then has one lr too many.
    return [g for g in groups if g["params"]]


#: transformers' TrainingArguments.optim names → litft's
HF_ALIASES = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "adamw_bnb_8bit": "adamw_8bit",
    "paged_adamw_32bit": "paged_adamw",
}


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    name = HF_ALIASES.get(cfg.name, cfg.name)
    if name == "adamw":
        fused = cfg.name == "adamw_torch_fused" and any(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, **kwargs, **({"fused": True} if fused else {}))
    import bitsandbytes as bnb  # heavy (~4 s): only for its 8-bit / paged optimizers

    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw": bnb.optim.PagedAdamW,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
    }[name]
    return cls(groups, **kwargs)


def lr_lambda(cfg: SchedulerConfig, total_steps: int):
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    total_steps = max(1, total_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(math.ceil(cfg.warmup_ratio * total_steps))
    floor = cfg.min_lr_ratio

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.name == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
