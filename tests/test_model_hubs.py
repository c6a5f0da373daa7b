"""Model ids through ModelScope / Modelers (openMind) when USE_MODELSCOPE_HUB / USE_OPENMIND_HUB is set
(litft/model/hubs.py). The hub clients are replaced by fake modules whose snapshot_download returns a tiny model
folder and records its arguments; nothing is downloaded."""

from __future__ import annotations

import sys
import types

import pytest

from litft.errors import LitFTError

MODEL_ID = "Qwen/Qwen2.5-14B-Instruct"


@pytest.fixture
def fake_hub(monkeypatch, tiny_llama):
    """fake_hub("modelscope") installs a fake client module; returns the list of its snapshot_download calls."""
    from litft.model import hubs

    monkeypatch.setattr(hubs, "_resolved", {})
    for hub in hubs.HUBS:
        monkeypatch.delenv(hub.env, raising=False)

    def install(module: str, *, missing: set[str] = frozenset()) -> list:
        calls = []

        def snapshot_download(model_id, revision=None, **kwargs):
            calls.append((model_id, revision, kwargs))
            if model_id in missing:
                raise FileNotFoundError(f"The model: {model_id} not exists\nsecond line")
            return tiny_llama

        fake = types.ModuleType(module)
        fake.snapshot_download = snapshot_download
        monkeypatch.setitem(sys.modules, module, fake)
        return calls

    return install


@pytest.mark.parametrize("env, module, revision", [("USE_MODELSCOPE_HUB", "modelscope", "master"),
                                                   ("USE_OPENMIND_HUB", "openmind_hub", "main")])
def test_model_and_tokenizer_load_from_the_selected_hub(fake_hub, monkeypatch, tiny_llama, tmp_path, env, module,
                                                        revision):
    from transformers import AutoTokenizer

    from litft.data.datamodule import LitFTDataModule
    from litft.model.build import load_base
    from litft.model.module import LitFTModule

    calls = fake_hub(module)
    monkeypatch.setenv(env, "1")
    monkeypatch.setenv("LITFT_CACHE", str(tmp_path / "cache"))
    lit = LitFTModule(MODEL_ID)
    model = load_base(lit.spec)
    tokenizer = lit.tokenizer
    data_tokenizer = LitFTDataModule(dataset="unused", tokenizer=MODEL_ID).tokenizer  # the CLI links it to the model
    expected = AutoTokenizer.from_pretrained(tiny_llama)
    assert model.config.vocab_size == len(expected) and model.config.hidden_size == 64
    for tok in (tokenizer, data_tokenizer):
        assert tok.get_vocab() == expected.get_vocab() and tok.name_or_path == tiny_llama
    assert calls == [(MODEL_ID, revision, {})]  # one download per process: model and tokenizer share it
    assert (tmp_path / "cache" / "hub").is_dir()  # the processes of a job take turns under a lock here


def test_without_the_variable_ids_go_to_hugging_face(fake_hub, tmp_path):
    from litft.model.loading import resolve_model_path

    calls = fake_hub("modelscope") + fake_hub("openmind_hub")
    assert resolve_model_path(MODEL_ID) == MODEL_ID  # transformers' Hugging Face path
    assert calls == []


def test_local_folders_and_pkg_paths_never_touch_the_hub(fake_hub, monkeypatch, tiny_llama):
    from litft.model.loading import resolve_model_path

    calls = fake_hub("modelscope")
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert resolve_model_path(tiny_llama) == tiny_llama
    with pytest.raises(LitFTError, match="Python package 'no_such_pkg_xyz' is not installed"):
        resolve_model_path("pkg:no_such_pkg_xyz")
    with pytest.raises(LitFTError, match="no such model folder"):
        resolve_model_path("./missing/model/folder")
    assert calls == []


def test_modelscope_wins_when_both_are_set(fake_hub, monkeypatch):
    from litft.model.loading import resolve_model_path

    ms, om = fake_hub("modelscope"), fake_hub("openmind_hub")
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "true")
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    resolve_model_path(MODEL_ID)
    assert len(ms) == 1 and om == []


@pytest.mark.parametrize("env, package", [("USE_MODELSCOPE_HUB", "modelscope"), ("USE_OPENMIND_HUB", "openmind_hub")])
def test_missing_client_package_is_one_line(fake_hub, monkeypatch, env, package):
    from litft.model.loading import load_tokenizer

    monkeypatch.setitem(sys.modules, package, None)  # import fails as when the package is not installed
    monkeypatch.setenv(env, "1")
    with pytest.raises(LitFTError) as err:
        load_tokenizer(MODEL_ID)
    assert str(err.value) == (f"model.name_or_path: {env}=1 needs the {package} package to download '{MODEL_ID}': "
                              f"pip install {package}")


def test_unknown_id_is_one_line(fake_hub, monkeypatch):
    from litft.model.loading import resolve_model_path

    fake_hub("modelscope", missing={"Qwen/No-Such-Model"})
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    with pytest.raises(LitFTError) as err:
        resolve_model_path("Qwen/No-Such-Model")
    assert str(err.value) == ("model.name_or_path: cannot download 'Qwen/No-Such-Model' from ModelScope "
                              "(USE_MODELSCOPE_HUB=1): FileNotFoundError: The model: Qwen/No-Such-Model not exists "
                              "second line")
