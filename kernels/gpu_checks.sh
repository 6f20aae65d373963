#!/usr/bin/env bash
# CUDA checks for one H100/H200, meant to take under 8 minutes:
#   1. the attention paths (compiled FlexAttention forward and backward against the eager reference, and a packed
#      batch's classifier logits against the padded batch's, float32 and bf16, every family) and the Triton
#      kernels (RMSNorm, RoPE, gated activations, and the decoder on them), and the decoders' bf16 logits against
#      transformers' (every family), on the GPU;
#   2. python -m train.benchmark on random-weight Qwen3-0.6B and gemma-3-1b shapes, bf16 autocast: tokens/s,
#      MFU and peak GPU memory of this project (padded, packed) next to transformers + PEFT.
# Each step is stopped after 3 minutes.
#
#     bash kernels/gpu_checks.sh [SHARED_DIR [SHAPE...]]
#
# SHARED_DIR holds data/qc_sample.jsonl and tokenizers/{qwen3,gemma3} (default ../shared); SHAPEs default to
# qwen3-0.6b gemma3-1b. Every step runs even if one before it failed; the exit status says whether all passed.
set -uo pipefail
shared=${1:-../shared}
shapes=("${@:2}")
[ ${#shapes[@]} -gt 0 ] || shapes=(qwen3-0.6b gemma3-1b)
python=${PYTHON:-python3}
failed=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$python -c "import torch, triton, transformers, peft
print(f'torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
date -u +"%Y-%m-%d %H:%M UTC"

timeout 180 $python -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_kernels.py \
    tests/test_decoder.py::test_bfloat16_error_no_larger_than_transformers || failed=1
for shape in "${shapes[@]}"; do
    timeout 180 $python -m train.benchmark --model-shape "$shape" --device cuda --batch-size 128 --warmup 10 \
        --steps 20 --repeats 1 --shared "$shared" || failed=1
done
exit $failed
