"""LitFTModule: a (optionally quantized) transformers causal LM with PEFT adapters, as a LightningModule."""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional

import lightning.pytorch as L
import torch

from litft.errors import LitFTError
from litft.model import loss as lm_loss
from litft.model.adapters import apply_lora
from litft.model.config import LoraConfig, OptimizerConfig, QuantizationConfig, SchedulerConfig
from litft.model.loading import load_tokenizer, resolve_model_path
from litft.model.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Architectures whose logits are exactly head(hidden): the loss can skip masked positions before the head.
_NO_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class LitFTModule(L.LightningModule):
    """Fine-tunes a causal language model with LoRA / QLoRA.

    Args:
        name_or_path: Hub id (e.g. Qwen/Qwen2.5-7B-Instruct), local folder, or `pkg:<python package>` folder.
        gguf_file: A GGUF file inside name_or_path; dequantized once to a cached plain checkpoint.
        dtype: dtype of the frozen base weights; auto = bfloat16/float16 under bf16/16 precision, else float32.
        attn_implementation: transformers attention kernel: sdpa, eager or flash_attention_2.
        trust_remote_code: Run modelling code shipped with the model (off unless you trust the source).
        quantization: Quantize the frozen base with bitsandbytes (QLoRA); null = no quantization.
        lora: LoRA adapters; null = full fine-tuning of every parameter.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower).
        optimizer: Optimizer settings.
        scheduler: Learning-rate schedule.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        gguf_file: Optional[str] = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa",
        trust_remote_code: bool = False,
        quantization: Optional[QuantizationConfig] = None,
        lora: Optional[LoraConfig] = LoraConfig(),
        gradient_checkpointing: bool = False,
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.name_or_path = name_or_path
        self.gguf_file = gguf_file
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.trust_remote_code = trust_remote_code
        self.quantization = quantization
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        if quantization is not None and lora is None:
            raise LitFTError("model.quantization needs model.lora: a quantized base can only be trained through adapters")
        self.model = None
        self._tokenizer = None
        self._step_loss = None
        self._val_sums = None

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(
                self.name_or_path, gguf_file=self.gguf_file, trust_remote_code=self.trust_remote_code
            )
        return self._tokenizer

    def weights_dtype(self) -> torch.dtype:
        """dtype of the frozen base weights."""
        if self.dtype_name != "auto":
            return _DTYPES[self.dtype_name]
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if precision.startswith("bf16"):
            return torch.bfloat16
        if precision.startswith("16"):
            return torch.float16
        return torch.float32

    def _strategy_name(self) -> str:
        return type(self.trainer.strategy).__name__.lower() if self._trainer is not None else ""

    def _zero3_or_fsdp(self) -> bool:
        if self._trainer is None:
            return False
        strategy = self.trainer.strategy
        stage = getattr(strategy, "config", None) or {}
        stage = stage.get("zero_optimization", {}).get("stage", 0) if isinstance(stage, dict) else 0
        return stage == 3 or "fsdp" in self._strategy_name()

    def load_base_model(self):
        """The frozen transformers model, quantized when asked."""
        from transformers import AutoModelForCausalLM

        path = resolve_model_path(self.name_or_path, gguf_file=self.gguf_file, trust_remote_code=self.trust_remote_code)
        dtype = self.weights_dtype()
        kwargs: dict[str, Any] = dict(
            dtype=dtype, attn_implementation=self.attn_implementation, trust_remote_code=self.trust_remote_code
        )
        if self.quantization is not None:
            from litft.model.quantization import bnb_config

            sharded = self._zero3_or_fsdp()
            if self._trainer is not None:  # one-line errors for what cannot work (8-bit + ZeRO-3, QLoRA on NPU, ...)
                from litft.accelerators import accelerator_name
                from litft.strategies import check_quantization

                q = self.quantization
                check_quantization(
                    self.trainer.strategy,
                    accelerator_name(self.trainer.accelerator),
                    bits=q.bits,
                    compute_dtype=dtype if q.compute_dtype == "auto" else getattr(torch, q.compute_dtype),
                    quant_storage=None if q.quant_storage == "auto" else getattr(torch, q.quant_storage),
                    double_quant=q.double_quant,
                )
            kwargs["quantization_config"] = bnb_config(self.quantization, model_dtype=dtype, sharded=sharded)
            if not sharded:
                device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
                kwargs["device_map"] = {"": device}
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise LitFTError(f"model.name_or_path: cannot load {self.name_or_path}: {err}") from None
        model.config.use_cache = False
        return model

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.load_base_model()
        if self.quantization is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=self.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
            # Validation must not switch the 4-bit weights to bitsandbytes' inference-only CPU layout.
            from litft.shims.bitsandbytes import keep_4bit_weights_trainable

            keep_4bit_weights_trainable(model)
        elif self.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            # ZeRO-3 partitions parameters at init; PEFT's adapter dtype autocast trips its dtype check there.
            model = apply_lora(model, self.lora, autocast_adapter_dtype=not self._zero3_or_fsdp())
        else:
            model.requires_grad_(True)
        model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes as found
        self.model = model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info("Trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))

    # ------------------------------------------------------------------ forward and loss
    def base_model(self):
        """The transformers model under the PEFT wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _hidden_path_ok(self, base) -> bool:
        return not any(getattr(base.config, name, None) not in (None, 1, 1.0) for name in _NO_LOGIT_POSTPROCESSING)

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token cross-entropy, number of trained tokens) for one micro-batch."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        base = self.base_model()
        if self._hidden_path_ok(base):
            decoder, head = base.get_decoder(), base.get_output_embeddings()
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            return lm_loss.lm_loss_from_hidden(hidden, head, labels)
        logits = self.model(**inputs, use_cache=False).logits
        return lm_loss.lm_loss_from_logits(logits, labels)

    def forward(self, **inputs):
        return self.model(**inputs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step_tokens = batch.get("num_target_tokens")
        loss_sum, n_tokens = self.loss_sum(batch)
        if step_tokens is None:  # a loader without the count: weight by this micro-batch alone
            step_tokens = n_tokens
        # Token-weighted over the whole optimizer step: every rank and micro-batch divides its summed loss by
        # the global count of trained tokens in the step. Lightning divides the returned loss by
        # accumulate_grad_batches and DDP averages gradients over ranks, so both factors are undone here.
        global_tokens = self.trainer.strategy.reduce(
            torch.as_tensor(step_tokens, device=loss_sum.device, dtype=torch.float32), reduce_op="sum"
        ).clamp(min=1)
        contribution = loss_sum / global_tokens
        self._step_loss = contribution.detach() + (self._step_loss if self._step_loss is not None else 0)
        return contribution * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._step_loss is None:
            return
        step_loss = self.trainer.strategy.reduce(self._step_loss, reduce_op="sum")
        self._step_loss = None
        if not torch.isfinite(step_loss):
            raise LitFTError(
                f"training loss is {step_loss.item()} at step {self.trainer.global_step}: stopping "
                "(lower optimizer.lr, check the data, or use float32); the last checkpoint is kept"
            )
        self.log("train/loss", step_loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        self.log("train/lr", optimizer.param_groups[0]["lr"], prog_bar=True, on_step=True, on_epoch=False, batch_size=1)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss_sum, n_tokens = self.loss_sum(batch)
        self._val_sums += torch.stack([loss_sum.detach().double(), n_tokens.double()])

    def on_validation_epoch_end(self) -> None:
        totals = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        val_loss = (totals[0] / totals[1].clamp(min=1)).float()
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False, batch_size=1)
        self.log("val/ppl", torch.exp(val_loss), sync_dist=False, batch_size=1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optimizer_cfg)
        scheduler = build_scheduler(optimizer, self.scheduler_cfg, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ adapter-only state
    def state_dict(self, *args, **kwargs):
        """Trainable weights only: a LoRA checkpoint holds the adapter, not the frozen base."""
        full = super().state_dict(*args, **kwargs)
        if self.model is None or self.lora is None:
            return full
        prefix = kwargs.get("prefix", "")
        trainable = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        return type(full)((k, v) for k, v in full.items() if k in trainable)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a (possibly adapter-only) state dict; every trainable weight must be present."""
        if self.lora is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(state_dict))
        if strict and missing:
            raise LitFTError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {missing[0]} (different lora config?)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)
