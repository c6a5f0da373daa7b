"""Sequence parallelism (DeepSpeed Ulysses over gloo): 2 processes splitting every sequence vs 1 process.

The distributed cells reuse tests/test_distributed.py's launch helpers and its scale-sensitive set-up (plain SGD,
gradient clipping that bites, rows whose replies differ in length so a sequence's two halves hold different numbers
of trained tokens). With ``sequence_parallel_size: 2`` both processes form ONE data-parallel rank: they get the same
4 rows per micro-batch and each computes half of every sequence, so the run must reproduce one process with
micro-batch 4: per-step loss and gradient norm within 1e-4 relative and the same adapter. Two of the three cells train
packed rows (data.packing, 2-3 samples per row, sample starts in both halves) against a packed one-process run: under
sdpa and under the CPU stand-in flash kernel (tests/cpu_flash_attn, put under the launch by tests/flash_standin.py).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from litft.errors import LitFTError
from litft.labels import IGNORE_INDEX
from litft.strategies import sequence_parallel


class _Groups:
    def __init__(self, rank: int):
        self.rank = rank

    def get_sequence_parallel_rank(self) -> int:
        return self.rank


def _strategy(rank: int, n: int = 2, micro_batch: int = 3):
    return SimpleNamespace(sequence_parallel_size=n, sequence_parallel_state=_Groups(rank),
                           sequence_parallel_micro_batch=micro_batch)


def test_shard_shifts_labels_globally_and_splits_positions():
    """The halves together hold exactly the globally shifted labels: the first half's last position predicts the
    second half's first token; padding (columns to a multiple of N, rows to the micro-batch) is ignored."""
    ids = torch.arange(1, 15).reshape(2, 7)
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [4, 5, 6, 7], [IGNORE_INDEX] * 2 + [10, 11, 12, IGNORE_INDEX, 14]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "num_target_tokens": torch.tensor(9)}
    parts = [sequence_parallel.shard(_strategy(r), batch) for r in (0, 1)]
    shifted = torch.cat([p[sequence_parallel.SHIFTED_LABELS] for p in parts], dim=1)
    expected = torch.full((3, 8), IGNORE_INDEX)
    expected[:2, :6] = labels[:, 1:]
    assert torch.equal(shifted, expected)
    assert parts[0][sequence_parallel.SHIFTED_LABELS][0, 3].item() == 5  # position 3 (rank 0) predicts token 4's label
    assert torch.equal(torch.cat([p["input_ids"] for p in parts], dim=1)[:2, :7], ids)
    assert torch.equal(torch.cat([p["position_ids"] for p in parts], dim=1), torch.arange(8).expand(3, 8))
    assert [p["num_target_tokens"].item() for p in parts] == [9, 0]  # the group's count, contributed once
    # unequal trained tokens in the two halves (what the distributed cells rely on)
    assert [(p[sequence_parallel.SHIFTED_LABELS] != IGNORE_INDEX).sum().item() for p in parts] == [5, 3]
    assert sequence_parallel.shard(SimpleNamespace(), batch) is batch


def test_shard_keeps_packed_positions():
    """Packed rows: the halves hold the batch's own positions (restarting at 0 for every sample, in both halves);
    padding columns continue a row's last sample, padding rows count from 0; a sample's first label (-100) keeps
    the global shift from training one sample on the next. The flat row of a flash micro-batch: one row."""
    ids = torch.arange(1, 15).reshape(2, 7)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5, 6, 7],
                           [IGNORE_INDEX, 9, 10, 11, 12, IGNORE_INDEX, 14]])
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": torch.ones(2, 1, 7, 7).bool()}
    parts = [sequence_parallel.shard(_strategy(r), batch) for r in (0, 1)]
    assert all(set(p) == {"input_ids", "position_ids", sequence_parallel.SHIFTED_LABELS} for p in parts)
    assert [p["position_ids"].tolist() for p in parts] == [
        [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 2, 3]],
        [[1, 2, 3, 4], [4, 0, 1, 2], [4, 5, 6, 7]],
    ]
    assert [p[sequence_parallel.SHIFTED_LABELS].tolist() for p in parts] == [
        [[2, 3, IGNORE_INDEX, 5], [9, 10, 11, 12], [IGNORE_INDEX] * 4],
        [[6, 7, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 14, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX] * 4],
    ]
    flat = {key: batch[key].reshape(1, 14) for key in ("input_ids", "labels", "position_ids")}
    parts = [sequence_parallel.shard(_strategy(r, micro_batch=1), flat) for r in (0, 1)]
    assert [p["position_ids"].tolist() for p in parts] == [[[0, 1, 2, 0, 1, 2, 3]], [[0, 1, 2, 3, 4, 0, 1]]]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts], dim=1), flat["input_ids"])
    with pytest.raises(LitFTError, match="a micro-batch of 2 rows exceeds data.batch_size=1"):
        sequence_parallel.shard(_strategy(0, micro_batch=1), batch)


def test_masking_samples_masks_by_the_gathered_positions():
    """Called with no mask (as Ulysses calls it), the wrapped attention gets the block-diagonal causal mask of the
    whole sequence's positions; a given mask, or positions of another length, pass through untouched."""
    seen = []

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        seen.append(attention_mask)
        return "out", None

    attend = sequence_parallel.masking_samples(attention)
    q = torch.zeros(1, 2, 5, 4)
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    assert attend(None, q, q, q, None, position_ids=pos, dropout=0.0) == ("out", None)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert seen[-1].dtype == torch.bool and torch.equal(seen[-1], expected.bool()[None, None])
    attend(None, q, q, q, None, position_ids=pos.clone())
    assert seen[-1] is seen[-2]  # kept for the other layers of the forward
    attend(None, q, q, q, None, position_ids=torch.tensor([[0, 1, 0, 1, 2]]))
    assert torch.equal(seen[-1][0, 0, 4], torch.tensor([False, False, True, True, True]))
    given = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    attend(None, q, q, q, given, position_ids=pos)
    assert seen[-1] is given
    attend(None, q, q, q, None, position_ids=pos[:, :3])
    assert seen[-1] is None


def test_masking_samples_restores_the_packed_logits(tiny_llama, monkeypatch):
    """A tiny Llama on packed rows whose mask is discarded (what Ulysses does) gives the logits of the collator's
    block-diagonal mask once sdpa is wrapped by masking_samples; without the wrapper the samples see each other."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from litft.data.packing import PackedCollator

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    rows = [{"input_ids": list(range(10, 22)), "labels": [IGNORE_INDEX] * 12,
             "position_ids": [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]},
            {"input_ids": list(range(30, 40)), "labels": [IGNORE_INDEX] * 10,
             "position_ids": [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]}]
    batch = PackedCollator(0, attn_implementation="sdpa")(rows)
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def logits(attention):
        def discarding(module, query, key, value, attention_mask, *args, **kwargs):
            return attention(module, query, key, value, None, *args, **kwargs)

        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", discarding)
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits

    with torch.no_grad():
        expected = model(**batch, use_cache=False).logits
    torch.testing.assert_close(logits(sequence_parallel.masking_samples(sdpa)), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(sdpa)[:, 4:], expected[:, 4:], atol=1e-3)


def test_data_rank_world():
    assert sequence_parallel.data_rank_world(_strategy(0, n=2), 3, 4) == (1, 2)
    assert sequence_parallel.data_rank_world(SimpleNamespace(), 3, 4) == (3, 4)


def _trainer(world=2, n=2, packing=False, kind="sft"):
    return SimpleNamespace(strategy=SimpleNamespace(sequence_parallel_size=n), world_size=world,
                           datamodule=SimpleNamespace(packing=packing, kind=kind, batch_size=2))


def _model(heads=4, kv=2):
    config = SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv)
    config.get_text_config = lambda: config
    return SimpleNamespace(config=config)


@pytest.mark.parametrize("trainer,model,attn,message", [
    (_trainer(world=3), _model(), "sdpa", "does not divide the 3 ranks"),
    (_trainer(), _model(), "eager", "model.attn_implementation=eager cannot be split"),
    (_trainer(world=4, n=4), _model(heads=6, kv=6), "sdpa", "does not divide the model's 6 attention heads"),
    (_trainer(world=4, n=4), _model(heads=12, kv=3), "sdpa", "3 key/value heads"),
    (_trainer(packing=True), _model(), "flex_attention", "model.attn_implementation=flex_attention cannot be"),
    (_trainer(kind="preference"), _model(), "sdpa", "only SFT data"),
])
def test_attach_refuses(trainer, model, attn, message):
    with pytest.raises(LitFTError, match=message):
        sequence_parallel.attach(trainer, model, attn)


def test_strategy_refuses_stage_1_and_ddp_has_no_key():
    from litft.strategies import LitFTDeepSpeedStrategy

    with pytest.raises(LitFTError, match="needs DeepSpeed ZeRO stage 2 or 3, not stage 1"):
        LitFTDeepSpeedStrategy(stage=1, sequence_parallel_size=2)
    assert LitFTDeepSpeedStrategy(stage=3, sequence_parallel_size=2).sequence_parallel_size == 2


@pytest.mark.parametrize("attn,packing,rows,wrapped", [
    ("sdpa", False, 2, False), ("sdpa", True, 2, True), ("flash_attention_2", False, 2, False),
    ("flash_attention_2", True, 1, False), ("kernels-community/flash-attn2", True, 1, False),
])
def test_attach_builds_ulysses_for_the_batches_it_gets(monkeypatch, attn, packing, rows, wrapped):
    """Flash attention with packing: Ulysses built for the collator's ONE flat row; sdpa with packing: the sdpa that
    Ulysses wraps masks by samples (masking_samples); otherwise untouched."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    got = {}

    def register(**kwargs):
        got.update(kwargs, core=ALL_ATTENTION_FUNCTIONS.get(kwargs["core_attn_implementation"]))
        return _Groups(0)

    monkeypatch.setattr(UlyssesSPAttentionHF, "register_with_transformers", register)
    before = ALL_ATTENTION_FUNCTIONS.get(attn)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, attn, before)  # restored after the test
    trainer = _trainer(packing=packing)
    sequence_parallel.attach(trainer, _model(), attn)
    assert got["micro_batch_size"] == trainer.strategy.sequence_parallel_micro_batch == rows
    assert got["core_attn_implementation"] == attn and got["sequence_parallel_size"] == 2
    assert (got["core"] is not before) == wrapped
    if wrapped:
        assert got["core"].__qualname__.startswith("masking_samples")


# ---------------------------------------------------------------------------------------------- real processes
import json  # noqa: E402

import yaml  # noqa: E402

from tests.test_distributed import (  # noqa: E402  (launch helpers and the reference runs of the DDP/ZeRO matrix)
    CLIP, ROWS, STEPS, _assert_matches, _assert_tokenized_once, _fit, _result, _write_config,
    references,  # noqa: F401  (a fixture)
)
from tests.test_packing_varlen import KERNEL_DIR, STANDIN  # noqa: E402  (the CPU stand-in flash kernel)

PACKED_CUTOFF = 128
"""Packed cells: rows of 128 tokens, 2-3 samples (35-65 tokens each) per row; the flash collator lays the 4 rows of a
micro-batch end to end (~450 tokens, ~9 samples)."""


def _packed(config: Path, attn: str) -> list[str]:
    """The CLI arguments of a packed run; the stand-in kernel (which the CLI cannot name) through its callback."""
    if attn != STANDIN:
        return ["--data.packing=true", f"--data.cutoff_len={PACKED_CUTOFF}", f"--model.attn_implementation={attn}"]
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"].append({"class_path": "tests.flash_standin.UseFlashStandin",
                                         "init_args": {"record_dir": data["output_dir"]}})
    config.write_text(yaml.safe_dump(data))
    return ["--data.packing=true", f"--data.cutoff_len={PACKED_CUTOFF}"]


def _assert_varlen_ran(out: Path, model: str, world_size: int, *, forwards: int) -> None:
    """On every rank each layer's attention ran through the stand-in's varlen entry point (sample boundaries) in
    each of the ``forwards`` training forwards; the dense one ran once per layer only, for the one-off eval check of
    the loss shortcut (the first 16 tokens of the first row: one sample)."""
    layers = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
    for rank in range(world_size):
        calls = json.loads((out / f"flash-rank{rank}.json").read_text())
        assert calls == {"varlen": layers * forwards, "dense": layers}, (rank, calls)


def _assert_samples_cross_the_split(model: str, data: str, attn: str, cache: Path) -> None:
    """The first packed micro-batch the runs train on, split as the 2 ranks split it: a sample starts inside each
    half (after the first column), and the halves hold different numbers of trained tokens."""
    from litft.data.datamodule import LitFTDataModule
    from litft.data.packing import is_varlen

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LITFT_CACHE", str(cache))
        dm = LitFTDataModule(dataset=data, tokenizer=model, cutoff_len=PACKED_CUTOFF, packing=True, batch_size=4,
                             attn_implementation=attn)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    rows = 1 if is_varlen(attn) else 4
    assert batch["input_ids"].shape[0] == rows
    halves = [sequence_parallel.shard(_strategy(r, micro_batch=rows), batch) for r in (0, 1)]
    starts = [int((h["position_ids"][:, 1:] == 0).sum()) for h in halves]
    trained = [int((h[sequence_parallel.SHIFTED_LABELS] != IGNORE_INDEX).sum()) for h in halves]
    assert min(starts) > 0 and trained[0] != trained[1], (starts, trained)


@pytest.fixture(scope="module")
def packed_references(setup_dirs):
    """One process, micro-batch 4, packed rows: what the packed sequence-parallel runs must reproduce (lazy)."""
    root, model, data = setup_dirs
    cache: dict[tuple, tuple] = {}

    def get(accumulate: int, qlora: bool, attn: str):
        if (accumulate, qlora, attn) not in cache:
            out = root / f"single-packed-{attn.split('/')[-1]}-a{accumulate}{'-qlora' if qlora else ''}"
            config = _write_config(out, model, data, strategy="auto", devices=1, batch=4, accumulate=accumulate,
                                   qlora=qlora)
            log = _fit(config, *_packed(config, attn))
            assert "packing efficiency" in log, log[-3000:]
            if attn == STANDIN:
                _assert_varlen_ran(out, model, world_size=1, forwards=STEPS * accumulate)
            losses, norms, _ = cache[accumulate, qlora, attn] = _result(out)
            assert len(losses) == len(norms) == STEPS
            assert max(norms) > CLIP, f"gradient norms {norms} never reach gradient_clip_val={CLIP}: nothing clips"
        return cache[accumulate, qlora, attn]

    return get


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory, tiny_llama):
    """test_distributed's set-up with rows whose short prompt (~18 tokens with the template) and long replies
    (12-22 numbers, cut at cutoff_len 48) put the middle of every padded micro-batch inside the replies: a
    sequence's two halves hold unequal trained tokens, and the target across the split is a trained one."""
    root = tmp_path_factory.mktemp("sp")
    records = [{"instruction": f"Double {i}.", "input": "", "output": " ".join([str(2 * i)] * (12 + (7 * i) % 11))}
               for i in range(ROWS)]
    (root / "rows.json").write_text(json.dumps(records))
    return root, tiny_llama, str(root / "rows.json")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage,accumulate,qlora,packed", [(2, 1, False, None), (2, 3, True, "sdpa"),
                                                           (3, 1, False, STANDIN)],
                         ids=["zero2-lora-a1", "zero2-qlora-a3-packed-sdpa", "zero3-lora-a1-gradckpt-packed-flash"])
def test_two_ranks_splitting_sequences_match_one(setup_dirs, references, packed_references, monkeypatch, stage,
                                                 accumulate, qlora, packed):
    """The packed cells (data.packing, rows of several samples) check that samples stay apart after the split: under
    sdpa (the block mask rebuilt from the gathered positions) and under flash attention (the CPU stand-in kernel of
    tests/cpu_flash_attn: varlen boundaries from the gathered positions of the one flat row)."""
    root, model, data = setup_dirs
    out = root / f"sp2-zero{stage}-a{accumulate}{'-qlora' if qlora else ''}{'-packed' if packed else ''}"
    strategy = {"class_path": "litft.strategies.LitFTDeepSpeedStrategy",
                "init_args": {"stage": stage, "sequence_parallel_size": 2}}
    config = _write_config(out, model, data, strategy=strategy, devices=2, batch=4, accumulate=accumulate, qlora=qlora)
    if packed == STANDIN:
        pytest.importorskip("kernels")
        monkeypatch.setenv("LOCAL_KERNELS", f"{STANDIN}={KERNEL_DIR}")  # read by every process the test starts
    if packed:
        _assert_samples_cross_the_split(model, data, packed, root / f"cache-{out.name}")
    # ZeRO-3 also recomputes activations (non-reentrant checkpointing: the all-to-all runs again in backward); the
    # reference runs without: checkpointing does not change the numbers (tests/test_distributed.py's note)
    log = _fit(config, *(["--model.gradient_checkpointing=true"] if stage == 3 else []),
               *(_packed(config, packed) if packed else []))
    assert "sequence parallelism: 2 ranks per sequence" in log, log[-3000:]
    assert ("packed samples" in log) == bool(packed), log[-3000:]
    if packed == STANDIN:
        _assert_varlen_ran(out, model, world_size=2, forwards=STEPS * accumulate * (2 if stage == 3 else 1))
    _assert_tokenized_once(out, log, world_size=2)
    _assert_matches(f"sequence parallel 2 ZeRO-{stage} A={accumulate}{' QLoRA' if qlora else ''}"
                    f"{' packed ' + packed if packed else ''}", out,
                    packed_references(accumulate, qlora, packed) if packed else references(accumulate, qlora))
    # resume under sequence parallelism: tests/test_sequence_parallel_resume.py (kill -9, bit for bit)


def test_throughput_counts_a_sequence_parallel_groups_batch_once():
    """Every rank of a sequence-parallel group holds the group's whole batch: counted N times, tokens_per_sec and
    mfu would read N times too high."""
    from types import SimpleNamespace

    from litft.callbacks.throughput import Throughput

    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    counted = {}
    for n in (1, 2):
        cb = Throughput(log_every_n_steps=1000)
        cb._tokens, cb._last_step = 0, 0
        trainer = SimpleNamespace(strategy=SimpleNamespace(sequence_parallel_size=n), log_every_n_steps=1000,
                                  global_step=1)
        cb.on_train_batch_end(trainer, None, None, batch, 0)
        counted[n] = cb._tokens
    assert counted == {1: 16, 2: 8}
