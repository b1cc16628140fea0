#!/usr/bin/env bash
# One call on a CUDA machine (at most ~5 minutes; see issue 14): build with CUDA, run every
# test that has a CUDA case, then every benchmark on the GPU. Results go to ${OUT:-./gpu_out}
# as at most 5 files: env.txt, build.txt, tests.txt, bench.json (every benchmark's JSON and
# each stage's exit status) and log.txt (everything, as printed).
#
# The machine is offline: nothing is installed from a registry. torch (CUDA), transformers,
# nanobind, scikit-build-core, cmake, ninja, pytest and hypothesis must be there already.
# Tests that need the SmolLM2 GGUF skip; the tiny-model tests take SmolLM2's tokenizer files
# from $PONDER_TEST_TOKENIZER (default gpu_assets/tokenizer, an ignored folder to carry:
# `bash bench/gpu_check.sh --prepare` fills it here). bench_search and bench_prm run on a
# random-weight SmolLM2-shaped checkpoint with those tokenizer files.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PONDER_TEST_TOKENIZER="${PONDER_TEST_TOKENIZER:-$ROOT/gpu_assets/tokenizer}"

if [ "${1:-}" = "--prepare" ]; then  # here, before the call: the tokenizer files to carry
  mkdir -p "$PONDER_TEST_TOKENIZER"
  python - "$PONDER_TEST_TOKENIZER" <<'EOF'
import os, sys, tempfile
from ponder.models.gguf import convert
from ponder.models.loader import resolve_model_path
d = tempfile.mkdtemp()
convert(resolve_model_path("smollm2"), d)
for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "chat_template.jinja", "generation_config.json"):
    if os.path.isfile(os.path.join(d, f)):
        os.replace(os.path.join(d, f), os.path.join(sys.argv[1], f))
print("tokenizer files in", sys.argv[1], sorted(os.listdir(sys.argv[1])))
EOF
  grep -qx "/gpu_assets/" .git/info/exclude 2>/dev/null || echo "/gpu_assets/" >> .git/info/exclude
  exit 0
fi

OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
exec > >(tee "$OUT/log.txt") 2>&1
declare -A RC
stage() {  # stage NAME SECONDS CMD...: runs CMD under a time limit, records its exit status
  local name=$1 limit=$2; shift 2
  echo "=== $name (at most ${limit}s) $(date +%T)" >&2  # (stdout may be a stage's JSON)
  local t0=$SECONDS
  timeout "$limit" "$@"
  RC[$name]=$?
  echo "=== $name: exit ${RC[$name]} after $((SECONDS - t0))s" >&2
}

{ nvidia-smi; python -c "import torch, transformers; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0));
print('transformers', transformers.__version__)"; nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. Build (sm_90 only: the H200; every build here also compiles sm_80).
stage build 200 bash -c "set -o pipefail; PONDER_CUDA=ON CMAKE_CUDA_ARCHITECTURES=90 pip install -q --no-deps \
  --no-build-isolation --no-index -Cbuild-dir=build/gpu -Ccmake.define.PONDER_CUDA=ON \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 . 2>&1 | tail -20 | tee '$OUT/build.txt' &&
  cd '$WORK' && python -c 'import ponder; assert ponder.cuda_available(); print(\"cuda kernels ok\")' \
  2>&1 | tee -a '$OUT/build.txt'"

# 2. Every test with a CUDA case (the device fixture's cuda params, the sync check, the
#    model families on CUDA, PRM formats), then the CPU-vs-CUDA sampler agreement.
stage tests 110 python -m pytest -q -p no:cacheprovider -k "cuda or syncs" \
  tests/kernels tests/models/test_families.py tests/engine/test_step_syncs.py tests/prm \
  > "$WORK/tests.txt" 2>&1
tail -60 "$WORK/tests.txt" > "$OUT/tests.txt"
cat "$OUT/tests.txt"

# 3. Benchmarks on the GPU, each to its own JSON (merged into bench.json at the end).
for dt in bfloat16 float16; do
  stage "attention_$dt" 40 python bench/bench_paged_attention.py --device cuda --dtype "$dt" \
    --heads 12 --kv-heads 2 --head-dim 128 --budget 0.1 --json > "$WORK/attention_$dt.json"
done
stage decode 150 python bench/bench_decode.py --device cuda --dtype bfloat16 \
  --models smollm2,qwen1.5b --batches 1,16,64 --max-tokens 64 --repeats 2 --json \
  > "$WORK/decode.json"
MODEL="$WORK/smollm2-random"
python bench/bench_decode.py --write-model smollm2 "$MODEL" --dtype bfloat16 \
  --tokenizer "$PONDER_TEST_TOKENIZER" > /dev/null
stage search 60 python bench/bench_search.py --model "$MODEL" --device cuda --dtype bfloat16 \
  --strategies best_of_n,beam --n 8 --max-steps 3 --step-tokens 32 --json > "$WORK/search.json"
stage prm 60 python bench/bench_prm.py --model "$MODEL" --device cuda --dtype bfloat16 \
  --n 8 --width 4 --max-steps 3 --step-tokens 32 --questions 4 --json > "$WORK/prm.json"

rcs=""
for k in "${!RC[@]}"; do rcs+="\"$k\": ${RC[$k]}, "; done
python - "$WORK" "$OUT/bench.json" "{${rcs%, }}" <<'EOF'
import json, os, sys
work, out, rcs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
merged = {"exit_status": rcs}
for name in ("attention_bfloat16", "attention_float16", "decode", "search", "prm"):
    path = os.path.join(work, name + ".json")
    try:
        with open(path) as f:
            merged[name] = json.load(f)
    except (OSError, ValueError) as e:
        merged[name] = {"error": str(e)}
with open(out, "w") as f:
    json.dump(merged, f, indent=1)
print(json.dumps(rcs))
EOF
echo "=== done after ${SECONDS}s"
