"""Preference methods' losses (litft/methods) against TRL 1.16's own trainers on the same tensors, and the pieces
they rest on: per-sequence log-probabilities from the chunked head, exact step totals, config checks.

TRL's trainers are real instances built on a tiny random Llama (no mock): DPO and KTO through their
``_compute_loss`` with the reference log-probabilities given in the batch (``precompute_ref_log_probs``), ORPO and
CPO-SimPO through ``get_batch_loss_metrics``. litft computes the same batch through its own collators and scorers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litft.data.collate import FeedbackCollator, PairCollator
from litft.errors import LitFTError
from litft.labels import IGNORE_INDEX
from litft.methods import DPOConfig, KTOConfig, ORPOConfig, SimPOConfig, data_kind, run_step
from litft.methods.logps import row_sums, scorer, sequence_logps
from litft.methods.totals import EpochTotals, StepTotals
from tests.helpers import build_tiny_model

TOL = dict(rtol=1e-6, atol=1e-6)
PAD = 0


def _token_rows(n: int, seed: int, *, vocab: int = 400, equal_chosen: bool = False) -> list[dict]:
    """n prompts with a chosen and a rejected reply of varied lengths (token ids)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda k: torch.randint(10, vocab, (k,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": rand(2 + i % 3), "chosen_ids": rand(4 if equal_chosen else 2 + (3 * i) % 5),
             "rejected_ids": rand(1 + (2 * i) % 4)} for i in range(n)]


def _pair_batch(rows: list[dict]) -> dict:
    """litft's (2B, L) batch of the rows."""
    pairs = []
    for r in rows:
        p = r["prompt_ids"]
        pairs.append({f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in (
            ("input_ids", p + r[f"{side}_ids"]), ("labels", [IGNORE_INDEX] * len(p) + r[f"{side}_ids"]))})
    return PairCollator(PAD)(pairs)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama-methods")))


def _model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():  # a less uniform random model: log-probabilities that differ between rows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.train()


def _assert_grads_close(got, want) -> None:
    """Gradients equal to float32 summation order: every element within 1e-5 of the largest gradient element."""
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale)


def _assert_same_rows(batch: dict, trl_batch: dict, mine: str = "", theirs: str = "") -> None:
    """The same tokens in the same layout (pad ids aside), and labels where TRL's completion mask is set."""
    mask = batch[f"{mine}attention_mask"]
    assert torch.equal(mask, trl_batch[f"{theirs}attention_mask"])
    assert torch.equal(batch[f"{mine}input_ids"] * mask, trl_batch[f"{theirs}input_ids"] * mask)
    assert torch.equal(batch[f"{mine}labels"] != IGNORE_INDEX, trl_batch[f"{theirs}completion_mask"].bool())


def _policy(model, **kwargs):
    return scorer(model, decoder=model.get_decoder(), head=model.get_output_embeddings(), **kwargs)


# ------------------------------------------------------------------------------------------- log-probabilities
def test_row_sums_follow_the_mask_row_major():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    sums, counts = row_sums(torch.tensor([1.0, 2.0, 4.0, 8.0]), mask)
    assert sums.tolist() == [3.0, 0.0, 12.0] and counts.tolist() == [2, 0, 2]


@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("trainable_head", [False, True])
def test_sequence_logps_equal_full_log_softmax(tiny_path, chunk_size, trainable_head):
    """Values and gradients of the chunked-head log-probabilities equal log_softmax of the full logits."""
    model = _model(tiny_path)
    model.get_output_embeddings().requires_grad_(trainable_head)
    batch = _pair_batch(_token_rows(3, seed=1))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    weights = torch.linspace(0.5, 2.0, ids.shape[0])  # a different upstream gradient per row

    logps, counts = sequence_logps(model, ids, mask, labels, decoder=model.get_decoder(),
                                   head=model.get_output_embeddings(), chunk_size=chunk_size)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad((logps * weights).sum(), params)

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    per_token = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = (per_token * keep).sum(-1)
    want = torch.autograd.grad((expected * weights).sum(), params)

    assert counts.tolist() == keep.sum(-1).tolist()
    torch.testing.assert_close(logps, expected, **TOL)
    _assert_grads_close(got, want)
    with torch.no_grad():  # the reference's path, and the model's own logits (no head shortcut)
        no_grad = sequence_logps(model, ids, mask, labels, decoder=model.get_decoder(),
                                 head=model.get_output_embeddings(), chunk_size=chunk_size)[0]
        from_logits = sequence_logps(model, ids, mask, labels)[0]
    torch.testing.assert_close(no_grad, expected.detach(), **TOL)
    torch.testing.assert_close(from_logits, expected.detach(), **TOL)


# ------------------------------------------------------------------------------------------------- DPO vs TRL
def _trl_dpo(path, tmp_path, **kwargs):
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'litft[dev]')")
    from datasets import Dataset
    from transformers import AutoTokenizer

    model = _model(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), precompute_ref_log_probs=True, report_to=[],
                         use_cpu=True, per_device_train_batch_size=2, **kwargs)
    data = Dataset.from_list([{"prompt": "Hello", "chosen": " fox", "rejected": " dog"}] * 2)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=data,
                             processing_class=AutoTokenizer.from_pretrained(path))
    trainer.model.train()
    return trainer


def _step_means(out) -> dict[str, float]:
    totals = StepTotals()
    totals.add(out.metrics)
    return {k: float(v) for k, v in totals.pop(lambda t: t).items() if not math.isnan(v)}


def _assert_metrics(mine: dict, trl_metrics: dict, names) -> None:
    for name in names:
        assert name in mine, name
        expected = trl_metrics[name][-1]
        assert math.isclose(mine[name], expected, rel_tol=1e-6, abs_tol=1e-6), (name, mine[name], expected)


PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_dpo_matches_trl(tiny_path, tmp_path, loss_type, smoothing):
    beta = 0.3
    trainer = _trl_dpo(tiny_path, tmp_path, beta=beta, loss_type=[loss_type], label_smoothing=smoothing)
    model = trainer.model
    rows = _token_rows(4, seed=2)
    g = torch.Generator().manual_seed(3)
    ref_c, ref_r = torch.randn(4, generator=g) * 3 - 25, torch.randn(4, generator=g) * 3 - 18

    trl_batch = trainer.data_collator(rows)
    trl_batch.update(ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
    trl_loss = trainer._compute_loss(model, trl_batch, False)
    trl_grads = torch.autograd.grad(trl_loss, [p for p in model.parameters() if p.requires_grad])

    batch = _pair_batch(rows)
    _assert_same_rows(batch, trl_batch)
    reference = lambda *a: (torch.cat([ref_c, ref_r]), None)  # noqa: E731 (TRL's precomputed values)
    out = run_step("dpo", DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=smoothing), batch,
                   _policy(model), reference)
    loss = out.loss_sum / out.units
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])

    torch.testing.assert_close(loss, trl_loss, **TOL)
    _assert_grads_close(grads, trl_grads)
    _assert_metrics(_step_means(out), trainer._metrics["train"], PAIR_METRICS)


def test_dpo_label_smoothing_is_conservative_dpo():
    """sigmoid with eps > 0 (TRL 1.16 has no such sigmoid): -(1-eps) log s(beta d) - eps log s(-beta d)."""
    c, r = torch.tensor([-3.0, -7.0]), torch.tensor([-5.0, -2.0])
    ref_c, ref_r = torch.tensor([-4.0, -6.0]), torch.tensor([-4.5, -2.5])
    d = (c - ref_c) - (r - ref_r)
    losses, _, _ = DPOConfig(beta=0.5, label_smoothing=0.25).pair_losses(c, r, ref_c, ref_r, None, None)
    torch.testing.assert_close(losses, -0.75 * F.logsigmoid(0.5 * d) - 0.25 * F.logsigmoid(-0.5 * d))


def test_dpo_sft_term_is_the_chosen_mean_token_nll(tiny_path):
    model = _model(tiny_path)
    batch = _pair_batch(_token_rows(3, seed=4))
    policy = _policy(model)
    zero = lambda *a: (torch.zeros(6), None)  # noqa: E731
    plain = run_step("dpo", DPOConfig(), batch, policy, zero)
    with_sft = run_step("dpo", DPOConfig(sft_weight=0.5), batch, policy, zero)
    logps, counts = policy(batch["input_ids"], batch["attention_mask"], batch["labels"])
    nll = -(logps[:3] / counts[:3]).sum()
    torch.testing.assert_close(with_sft.loss_sum, plain.loss_sum + 0.5 * nll, **TOL)
    torch.testing.assert_close(with_sft.metrics["nll_loss"][0], nll.detach(), **TOL)


# ------------------------------------------------------------------------------------------------- KTO vs TRL
def test_kto_matches_trl(tiny_path, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'litft[dev]')")
    from datasets import Dataset
    from transformers import AutoTokenizer

    beta, w_d, w_u = 0.4, 1.3, 0.7
    model = _model(tiny_path)
    args = trl.KTOConfig(output_dir=str(tmp_path / "trl"), precompute_ref_log_probs=True, report_to=[], use_cpu=True,
                         per_device_train_batch_size=2, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    data = Dataset.from_list([{"prompt": "Hello", "completion": " fox", "label": True},
                              {"prompt": "Hi", "completion": " dog", "label": False}])
    trainer = trl.KTOTrainer(model=model, args=args, train_dataset=data,
                             processing_class=AutoTokenizer.from_pretrained(tiny_path))
    trainer.model.train()

    labels = [True, False, True, True, False]
    pairs = _token_rows(5, seed=5)
    examples = [{"prompt_ids": r["prompt_ids"], "completion_ids": r["chosen_ids"], "label": lab}
                for r, lab in zip(pairs, labels)]
    for i, e in enumerate(examples):  # TRL's rotation: example i's KL row is prompt i + completion i-1
        e["KL_completion_ids"] = examples[i - 1]["completion_ids"]
    trl_batch = trainer.data_collator(examples)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # reference values around the policy's: a KL baseline of about 1 (not clamped to 0)
        kl_rows = trl_batch["KL_input_ids"], trl_batch["KL_attention_mask"]
        kl_labels = kl_rows[0].masked_fill(trl_batch["KL_completion_mask"] == 0, IGNORE_INDEX)
        policy_kl = _policy(model)(*kl_rows, kl_labels)[0]
    ref, ref_kl = torch.randn(5, generator=g) * 2 - 12, policy_kl - 1 - torch.rand(5, generator=g)
    trl_batch.update(ref_logps=ref, ref_KL_logps=ref_kl)
    trl_loss = trainer._compute_loss(trainer.model, trl_batch, False)
    params = [p for p in model.parameters() if p.requires_grad]
    trl_grads = torch.autograd.grad(trl_loss, params)

    rows = [{"input_ids": e["prompt_ids"] + e["completion_ids"],
             "labels": [IGNORE_INDEX] * len(e["prompt_ids"]) + e["completion_ids"], "label": e["label"],
             "prompt_length": len(e["prompt_ids"])} for e in examples]
    batch = FeedbackCollator(PAD)(rows)
    _assert_same_rows(batch, trl_batch)
    _assert_same_rows(batch, trl_batch, "kl_", "KL_")  # the same KL rows

    def reference(ids, mask, labels):
        return (ref_kl if ids is batch["kl_input_ids"] else ref), None

    out = run_step("kto", KTOConfig(beta=beta, desirable_weight=w_d, undesirable_weight=w_u), batch,
                   _policy(model), reference)
    loss = out.loss_sum / out.units
    torch.testing.assert_close(loss, trl_loss, **TOL)
    _assert_grads_close(torch.autograd.grad(loss, params), trl_grads)
    mine = _step_means(out)
    _assert_metrics(mine, trainer._metrics["train"], ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                      "logps/chosen", "logps/rejected", "kl"))
    assert mine["kl"] > 0  # the baseline is active (not clamped to 0) in this batch


# ------------------------------------------------------------------------------------------ ORPO / SimPO vs TRL
def _legacy_batch(rows: list[dict]) -> dict:
    """TRL's ORPO/CPO batch (chosen_* and rejected_* tensors, prompt masked in the labels)."""
    out = {}
    for side in ("chosen", "rejected"):
        ids = [r["prompt_ids"] + r[f"{side}_ids"] for r in rows]
        width = max(map(len, ids))
        out[f"{side}_input_ids"] = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
        out[f"{side}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        out[f"{side}_labels"] = torch.tensor([[IGNORE_INDEX] * len(r["prompt_ids"]) + r[f"{side}_ids"]
                                              + [IGNORE_INDEX] * (width - len(x)) for r, x in zip(rows, ids)])
    return out


def _legacy_trainer(kind: str, path, tmp_path, **kwargs):
    pytest.importorskip("trl", reason="TRL is not installed (pip install 'litft[dev]')")
    from datasets import Dataset
    from transformers import AutoTokenizer

    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
    model = _model(path)
    args = Config(output_dir=str(tmp_path / kind), report_to=[], use_cpu=True, max_length=64, **kwargs)
    data = Dataset.from_list([{"prompt": "Hello", "chosen": " fox", "rejected": " dog"}] * 2)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(path))
    trainer.model.train()
    return trainer


def test_orpo_matches_trl(tiny_path, tmp_path):
    """The odds-ratio term, rewards and log-odds equal TRL's; the NLL term is litft's (per pair, on the reply) and
    TRL's (token mean of the whole chosen row, prompt included) is subtracted from TRL's loss."""
    beta = 0.25
    trainer = _legacy_trainer("orpo", tiny_path, tmp_path, beta=beta)
    rows = _token_rows(4, seed=7)
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, _legacy_batch(rows))
    out = run_step("orpo", ORPOConfig(beta=beta), _pair_batch(rows), _policy(trainer.model))
    mine = _step_means(out)
    torch.testing.assert_close((out.loss_sum / out.units).detach() - mine["nll_loss"],
                               trl_loss.detach() - trl_metrics["nll_loss"], **TOL)
    _assert_metrics(mine, {k: [v] for k, v in trl_metrics.items()},
                    PAIR_METRICS + ("log_odds_ratio", "log_odds_chosen"))


@pytest.mark.parametrize("sft_weight", [0.0, 0.6])
def test_simpo_matches_trl_cpo(tiny_path, tmp_path, sft_weight):
    """SimPO = TRL's CPO loss_type=simpo; CPO-SimPO with cpo_alpha (chosen replies of equal length: TRL's token mean
    over the micro-batch equals litft's per-pair mean)."""
    beta, gamma, eps = 2.0, 0.7, 0.1
    trainer = _legacy_trainer("cpo", tiny_path, tmp_path, loss_type="simpo", beta=beta, simpo_gamma=gamma,
                              label_smoothing=eps, cpo_alpha=sft_weight)
    model = trainer.model
    rows = _token_rows(4, seed=8, equal_chosen=True)
    params = [p for p in model.parameters() if p.requires_grad]
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, _legacy_batch(rows))
    trl_grads = torch.autograd.grad(trl_loss, params)
    out = run_step("simpo", SimPOConfig(beta=beta, gamma=gamma, label_smoothing=eps, sft_weight=sft_weight),
                   _pair_batch(rows), _policy(model))
    loss = out.loss_sum / out.units
    torch.testing.assert_close(loss, trl_loss, **TOL)
    _assert_grads_close(torch.autograd.grad(loss, params), trl_grads)
    _assert_metrics(_step_means(out), {k: [v] for k, v in trl_metrics.items()}, PAIR_METRICS)


# ------------------------------------------------------------------------------------------------ totals, configs
def test_step_totals_are_exact_over_micro_batches_and_nan_for_empty_counts():
    totals = StepTotals()
    totals.add({"rewards/chosen": (torch.tensor(3.0), torch.tensor(2.0)), "rewards/rejected": (torch.tensor(1.0),
                                                                                              torch.tensor(0.0))})
    totals.add({"rewards/chosen": (torch.tensor(6.0), torch.tensor(1.0)), "rewards/rejected": (torch.tensor(0.0),
                                                                                              torch.tensor(0.0))})
    means = totals.pop(lambda t: t * 2)  # two identical "ranks"
    assert float(means["rewards/chosen"]) == 3.0  # (3 + 6) / (2 + 1)
    assert math.isnan(means["rewards/rejected"]) and math.isnan(means["rewards/margins"])  # no unit: not stale
    assert not totals


def test_epoch_totals_mean_and_margins():
    class OneRank:
        world_size = 1

    totals = EpochTotals()
    for c, r in ((2.0, 1.0), (4.0, 0.0)):
        totals.add({"rewards/chosen": (torch.tensor(c), torch.tensor(1)), "rewards/rejected": (torch.tensor(r),
                                                                                              torch.tensor(1))})
    means = totals.means(OneRank(), torch.device("cpu"))
    assert means == {"rewards/chosen": 3.0, "rewards/rejected": 0.5, "rewards/margins": 2.5}


@pytest.mark.parametrize("make,key", [
    (lambda: DPOConfig(beta=0), "model.dpo.beta"),
    (lambda: DPOConfig(label_smoothing=0.5), "model.dpo.label_smoothing"),
    (lambda: SimPOConfig(gamma=-1), "model.simpo.gamma"),
    (lambda: ORPOConfig(beta=-0.1), "model.orpo.beta"),
    (lambda: KTOConfig(undesirable_weight=-1), "model.kto.undesirable_weight"),
])
def test_config_errors_name_the_key(make, key):
    with pytest.raises(LitFTError, match=f"^{key}: .* out of range"):
        make()


def test_data_kind_of_each_method():
    assert [data_kind(m) for m in ("sft", "dpo", "orpo", "simpo", "kto")] == [
        "sft", "preference", "preference", "preference", "feedback"]


# ------------------------------------------------------------------------------------------------ the reference
@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_reference_is_the_base_with_adapters_off(tiny_path, quantized):
    """The reference scorer gives the base model's log-probabilities (no second copy, no gradients), the policy the
    adapted model's; QLoRA too (4-bit base on CPU)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from litft.methods.reference import reference_scorer

    kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
              "device_map": "cpu"} if quantized else {}
    base = AutoModelForCausalLM.from_pretrained(tiny_path, **kwargs)
    batch = _pair_batch(_token_rows(2, seed=9))
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        base_logps = _policy(base)(*args)[0]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: the policy moves away from the base
    score = _policy(model.get_base_model())
    ref = reference_scorer(model, score)(*args)[0]
    policy = score(*args)[0]
    assert not ref.requires_grad and policy.requires_grad
    torch.testing.assert_close(ref, base_logps, rtol=0, atol=0)
    assert (policy.detach() - base_logps).abs().min() > 1e-3
