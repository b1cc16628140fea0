#!/usr/bin/env bash
# On a machine with a CUDA GPU: build with CUDA, run the test suite (every kernel test runs
# on cpu and cuda), then the kernel benchmark on the GPU. Results go to ${OUT:-./gpu_out}.
# Bandwidth is reported as a share of the copy rate measured in the same run (an H200
# copies ~4.3 TB/s).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee "$OUT/torch.txt"
pip install -q scikit-build-core nanobind pytest hypothesis
PONDER_CUDA=ON CMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-90}" \
  pip install -q --no-deps --no-build-isolation -Cbuild-dir=build/gpu . 2>&1 | tail -3 | tee "$OUT/build.txt"
python -c "import ponder; assert ponder.cuda_available(), 'CUDA kernels not usable'; print('cuda ok')" | tee -a "$OUT/build.txt"
python -m pytest -q tests 2>&1 | tail -15 | tee "$OUT/tests.txt"
for dtype in float32 bfloat16; do
  python bench/bench_paged_attention.py --device cuda --dtype "$dtype" | tee "$OUT/bench_$dtype.txt"
  python bench/bench_paged_attention.py --device cuda --dtype "$dtype" --json > "$OUT/bench_$dtype.json"
done
python bench/bench_prm_head.py --device cuda | tee "$OUT/bench_prm_head.txt"
