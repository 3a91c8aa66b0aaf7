#!/usr/bin/env bash
# node-run on a GPU, in one command: install node-run from this checkout (editable) into the python that runs this
# script, run the CUDA tests (tests/test_cuda.py, marked `cuda`) and `node-bench step --device cuda`, and write all
# of it to one log. Fails (non-zero exit) without a CUDA device, on a failed test or a failed benchmark.
#
#   scripts/device_check.sh                  # log and tables: outputs/device_check/<time>/ (OUTDIR=DIR elsewhere)
#   scripts/device_check.sh --fetch-wheels   # here, where PyPI answers: the pure-Python wheels node-run needs beyond
#                                            # torch, torchdiffeq, matplotlib, tqdm and pytest, into .whl/ (WHEELS=DIR)
#
# On a machine without network whose python already has torch (a lent GPU machine): fetch the wheels here first and
# take .whl/ along; they are installed with --no-index. Where every dependency is already importable nothing is
# downloaded; otherwise it runs `pip install -e '.[test]'`. Budget: meant to finish in well under 8 minutes on an
# H100 (each step has its own timeout); it has not run on a GPU yet (docs/tools/bench.md, "CUDA").
# NODE_RUN_CUDA_TESTS_ON=cpu rehearses the whole script on a CPU (tests and benchmark on the CPU: says nothing of CUDA);
# PYTEST_ADDOPTS (pytest's own, e.g. "-k cnf_moons") and BENCH_ARGS (extra node-bench flags) shorten a rehearsal.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"

if [ "${1:-}" = "--fetch-wheels" ]; then   # the versions of this environment (pip wheel builds antlr's sdist)
    set -e
    version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    mkdir -p "$wheels"
    "$python" -m pip wheel --quiet --no-deps -w "$wheels" "hydra-core==$(version hydra-core)" \
        "omegaconf==$(version omegaconf)" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
    ls "$wheels"
    exit 0
fi

device=cuda
[ "${NODE_RUN_CUDA_TESTS_ON:-cuda}" = cpu ] && device=cpu
out="${OUTDIR:-outputs/device_check/$(date +%Y-%m-%d_%H-%M-%S)}"
LOG="${LOG:-$out/device_check.log}"
mkdir -p "$out" "$(dirname "$LOG")"
tmp="$(mktemp -d -t node-run-device-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
exec > >(tee -a "$LOG") 2>&1
say() { echo "device_check: $*"; }
failed=()

say "$(date -Is) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'), device $device"
[ "$device" = cpu ] && say "DRY RUN on the CPU (NODE_RUN_CUDA_TESTS_ON=cpu): rehearses this script, says nothing about CUDA"
nvidia-smi -L 2>/dev/null || say "no nvidia-smi"

# 1. node-run itself, from this checkout.
if [ -d "$wheels" ]; then
    "$python" -m pip install --quiet --no-index --no-deps "$wheels"/*.whl || { say "FAILED: installing $wheels"; exit 1; }
fi
missing="$("$python" -c "import importlib.util as u; print(' '.join(m for m in 'torch torchvision torchdiffeq hydra \
omegaconf yaml matplotlib tqdm pytest'.split() if u.find_spec(m) is None))")"
if [ -z "$missing" ]; then   # everything there: nothing to download
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e . || { say "FAILED: pip install -e ."; exit 1; }
else
    say "not importable: $missing; pip install -e '.[test]' (needs PyPI)"
    "$python" -m pip install --quiet -e '.[test]' || { say "FAILED: pip install -e '.[test]'"; exit 1; }
fi
"$python" - "$device" <<'EOF' || { say "FAILED: no usable $device device"; exit 1; }
import sys, torch, torchdiffeq, node_cli
device = sys.argv[1]
assert device == "cpu" or torch.cuda.is_available(), "torch.cuda.is_available() is false"
name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print(f"device_check: torch {torch.__version__} (CUDA {torch.version.cuda}), torchdiffeq {torchdiffeq.__version__}, "
      f"node_cli from {node_cli.__path__[0]}, device {name}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
      f"matmul TF32 {torch.backends.cuda.matmul.allow_tf32} (PyTorch's defaults; node-run leaves them)")
EOF

# 2. The CUDA tests: every family a few steps on the device, CPU evaluation of those runs, a fixed batch's forward
#    and backward against the CPU, deterministic repeats.
say "pytest -m cuda tests/test_cuda.py"
if ! timeout 420 "$python" -m pytest -m cuda -v -rs -p no:cacheprovider tests/test_cuda.py; then
    failed+=("CUDA tests")
fi

# 3. node-bench step on the device (the tiny fake MNIST of the tests, 2048 training images: the step's shapes are
#    MNIST's, its solver steps those of that data, not of real MNIST).
mnist="$("$python" tests/mnist_fake.py "$tmp/mnist" 2048)"
say "node-bench step --device $device"
# shellcheck disable=SC2086  # BENCH_ARGS: extra node-bench flags, as words (e.g. "--models odenet --steps 2")
if ! timeout 240 "$python" -m node_cli.bench.cli step --device "$device" --data-root "$mnist" --out "$out/bench_step" \
        ${BENCH_ARGS:-}; then
    failed+=("node-bench step")
fi

if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]} (log: $LOG)"
    exit 1
fi
say "passed (log: $LOG)"
