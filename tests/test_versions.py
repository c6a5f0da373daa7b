"""Version floors: pyproject.toml's pins equal litft/versions.py's table, and an install older than a floor stops
litft with one line naming the package, the installed version, the floor and why (exit code 2, no traceback)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from packaging.requirements import Requirement

from litft import cli, versions  # cli imports Lightning now, whose log handlers bind to pytest's stderr
from litft.errors import LitFTError
from litft.versions import BY_NAME, FLOORS

REPO = Path(__file__).resolve().parents[1]
NOT_PINNED_EXTRAS = ("dev", "bench")
"""Extras that are tools around litft (tests, benchmarks), not what it runs on."""


def _pins() -> dict[str, tuple[str, str | None]]:
    """name -> (floor, extra) of every versioned requirement pyproject.toml declares for litft to run on."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {None: project["dependencies"], **{k: v for k, v in project["optional-dependencies"].items()
                                               if k not in NOT_PINNED_EXTRAS}}
    pins = {}
    for extra, reqs in groups.items():
        for text in reqs:
            req = Requirement(text)
            if not req.specifier:
                continue  # helpers without a floor (ninja, the npu extra's runtime deps)
            specs = list(req.specifier)
            assert [s.operator for s in specs] == [">="], f"pyproject.toml: {text}: a floor only (>=), from litft/versions.py"
            pins[req.name] = (specs[0].version, extra)
    return pins


def test_pyproject_pins_are_the_table():
    assert _pins() == {f.package: (f.version, f.extra) for f in FLOORS}


def test_makefile_installs_deepspeed_at_its_floor():
    pins = re.findall(r'"deepspeed>=([^"]+)"', (REPO / "Makefile").read_text())
    assert pins == [BY_NAME["deepspeed"].version]


def test_packages_checked_when_used_are_checked_there():
    """Each floor with a ``when`` other than start has its one-line check in litft's source (behaviour: below)."""
    source = "\n".join(p.read_text() for p in (REPO / "litft").rglob("*.py"))
    for f in FLOORS:
        if f.when not in (None, "start"):
            assert re.search(rf'check\("{f.package}"[,)]', source), f"{f.package}: no check(\"{f.package}\") in litft"


@pytest.mark.parametrize("version,expected", [
    ("2.6", (2, 6)), ("2.6.0", (2, 6)), ("2.13.0+cpu", (2, 13)), ("2.6.0a0+ecf3bae40a", (2, 6)),
    ("2.6.0.post3", (2, 6)), ("0.19.5", (0, 19, 5)), ("10", (10,)), ("0.0", (0,)),
])
def test_release_numbers(version, expected):
    assert versions.release(version) == expected


def test_the_installed_packages_pass():
    versions.check_start()
    for package in ("deepspeed", "bitsandbytes"):
        if versions.installed_version(package) is not None:
            versions.check(package)


def _installed(monkeypatch, **fake: str | None) -> None:
    """Pretend that the packages in ``fake`` (name with _ for -) are installed at the given versions (None: absent)."""
    real = versions.installed_version
    fake = {k.replace("_", "-"): v for k, v in fake.items()}
    monkeypatch.setattr(versions, "installed_version", lambda p: fake[p] if p in fake else real(p))


@pytest.fixture(autouse=True)
def _fresh_litft_log_handler(monkeypatch):
    """cli.main() adds its stderr handler once per process: give each in-process main() one on this test's stderr."""
    monkeypatch.setattr(logging.getLogger("litft"), "handlers", [])


def _below(floor: versions.Floor) -> str:
    """A version just under ``floor``: 2.5.5 -> 2.5.4.99, 3.0 -> 2.99."""
    parts = [int(p) for p in floor.version.split(".")]
    i = max(i for i, p in enumerate(parts) if p > 0)
    return ".".join(map(str, parts[:i] + [parts[i] - 1, 99]))


def _line(floor: versions.Floor, installed: str) -> str:
    return f"{floor.package} {installed} is installed; litft needs {floor.package}>={floor.version} ({floor.why})"


def _one_error_line(err: str, *, alone: bool = True) -> str:
    """The one error line on stderr (its last line; alone: the only line but litft's own ``[litft]`` log)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[litft]")]
    assert [line for line in lines if line.startswith("litft: error:")] == lines[-1:], err
    assert not alone or len(lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("package", [f.package for f in FLOORS if f.when == "start"])
def test_cli_stops_on_an_old_core_package(package, monkeypatch, capsys):

    floor = BY_NAME[package]
    _installed(monkeypatch, **{package: _below(floor)})
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--config", "never-read.yaml"])
    assert stop.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"litft: error: {_line(floor, _below(floor))}"), line


def test_a_release_at_the_floor_passes_and_a_missing_package_is_named(monkeypatch):
    _installed(monkeypatch, torch="2.6.0a0+git1", deepspeed=None)
    versions.check("torch")
    with pytest.raises(LitFTError, match=r"^deepspeed is not installed; litft needs deepspeed>=0\.19\.5 .*litft\[deepspeed\]"):
        versions.check("deepspeed")


def _write_config(tmp_path: Path, model: str, data: str, **trainer) -> Path:
    config = {"output_dir": str(tmp_path / "out"),
              "model": {"name_or_path": model, "lora": {"r": 4}},
              "data": {"dataset": data, "cutoff_len": 32, "batch_size": 2},
              "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False, **trainer}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_deepspeed_strategy_stops_on_an_old_deepspeed(monkeypatch, capsys, tmp_path, tiny_llama, alpaca_file):
    """0.19.4 has managed_gradient_accumulation for ZeRO-2/3 but not for offload: litft's floor is 0.19.5."""
    pytest.importorskip("deepspeed")
    from litft.strategies import LitFTDeepSpeedStrategy

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # restored afterwards (the strategy pins it)
    monkeypatch.setenv("_LITFT_DS_ACCELERATOR", "cpu")
    floor = BY_NAME["deepspeed"]
    _installed(monkeypatch, deepspeed="0.19.4")
    with pytest.raises(LitFTError) as err:
        LitFTDeepSpeedStrategy(stage=2)
    assert str(err.value).startswith(_line(floor, "0.19.4"))
    # through the CLI: the trainer builds the strategy from its registered name
    config = _write_config(tmp_path, tiny_llama, alpaca_file, strategy="deepspeed_stage_2_offload")
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--config", str(config)])
    assert stop.value.code == 2
    line = _one_error_line(capsys.readouterr().err, alone=False)  # after Lightning's "Seed set to 0"
    assert line.startswith(f"litft: error: {_line(floor, '0.19.4')}"), line


def test_npu_accelerator_stops_on_an_old_torch_npu(monkeypatch):
    from litft.accelerators import npu as npu_mod

    calls = []
    stand_in = SimpleNamespace(set_compile_mode=lambda **kw: calls.append("compile"), set_device=calls.append)
    monkeypatch.setattr(npu_mod, "npu_module", lambda: stand_in)
    _installed(monkeypatch, torch_npu="2.5.1")
    with pytest.raises(LitFTError) as err:
        npu_mod.NPUAccelerator().setup_device(SimpleNamespace(type="npu", index=0))
    assert str(err.value).startswith(_line(BY_NAME["torch-npu"], "2.5.1"))
    assert calls == []  # stopped before touching the device
    _installed(monkeypatch, torch_npu="2.6.0.post3")
    npu_mod.NPUAccelerator().setup_device(SimpleNamespace(type="npu", index=0))
    assert calls == ["compile", SimpleNamespace(type="npu", index=0)]
    _installed(monkeypatch, torch_npu=None)  # torch.npu loaded, no version record (a source build): nothing to compare
    npu_mod.NPUAccelerator().setup_device(SimpleNamespace(type="npu", index=0))


def test_quantization_stops_on_an_old_bitsandbytes(monkeypatch, capsys, tmp_path, tiny_llama, alpaca_file):
    from litft.model.config import QuantizationConfig
    from litft.model.quantization import bnb_config

    floor = BY_NAME["bitsandbytes"]
    _installed(monkeypatch, bitsandbytes="0.47.0")
    with pytest.raises(LitFTError) as err:
        bnb_config(QuantizationConfig(), model_dtype=torch.float32)
    assert str(err.value).startswith(_line(floor, "0.47.0"))
    # through the CLI: the base model is configured (after data preparation) and stops there
    config = _write_config(tmp_path, tiny_llama, alpaca_file, enable_progress_bar=False)
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--config", str(config), "--model.quantization.bits", "4"])
    assert stop.value.code == 2
    line = _one_error_line(capsys.readouterr().err, alone=False)  # after the data preparation's log
    assert line.startswith(f"litft: error: {_line(floor, '0.47.0')}"), line


def test_python_m_litft_prints_one_line_and_exits_2(tmp_path):
    """For real: a distribution record saying peft 0.11.1, first on the path, is what importlib.metadata finds."""
    fake = tmp_path / "site"
    info = fake / "peft-0.11.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: peft\nVersion: 0.11.1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "litft", "fit", "--config", "never-read.yaml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    floor = BY_NAME["peft"]
    assert _one_error_line(proc.stderr) == f"litft: error: {_line(floor, '0.11.1')}: pip install 'peft>={floor.version}'"
    assert proc.stdout == ""
