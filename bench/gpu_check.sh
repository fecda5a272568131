#!/usr/bin/env bash
# One prepared GPU check for an H100/H200 machine, within 10 minutes:
#   1. build spectral_ops in place with the CUDA kernels (FORCE_CUDA=1, sm_90 only, to save time);
#   2. run the op tests on CUDA tensors (tests/test_ops.py: cuda backend; tests/test_ops_triton.py:
#      Triton compiled for the GPU, including torch.compile and the full opcheck);
#   3. run the op benchmarks on the GPU (cuda and triton vs eager CUDA torch, triton/cuda ratio);
#   4. run top-k to convergence on the GPU (bench_topk.py sections 5-6: krylov, power, dense
#      against per-sample ARPACK and torch.lobpcg, and the batching ceiling), into topk_cuda.md.
#
#   bench/gpu_check.sh OUTDIR
#
# Needs a Python ($PYTHON, default python3) with a CUDA build of torch, triton, pytest,
# pytest-benchmark, scipy, ninja and nvcc on PATH (the machine may have no network).  Writes
# OUTDIR/gpu_check.log, OUTDIR/tests.xml, OUTDIR/bench_cuda.json, OUTDIR/topk_cuda.md and
# OUTDIR/summary.txt.
set -uo pipefail

OUT="${1:?usage: bench/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
status=0
cd "$REPO"
exec > >(tee -a "$LOG") 2>&1

step() { echo; echo "=== $* ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PYTHON" - <<'PY' || { echo "gpu_check: torch with a usable GPU is required"; exit 2; }
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "no GPU visible to torch"
print(torch.cuda.get_device_name())
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed: the triton tests will skip")
PY

step "build with CUDA (sm_90)"
NVCC="$(command -v nvcc || true)"
if [ -n "$NVCC" ]; then
  TOP="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [ -n "$TOP" ] && export CUDA_HOME="${CUDA_HOME:-$(cd "$TOP" && pwd -P)}"
fi
NVIDIA_INCLUDE="$("$PYTHON" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))' 2>/dev/null || true)"
[ -d "$NVIDIA_INCLUDE" ] && export CPATH="$NVIDIA_INCLUDE${CPATH:+:$CPATH}"
start=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="${MAX_JOBS:-8}" \
  timeout 300 "$PYTHON" setup.py --quiet build_ext --inplace || { echo "gpu_check: CUDA build FAILED"; exit 3; }
echo "build: $(( $(date +%s) - start )) s"
"$PYTHON" -c 'from spectral_ops import ops; print("backends:", ops.available_backends("cuda"))'

step "tests on the GPU"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_ops_triton.py \
  -k "cuda or triton or bad or selection" --junitxml="$OUT/tests.xml" || status=1

step "benchmarks on the GPU"
timeout 200 "$PYTHON" -m pytest -q -p no:cacheprovider bench/bench_ops.py --device cuda \
  --benchmark-min-rounds=20 --benchmark-max-time=0.2 --benchmark-json="$OUT/bench_cuda.json" || status=1

step "top-k to convergence on the GPU (krylov against per-sample ARPACK)"
BENCH_DEVICE=cuda BENCH_ROUNDS=3 timeout 180 "$PYTHON" -m pytest -q -s -p no:cacheprovider bench/bench_topk.py \
  -k "to_convergence or batching_ceiling" || status=1
cp bench/results/topk_cuda.md bench/results/topk_cuda.json "$OUT"/ 2>/dev/null || true

step "done, status $status"
{
  echo "status=$status"
  grep -E "passed|failed|error" "$LOG" | tail -n 3
  sed -n '/ratios measured in this run/,$p' "$LOG"
  grep -E "^- (target|batching ceiling|products)" "$OUT/topk_cuda.md" 2>/dev/null
} > "$OUT/summary.txt"
exit $status
