#!/usr/bin/env bash
# The GPU figures of the speed issue, in a few minutes on one H100/H200-class card:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/{ops,layer,layer_triton,resnet50}.json (default: gpu_check/) and prints the tables.
# Columns: dense, seed, paper (as converted), paper-opt (after optimize_for_inference; the C++
# kernels are CPU-only and onnxruntime runs on the CPU, so neither is a GPU column).
# 1. ATen operators and CUDA kernels per layer (C=64; kernels at batch 64, 56x56)
# 2. layers C=64@56 and C=256@14, batch 64, bf16 autocast, channels_last: eager, compiled, CUDA graphs
# 3. the same layers, eager inference, with the opt-in fused Triton kernel of SRU (SCCONV_TRITON=1)
# 4. ResNet-50 batch 128, bf16 autocast, channels_last: inference and a training step,
#    eager and compiled (the issue's targets: compiled inference <= 1.0x, compiled train
#    <= 1.2x, eager train <= 1.5x the original)
set -euo pipefail
out="${1:-gpu_check}"
mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"
python "$here/latency.py" --device cuda --suite ops --json "$out/ops.json"
python "$here/latency.py" --device cuda --suite layers --shapes 64@56 256@14 --batch 64 --dtype bfloat16 \
    --modes eager compile cudagraphs --steps inference train --repeats 20 --json "$out/layer.json"
# the opt-in fused Triton kernel of SRU (eager inference only), against the line above
SCCONV_TRITON=1 python "$here/latency.py" --device cuda --suite layers --shapes 64@56 256@14 --batch 64 \
    --dtype bfloat16 --modes eager --steps inference --repeats 20 --json "$out/layer_triton.json"
python "$here/latency.py" --device cuda --suite networks --batch 128 --dtype bfloat16 \
    --modes eager compile --steps inference train --warmup 3 --repeats 10 --json "$out/resnet50.json"
