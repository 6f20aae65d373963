#!/usr/bin/env bash
# The shell entry point: ./run.sh test [pytest args] | ./run.sh demo [CONFIG.yaml] [key.sub=value ...] |
# ./run.sh gpu [SHARED_DIR [SHAPE...]]. Training itself is train/main.py; the other commands are train/commands/.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY=$VENV/bin/python

# setup_env base|test: the project alone (the demo) or with its test extras (transformers, peft, pytest, ruff).
setup_env() {
    local marker="$VENV/.installed-$1"
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
    fi
    [ "$1" = base ] && [ -f "$VENV/.installed-test" ] && [ ! setup.py -nt "$VENV/.installed-test" ] && return
    # Reinstall only when setup.py changed since the last install.
    if [ ! -f "$marker" ] || [ setup.py -nt "$marker" ]; then
        # torch is pinned: a bare requirement would pull a multi-GB CUDA build.
        "$PY" -m pip install -q torch==2.13.0
        if [ "$1" = test ]; then "$PY" -m pip install -q -e '.[test]'; else "$PY" -m pip install -q -e .; fi
        touch "$marker"
    fi
}

# CUDA checks for one H100/H200, meant to take under 10 minutes: the attention paths (compiled FlexAttention
# forward and backward against the eager reference, packed against padded logits, float32 and bf16, every
# family), the Triton kernels and the decoders' bf16 logits against transformers' on the GPU; then the benchmark
# on random-weight Qwen3-0.6B and gemma-3-1b shapes (bf16: tokens/s, MFU and peak GPU memory of this project,
# padded and packed, training and inference, next to transformers + PEFT). The tests are stopped after 3 minutes,
# each benchmark after 5; every step runs even if one before it failed, and the exit status says whether all
# passed. SHARED_DIR holds data/qc_sample.jsonl and tokenizers/{qwen3,gemma3} (default ../shared).
gpu_checks() {
    local shared=${1:-../shared} failed=0 python=${PYTHON:-python3}
    local shapes=("${@:2}")
    [ ${#shapes[@]} -gt 0 ] || shapes=(qwen3-0.6b gemma3-1b)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $python -c "import torch, triton, transformers, peft
print(f'torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
    date -u +"%Y-%m-%d %H:%M UTC"
    timeout 180 $python -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_kernels.py \
        tests/test_decoder.py::test_bfloat16_error_no_larger_than_transformers || failed=1
    for shape in "${shapes[@]}"; do
        timeout 300 $python -m train.commands.benchmark --model-shape "$shape" --device cuda --batch-size 128 \
            --warmup 10 --steps 20 --repeats 1 --shared "$shared" || failed=1
    done
    return $failed
}

case "${1:-}" in
    test)
        shift
        setup_env test
        "$VENV/bin/ruff" check .  # the linter (ruff.toml), then the tests
        exec "$PY" -m pytest tests "$@"
        ;;
    demo)
        shift
        setup_env base
        exec "$PY" -m train.commands.demo "$@"
        ;;
    gpu)
        shift
        gpu_checks "$@"
        ;;
    *)
        echo "usage: ./run.sh test [pytest args] | ./run.sh demo [CONFIG.yaml] [key.sub=value ...] | ./run.sh gpu [SHARED_DIR [SHAPE...]]" >&2
        exit 2
        ;;
esac
