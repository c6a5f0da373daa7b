"""LitFTModule: a (optionally quantized) transformers causal LM with PEFT adapters, as a LightningModule."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Literal, Optional

import lightning.pytorch as L
import torch

from litft.errors import LitFTError
from litft.model import loss as lm_loss
from litft.model.adapters import apply_lora
from litft.model.config import LoraConfig, OptimizerConfig, QuantizationConfig, SchedulerConfig
from litft.model.dtypes import FLOAT_DTYPES, STORAGE_DTYPES
from litft.model.loading import check_attn_implementation, load_tokenizer, resolve_model_path
from litft.model.optim import build_optimizer, build_scheduler
from litft.model.params import count_parameters
from litft.strategies import scale

log = logging.getLogger(__name__)

# Config names of logit post-processing: such a model's loss takes its own logits (no head(hidden) shortcut).
_NO_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class LitFTModule(L.LightningModule):
    """Fine-tunes a causal language model with LoRA / QLoRA.

    Args:
        name_or_path: Hub id (e.g. Qwen/Qwen2.5-7B-Instruct), local folder, or `pkg:<python package>` folder.
        gguf_file: A GGUF file inside name_or_path; dequantized once to a cached plain checkpoint.
        dtype: dtype of the frozen base weights; auto = bfloat16/float16 under bf16/16 precision (float32 under 16-mixed
            when every weight trains), else float32.
        attn_implementation: transformers attention kernel: sdpa, eager or flash_attention_2.
        trust_remote_code: Run modelling code shipped with the model (off unless you trust the source).
        quantization: Quantize the frozen base with bitsandbytes (QLoRA); null = no quantization.
        lora: LoRA adapters; null = full fine-tuning of every parameter.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower); the mode
            (reentrant or not) follows the strategy: litft.model.grad_checkpointing.
        loss_kernel: Output head + cross-entropy: chunked (litft's, every device and strategy) or liger (Liger's fused
            kernel: CUDA, pip install 'litft[liger]', a whole plain nn.Linear head, so not under ZeRO-3).
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
        loss_kernel: Literal["chunked", "liger"] = "chunked",
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
        if loss_kernel not in lm_loss.KERNELS:
            raise LitFTError(f"model.loss_kernel={loss_kernel!r}: choose one of {', '.join(lm_loss.KERNELS)}")
        self.loss_kernel = loss_kernel
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        if quantization is not None and lora is None:
            raise LitFTError("model.quantization needs model.lora: a quantized base can only be trained through adapters")
        self.model = None
        self._tokenizer = None
        self._step_loss = None
        self._grad_norm_pending = False
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
            return FLOAT_DTYPES[self.dtype_name]
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if precision.startswith("bf16"):
            return torch.bfloat16
        if precision.startswith("16"):
            # fp16 autocast: a frozen LoRA base may be fp16, trained weights stay fp32 (the grad scaler refuses fp16
            # gradients: "Attempting to unscale FP16 gradients")
            return torch.float16 if self.lora is not None else torch.float32
        return torch.float32

    def _zero3(self) -> bool:
        """Parameters partitioned across ranks (DeepSpeed ZeRO-3; litft refuses FSDP)."""
        if self._trainer is None:
            return False
        from litft.strategies import is_zero3

        return is_zero3(self.trainer.strategy)

    def load_base_model(self, device: Optional[torch.device | str] = None):
        """The frozen transformers model, quantized when asked (a quantized model is loaded onto ``device``,
        default: the trainer's device, else the CPU)."""
        from transformers import AutoModelForCausalLM

        check_attn_implementation(self.attn_implementation)
        path = resolve_model_path(self.name_or_path, gguf_file=self.gguf_file, trust_remote_code=self.trust_remote_code)
        dtype = self.weights_dtype()
        kwargs: dict[str, Any] = dict(
            dtype=dtype, attn_implementation=self.attn_implementation, trust_remote_code=self.trust_remote_code
        )
        sharded = self._zero3()
        loading: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.quantization is not None:
            from litft.model.quantization import bnb_config

            if self._trainer is not None:  # one-line errors for what cannot work (8-bit + ZeRO-3, QLoRA on NPU, ...)
                from litft.accelerators import accelerator_name
                from litft.strategies import check_quantization

                q = self.quantization
                check_quantization(
                    self.trainer.strategy,
                    accelerator_name(self.trainer.accelerator),
                    bits=q.bits,
                    compute_dtype=dtype if q.compute_dtype == "auto" else FLOAT_DTYPES[q.compute_dtype],
                    quant_storage=None if q.quant_storage == "auto" else STORAGE_DTYPES[q.quant_storage],
                    double_quant=q.double_quant,
                )
            kwargs["quantization_config"] = bnb_config(self.quantization, model_dtype=dtype, sharded=sharded)
            if sharded:
                # transformers loads a quantized model whole on every rank (no zero.Init, no device_map under ZeRO-3:
                # bitsandbytes picks the current device): partition each weight as it is loaded (litft.model.partition)
                from litft.model import partition

                loading = partition.loading_into_partitions(self.trainer.strategy.config)
            else:
                if device is None:
                    device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
                kwargs["device_map"] = {"": torch.device(device)}
        try:
            with loading:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise LitFTError(f"model.name_or_path: cannot load {self.name_or_path}: {err}") from None
        if self.quantization is not None and sharded:
            partition.partition_now(model, self.trainer.strategy.config)  # what transformers initialised itself
        model.config.use_cache = False
        return model

    def configure_model(self) -> None:
        """Build the model to train: the base (:meth:`load_base_model`; partitioned under ZeRO-3), frozen when adapters
        train, gradient checkpointing in the mode :func:`litft.model.grad_checkpointing.use_reentrant` picks, adapters.

        QLoRA on one device, DDP or ZeRO-1/2: peft's ``prepare_model_for_kbit_training`` (the QLoRA recipe: the
        unquantized embeddings, norms and head upcast to fp32). QLoRA under ZeRO-3: no upcast — the base stays in its
        storage dtype, partitioned (TRL and Accelerate skip ``prepare_model_for_kbit_training`` for sharded QLoRA
        too); only the adapters are fp32.
        """
        if self.model is not None:
            return
        model = self.load_base_model()
        sharded = self._zero3()
        if self.quantization is not None:
            if sharded:
                model.requires_grad_(False)
            else:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            # Validation must not switch the 4-bit weights to bitsandbytes' inference-only CPU layout.
            from litft.shims.bitsandbytes import keep_4bit_weights_trainable

            keep_4bit_weights_trainable(model)
        if self.gradient_checkpointing:
            from litft.model import grad_checkpointing

            strategy = self.trainer.strategy if self._trainer is not None else None
            reentrant = grad_checkpointing.use_reentrant(strategy, frozen_base=self.lora is not None)
            grad_checkpointing.enable(model, reentrant=reentrant)
        if self.lora is not None:
            # fp32 adapters (PEFT casts them up from the base's dtype) on every strategy. Under ZeRO-3 the base is
            # partitioned before they exist, so DeepSpeed's engine casts nothing: they stay fp32 beside the frozen
            # base in its storage dtype.
            model = apply_lora(model, self.lora)
        else:
            model.requires_grad_(True)
        model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes as found
        self.model = model
        if self.loss_kernel == "liger" and self._trainer is not None:  # stop before training, not at its first step
            on_cuda = self.trainer.strategy.root_device.type == "cuda"
            lm_loss.check_liger(on_cuda, self.base_model().get_output_embeddings(), sharded=sharded)
        total, trainable = count_parameters(model)  # full sizes under ZeRO-3 and 4-bit quantization
        log.info("Trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))

    # ------------------------------------------------------------------ forward and loss
    def base_model(self):
        """The transformers model under the PEFT wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    loss_chunk_size: Optional[int] = None
    """Trained tokens per output-head chunk in the loss; None = sized so one chunk's fp32 logits take ~256 MiB."""

    def _hidden_path_ok(self, base, inputs: dict) -> bool:
        """Whether the loss may run the head on hidden states itself: checked once per model (see
        ``lm_loss.hidden_shortcut_holds``); otherwise the loss takes the model's own logits."""
        verdict = getattr(self, "_hidden_path_verdict", None)
        if verdict is not None and verdict[0] is base:
            return verdict[1]
        known = [n for n in _NO_LOGIT_POSTPROCESSING if getattr(base.config, n, None) not in (None, 1, 1.0)]
        if known:
            ok, why = False, f"config sets {known[0]}"
        else:
            ok = lm_loss.hidden_shortcut_holds(self.model, base.get_decoder(), base.get_output_embeddings(), inputs)
            why = "head(hidden) differs from the model's logits"
        if not ok:
            log.warning("loss: %s (%s): using the model's full logits (memory grows with tokens x vocabulary)",
                        why, type(base).__name__)
        self._hidden_path_verdict = (base, ok)
        return ok

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token cross-entropy, number of trained tokens) for one micro-batch."""
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        base = self.base_model()
        if self._hidden_path_ok(base, inputs):
            decoder, head = base.get_decoder(), base.get_output_embeddings()
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            return lm_loss.lm_loss_from_hidden(
                hidden, head, labels, chunk_size=self.loss_chunk_size, symmetric=self._zero3(), kernel=self.loss_kernel
            )
        if self.loss_kernel == "liger":
            raise LitFTError(f"model.loss_kernel=liger: {type(base).__name__} post-processes its logits beyond the "
                             "output head (scaling or soft-capping), which Liger's kernel does not; use "
                             "model.loss_kernel: chunked")
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
        # the global count of trained tokens in the step; litft.strategies.scale owns the strategies' factors.
        global_tokens = self.trainer.strategy.reduce(
            torch.as_tensor(step_tokens, device=loss_sum.device, dtype=torch.float32), reduce_op="sum"
        ).clamp(min=1)
        contribution = loss_sum / global_tokens
        self._step_loss = contribution.detach() + (self._step_loss if self._step_loss is not None else 0)
        return contribution * scale.loss_multiplier(self.trainer)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Once per optimizer step (every strategy: Lightning owns accumulation), before gradient clipping."""
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
        if scale.grad_norm_after_step(self.trainer.strategy):
            self._grad_norm_pending = True  # logged in on_train_batch_end, once the strategy has computed it
            return
        norm = scale.local_grad_norm(self)
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if getattr(self, "_grad_norm_pending", False):
            self._grad_norm_pending = False
            norm = scale.strategy_grad_norm(self.trainer.strategy)
            if norm is not None:
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def on_validation_epoch_start(self) -> None:
        from litft.model.loss_totals import LossTotals

        self._val_sums = LossTotals()  # exact host-side totals: no float64 tensor on the device (HCCL)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss_sum, n_tokens = self.loss_sum(batch)
        self._val_sums.add(loss_sum, n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss_sum, n_tokens = self._val_sums.total(self.trainer.strategy, self.device)
        val_loss = torch.tensor(loss_sum / max(n_tokens, 1), dtype=torch.float32, device=self.device)
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

    # ------------------------------------------------------------------ inference (generate, chat, predict, evaluate, export)
    def for_inference(
        self,
        adapter: Optional[str] = None,
        *,
        dtype: Optional[str] = None,
        precision: Any = None,
        quantized: bool = True,
        device: Optional[str] = None,
    ):
        """The model to generate with (or merge): the base built by :meth:`load_base_model`, the one builder training
        uses (same ``dtype``, same 4/8-bit ``quantization``), plus the PEFT adapter folder ``adapter``; eval mode, KV
        cache on. The tokenizer is :attr:`tokenizer`.

        dtype: override of ``model.dtype`` (float32, bfloat16, float16). ``auto`` follows ``precision`` (the
            trainer's: bf16-* → bfloat16, 16-* → float16, auto → what ``trainer.precision: auto`` picks on that
            device: bfloat16 where it has bf16 in hardware, float16 on older CUDA GPUs (V100, T4), else float32).
        quantized: False loads the base unquantized even when training quantized it (export merges into it).
        device: where the model runs (default: cuda when available, else cpu).
        """
        from pathlib import Path

        name = dtype or self.dtype_name
        if name == "auto":
            from litft.accelerators import default_precision, precision_dtype

            p = str(precision if precision is not None else "auto")
            if p == "auto":  # the training default of the device the model will run on
                kind = torch.device(device).type if device else "cuda" if torch.cuda.is_available() else "cpu"
                p = default_precision(kind)
            name = str(precision_dtype(p)).replace("torch.", "")
        if name not in FLOAT_DTYPES:
            raise LitFTError(f"dtype: unknown '{name}' (float32, bfloat16 or float16)")
        if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
            raise LitFTError(f"--adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
        overrides = {"dtype": name, "quantization": self.quantization if quantized else None}
        import inspect

        params = inspect.signature(type(self).__init__).parameters  # hparams also hold LightningCLI's _instantiator
        builder = type(self)(**{**{k: v for k, v in self.hparams.items() if k in params}, **overrides})
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = builder.load_base_model(device)  # a quantized base is loaded onto the device (8-bit cannot move)
        if next(model.parameters()).device.type != torch.device(device).type:
            model.to(device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()))
        model.config.use_cache = True
        model.eval()
        return model
