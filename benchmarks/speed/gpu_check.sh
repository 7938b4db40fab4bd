#!/usr/bin/env bash
# GPU check: on a machine with one CUDA GPU, from a fresh checkout with torch and the package
# installed (pip install -e '.[test]'), run the CUDA tests and time `mergekit-yaml --cuda` merges
# of every method of ours next to MergeKit's task_arithmetic --cuda. About 4 minutes.
#
#     benchmarks/speed/gpu_check.sh OUT_DIR
#
# Writes OUT_DIR/cuda_tests.log, OUT_DIR/results.{json,md} (the markdown table) and a chart.
# Inputs: the 7B-shaped synthetic family of benchmarks.speed.run at one decoder layer (0.48 B bf16 params per
# model, ~4 GB on disk, cached under $WORK, default OUT_DIR/work). Random (DARE) scores are
# drawn on the GPU: they are a counter-based hash of (seed, position), so each chunk is computed
# where it is used, and the masks equal the CPU's bit for bit.
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 64
fi
out=$1
python=${PYTHON:-python}
root=$(cd "$(dirname "$0")/../.." && pwd)

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "$0: no CUDA device is visible to torch ($("$python" -c 'import torch; print(torch.__version__)')); nothing run" >&2
  exit 69
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"

echo "== CUDA tests"
tests_status=0
"$python" -m pytest -q -p no:cacheprovider -k cuda tests 2>&1 | tee "$out/cuda_tests.log" || tests_status=$?

echo "== mergekit-yaml --cuda merges"
ours=$("$python" -c "from mergekit_cabs.methods import METHOD_TABLE; print(','.join(i.name for i in METHOD_TABLE))")
"$python" -m benchmarks.speed.run --cuda --layers 1 --large-vocab "" --repeats 1 --focus-repeats 1 \
  --methods "task_arithmetic,$ours" --work "${WORK:-$out/work}" --out "$out" \
  --note "benchmarks/speed/gpu_check.sh; CUDA tests exit status $tests_status"

echo "== table: $out/results.md; CUDA tests: $out/cuda_tests.log (exit status $tests_status)"
exit "$tests_status"
