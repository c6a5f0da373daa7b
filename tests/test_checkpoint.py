"""LitFTCheckpoint on a toy run: atomic saves, `last` resolution, RNG states, resume continuity."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import litft.callbacks.checkpoint as ckpt_mod
from litft.callbacks.checkpoint import RNG_KEY, AtomicCheckpointIO, LitFTCheckpoint
from tests.toy_lightning import DropoutToy, StatefulLoader, ToyModule, loader, toy_batches


def _trainer(root, callbacks, max_steps=8, **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(default_root_dir=root, accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_saves_every_n_and_at_end_into_output_dir_checkpoints(tmp_path):
    cb = LitFTCheckpoint(every_n_train_steps=3, keep_all=True)
    trainer = _trainer(tmp_path, [cb], logger=CSVLogger(tmp_path, name="logs"))
    trainer.fit(ToyModule(), loader(toy_batches(8)))
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8  # the end of training is saved too
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    states = last[RNG_KEY]
    assert len(states) == 1 and set(states[0]) >= {"torch", "numpy", "python"}


def test_only_last_by_default_and_ckpt_path_last_resumes(tmp_path):
    trainer = _trainer(tmp_path, [LitFTCheckpoint(every_n_train_steps=2)], max_steps=4,
                       logger=CSVLogger(tmp_path, name="logs"))
    trainer.fit(ToyModule(), loader(toy_batches(8)))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    # A new Trainer (new logger version folder) still finds <root>/checkpoints/last.ckpt.
    trainer2 = _trainer(tmp_path, [LitFTCheckpoint(every_n_train_steps=2)], max_steps=6,
                        logger=CSVLogger(tmp_path, name="logs"))
    trainer2.fit(ToyModule(), StatefulLoader(toy_batches(8)), ckpt_path="last")
    assert trainer2.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_failed_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    cb = LitFTCheckpoint(every_n_train_steps=2)
    trainer = _trainer(tmp_path, [cb], max_steps=4)
    trainer.fit(ToyModule(), loader(toy_batches(8)))
    path = tmp_path / "checkpoints" / "last.ckpt"
    before = path.read_bytes()

    real_save = torch.save

    def half_written_then_crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # the temp file is half there when the "disk" fails
            fh.truncate(len(before) // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_written_then_crash)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind
    model = ToyModule()
    model.load_state_dict(state["state_dict"])


def _run(root, max_steps, ckpt_path=None, every=3, val=False):
    torch.manual_seed(1234)
    model = DropoutToy()
    torch.manual_seed(99)  # the training stream starts here in every run
    trainer = _trainer(root, [LitFTCheckpoint(every_n_train_steps=every)], max_steps=max_steps,
                       val_check_interval=3 if val else None, limit_val_batches=2 if val else 0)
    val_loader = loader(toy_batches(2)) if val else None
    trainer.fit(model, StatefulLoader(toy_batches(10)), val_loader, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("val", [False, True])
def test_resume_mid_epoch_continues_rng_stream_and_data(tmp_path, val):
    full = _run(tmp_path / "full", max_steps=8, val=val)
    _run(tmp_path / "cut", max_steps=3, val=val)  # stops after the step-3 checkpoint, mid-epoch (10 batches)
    resumed = _run(tmp_path / "cut", max_steps=8, ckpt_path="last", val=val)
    assert [s for s, _ in resumed.step_losses] == [3, 4, 5, 6, 7]
    assert resumed.step_losses == full.step_losses[3:]  # bitwise: same floats
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
