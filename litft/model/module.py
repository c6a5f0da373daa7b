"""LitFTModule: a (optionally quantized) transformers causal LM with PEFT adapters, as a LightningModule."""

from __future__ import annotations

import logging
from typing import Literal, Optional

import lightning.pytorch as L
import torch

from litft.errors import LitFTError
from litft.methods import METHODS, DPOConfig, KTOConfig, ORPOConfig, SimPOConfig
from litft.methods import precompute
from litft.methods.logps import sequence_logps
from litft.methods.objective import PreferenceObjective
from litft.methods.reference import reference_scorer
from litft.methods.totals import EpochTotals
from litft.model import build, long_context
from litft.model import loss as lm_loss
from litft.model.build import AttnImplementation, DtypeName, ModelSpec
from litft.model.config import LoraConfig, OptimizerConfig, QuantizationConfig, SchedulerConfig
from litft.model.loading import load_tokenizer
from litft.model.loss_totals import LossTotals
from litft.model.optim import build_optimizer, build_scheduler
from litft.strategies import is_zero3, scale, sequence_parallel

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
        gradient_checkpointing_offload: Hold the activations checkpointing keeps (each layer's input) in pinned host
            memory instead of on the accelerator (transformers' offload; needs gradient_checkpointing; no saving on CPU).
        tiled_mlp: Run every decoder layer's MLP in this many sequence slices (DeepSpeed's TiledMLP: less activation
            memory at long sequences, one more MLP forward); null = off. litft.model.long_context.
        loss_kernel: Output head + cross-entropy: chunked (litft's, every device and strategy) or liger (Liger's fused
            kernel: CUDA, pip install 'litft[liger]', a whole plain nn.Linear head, so not under ZeRO-3). SFT only:
            preference methods always use the chunked head.
        method: What the model learns from: sft (conversations), or preference fine-tuning: dpo, orpo or simpo
            (pairs: data.kind preference) or kto (judged replies: data.kind feedback). data.kind follows it.
        dpo: DPO's parameters (used when method is dpo).
        orpo: ORPO's parameters (used when method is orpo).
        simpo: SimPO's parameters (used when method is simpo).
        kto: KTO's parameters (used when method is kto).
        optimizer: Optimizer settings.
        scheduler: Learning-rate schedule.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        gguf_file: Optional[str] = ModelSpec.gguf_file,
        dtype: DtypeName = ModelSpec.dtype,
        attn_implementation: AttnImplementation = ModelSpec.attn_implementation,
        trust_remote_code: bool = ModelSpec.trust_remote_code,
        quantization: Optional[QuantizationConfig] = ModelSpec.quantization,
        lora: Optional[LoraConfig] = LoraConfig(),
        gradient_checkpointing: bool = False,
        gradient_checkpointing_offload: bool = False,
        tiled_mlp: Optional[int] = None,
        loss_kernel: Literal["chunked", "liger"] = "chunked",
        method: Literal["sft", "dpo", "orpo", "simpo", "kto"] = "sft",
        dpo: DPOConfig = DPOConfig(),
        orpo: ORPOConfig = ORPOConfig(),
        simpo: SimPOConfig = SimPOConfig(),
        kto: KTOConfig = KTOConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        scheduler: SchedulerConfig = SchedulerConfig(),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec(name_or_path=name_or_path, gguf_file=gguf_file, dtype=dtype,
                              attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                              quantization=quantization)
        """The base model (litft.model.build: the one builder of training and inference)."""
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        long_context.check_offload(gradient_checkpointing_offload, gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing_offload = gradient_checkpointing_offload
        long_context.check_tiled_mlp(tiled_mlp)
        self.tiled_mlp = tiled_mlp
        if loss_kernel not in lm_loss.KERNELS:
            raise LitFTError(f"model.loss_kernel={loss_kernel!r}: choose one of {', '.join(lm_loss.KERNELS)}")
        self.loss_kernel = loss_kernel
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        if quantization is not None and lora is None:
            raise LitFTError("model.quantization needs model.lora: a quantized base can only be trained through adapters")
        if method not in METHODS:
            raise LitFTError(f"model.method: expected one of {', '.join(METHODS)}, got '{method}'")
        self.method = method
        self.objective = None if method == "sft" else PreferenceObjective(
            method, {"dpo": dpo, "orpo": orpo, "simpo": simpo, "kto": kto}[method], lora=lora is not None)
        """The preference method's loss and metrics (litft.methods); None for SFT."""
        self.model = None
        self._sharded = False  # parameters partitioned across ranks (ZeRO-3): set when configure_model builds
        self._tokenizer = None
        self._step_loss = None
        self._grad_norm_pending = False
        self._val_sums = None

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            spec = self.spec
            self._tokenizer = load_tokenizer(spec.name_or_path, gguf_file=spec.gguf_file,
                                             trust_remote_code=spec.trust_remote_code)
        return self._tokenizer

    def configure_model(self) -> None:
        """Build the model to train with the trainer's strategy, accelerator and precision
        (:func:`litft.model.build.training_model`)."""
        if self.model is not None:
            return
        strategy = self.trainer.strategy
        self.model = build.training_model(
            self.spec, lora=self.lora, gradient_checkpointing=self.gradient_checkpointing, strategy=strategy,
            accelerator=self.trainer.accelerator, precision=self.trainer.precision,
            gradient_checkpointing_offload=self.gradient_checkpointing_offload, tiled_mlp=self.tiled_mlp,
        )
        self._sharded = is_zero3(strategy)
        sequence_parallel.attach(self.trainer, self.base_model(), self.spec.attn_implementation)
        if self.loss_kernel == "liger":  # stop before training, not at its first step
            on_cuda = strategy.root_device.type == "cuda"
            lm_loss.check_liger(on_cuda, self.base_model().get_output_embeddings(), sharded=self._sharded)

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
        shifted = sequence_parallel.SHIFTED_LABELS in batch  # a sequence-parallel shard: labels shifted globally
        labels = batch[sequence_parallel.SHIFTED_LABELS] if shifted else batch["labels"]
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        base = self.base_model()
        if self._hidden_path_ok(base, inputs):
            decoder, head = base.get_decoder(), base.get_output_embeddings()
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            return lm_loss.lm_loss_from_hidden(
                hidden, head, labels, chunk_size=self.loss_chunk_size, symmetric=self._sharded, kernel=self.loss_kernel,
                shifted=shifted,
            )
        if self.loss_kernel == "liger":
            raise LitFTError(f"model.loss_kernel=liger: {type(base).__name__} post-processes its logits beyond the "
                             "output head (scaling or soft-capping), which Liger's kernel does not; use "
                             "model.loss_kernel: chunked")
        logits = self.model(**inputs, use_cache=False).logits
        return lm_loss.lm_loss_from_logits(logits, labels, shifted=shifted)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              position_ids: Optional[torch.Tensor] = None,
              segments: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability sum, trained positions) of each row (per reply with ``segments``: one row per pair,
        litft.data.shared_prompt): the preference methods' scorer, on the same chunked head as the SFT loss
        (litft.methods.logps)."""
        base = self.base_model()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        layout = {"position_ids": position_ids, "segments": segments}
        if self._hidden_path_ok(base, inputs):
            return sequence_logps(self.model, input_ids, attention_mask, labels, decoder=base.get_decoder(),
                                  head=base.get_output_embeddings(), chunk_size=self.loss_chunk_size,
                                  symmetric=self._sharded, **layout)
        return sequence_logps(self.model, input_ids, attention_mask, labels, **layout)

    def on_fit_start(self) -> None:
        """With ``model.dpo.precompute_reference``: the training pairs' reference log-probabilities, read from the
        cache beside the tokenized data or scored once now (every rank), handed to the data module's training rows
        (litft.methods.precompute)."""
        if self.objective is None or not getattr(self.objective.config, "precompute_reference", False):
            return
        if sequence_parallel.size(self.trainer.strategy) > 1:
            raise LitFTError("model.dpo.precompute_reference is not supported with sequence parallelism: set it to false")
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "set_reference_logps"):
            raise LitFTError("model.dpo.precompute_reference needs litft's data module (the data: section)")
        first = next(self.base_model().parameters())
        table = precompute.reference_table(
            trainer=self.trainer, datamodule=datamodule, spec=self.spec, weights_dtype=first.dtype,
            reference=reference_scorer(self.model, self.score), model=self.model, device=self.device)
        datamodule.set_reference_logps(table)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def step_loss_sum(self, batch: dict, *, validation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, its units) of one micro-batch: SFT's (token cross-entropy, trained tokens) or the preference
        method's (per-pair or per-example losses, pairs or examples), whose metrics go to the step's or the
        validation epoch's totals."""
        if self.objective is None:
            return self.loss_sum(batch)
        out = self.objective.step(batch, self.model, self.score, self._reduce_sum)
        (self.objective.val_totals if validation else self.objective.train_totals).add(out.metrics)
        return out.loss_sum, out.units

    def forward(self, **inputs):
        return self.model(**inputs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = sequence_parallel.shard(self.trainer.strategy, batch)  # this rank's slice (sequence parallelism)
        step_tokens = batch.get("num_target_tokens")
        loss_sum, n_tokens = self.step_loss_sum(batch)
        if step_tokens is None:  # a loader without the count: weight by this micro-batch alone
            step_tokens = n_tokens
        # Token-weighted over the whole optimizer step: every rank and micro-batch divides its summed loss by
        # the global count of trained tokens in the step; litft.strategies.scale owns the strategies' factors.
        # Preference methods: the same with pairs (KTO: examples) for tokens.
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
        if self.objective is not None:  # every rank: one all-reduce of the step's metric sums
            for name, value in self.objective.train_totals.pop(self._reduce_sum).items():
                self.log(f"train/{name}", value, prog_bar=name == "rewards/accuracies", on_step=True, on_epoch=False,
                         batch_size=1)
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
        self._val_sums = LossTotals()  # exact host-side totals: no float64 tensor on the device (HCCL)
        if self.objective is not None:
            self.objective.val_totals = EpochTotals()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss_sum, n_tokens = self.step_loss_sum(batch, validation=True)
        self._val_sums.add(loss_sum, n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss_sum, n_tokens = self._val_sums.total(self.trainer.strategy, self.device)
        val_loss = torch.tensor(loss_sum / max(n_tokens, 1), dtype=torch.float32, device=self.device)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False, batch_size=1)
        if self.objective is None:
            self.log("val/ppl", torch.exp(val_loss), sync_dist=False, batch_size=1)
            return
        for name, value in self.objective.val_totals.means(self.trainer.strategy, self.device).items():
            self.log(f"val/{name}", torch.tensor(value, dtype=torch.float32, device=self.device), sync_dist=False,
                     batch_size=1)

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
