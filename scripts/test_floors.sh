#!/usr/bin/env bash
# Lowest versions: build a fresh venv with every pin of pyproject.toml at its floor (">=X" installed as "==X":
# the core dependencies and the deepspeed extra; what they pull in resolves as pip chooses), then run the
# strategy, loss, module, distributed and version tests there against this checkout. Not run in CI: it downloads
# ~3 GB (torch from the package registry is the CUDA build, with its nvidia-* wheels) and takes long.
#
#   scripts/test_floors.sh [extra pytest args]
#
# FLOORS_DIR   where the venv and the log go (default: a new temp dir; an existing venv there is reused)
# PYTHON       the interpreter to build the venv from (default python3)
# FLOORS_TESTS the test files (default below)
# Prints the installed versions, pytest's summary and the duration; the exit code is pytest's.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${FLOORS_DIR:-$(mktemp -d -t litft-floors.XXXXXX)}
PYTHON=${PYTHON:-python3}
TESTS=${FLOORS_TESTS:-"tests/test_versions.py tests/test_loss.py tests/test_strategies.py tests/test_module.py tests/test_distributed.py"}
START=$(date +%s)
mkdir -p "$DIR"
echo "floors: venv in $DIR/venv"

[ -x "$DIR/venv/bin/python" ] || "$PYTHON" -m venv "$DIR/venv"  # no system site-packages: nothing newer leaks in
PY="$DIR/venv/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
quiet() { grep -v 'is ignored: it is neither a file nor a directory' || true; }  # a local index this machine lists

# The pins, read from pyproject.toml (tests/test_versions.py keeps them equal to litft/versions.py).
mapfile -t CORE < <(cd "$REPO" && "$PY" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"]:
    print(re.sub(r">=", "==", req, count=1))
EOF
)
DEEPSPEED=$(cd "$REPO" && "$PY" -c 'import re, tomllib
reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["deepspeed"]
print(next(re.sub(">=", "==", r) for r in reqs if r.startswith("deepspeed")))')
echo "floors: ${CORE[*]} $DEEPSPEED"

TORCH=$(printf '%s\n' "${CORE[@]}" | grep '^torch==')
"${PIP[@]}" install -q "$TORCH" 2> >(quiet >&2)               # first, alone: DeepSpeed's build below needs it
"${PIP[@]}" install -q "${CORE[@]}" pytest hypothesis pyyaml ninja wheel 2> >(quiet >&2)
# DeepSpeed as the Makefile installs it: no build isolation (else pip pulls another torch into the build), no prebuilt ops.
DS_BUILD_OPS=0 "${PIP[@]}" install -q --no-build-isolation "$DEEPSPEED" 2> >(quiet >&2)
# torch's registry wheel is the CUDA build: its triton, with no GPU driver here, breaks `import deepspeed` (DeepSpeed
# imports its triton kernels whenever triton is installed). The CPU wheel has no triton; neither does this venv
# (removed after DeepSpeed, whose install brings torch's dependencies back).
"${PIP[@]}" uninstall -q -y triton 2> >(quiet >&2) || true
DS_ACCELERATOR=cpu "$PY" -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()" >/dev/null

echo "floors: installed"
"${PIP[@]}" list --format=freeze 2>/dev/null | grep -iE '^(torch|lightning|pytorch-lightning|transformers|peft|bitsandbytes|datasets|jsonargparse|safetensors|gguf|rich|tensorboard|matplotlib|deepspeed|numpy|accelerate|tokenizers|huggingface[-_]hub|pytest)=='
INSTALLED=$(date +%s)
echo "floors: install took $((INSTALLED - START)) s"

cd "$REPO"
set +e
# shellcheck disable=SC2086
env PYTHONPATH="$REPO" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false \
    "$PY" -m pytest -q -p no:cacheprovider $TESTS "$@"
RC=$?
set -e
echo "floors: tests took $(( $(date +%s) - INSTALLED )) s, all $(( $(date +%s) - START )) s; pytest exit code $RC"
exit $RC
