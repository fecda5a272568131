#!/usr/bin/env bash
# spectral_ops on a GPU, in one command and under 6 minutes on an H100/H200:
#   1. environment (nvidia-smi, torch, triton);
#   2. build in place with the CUDA kernels (FORCE_CUDA=1, sm_90 only, MAX_JOBS=16); meanwhile,
#      every entry point on cpu and cuda (tests/test_device_entry_points.py, on the triton
#      backend while the kernels build) and the device-cleanliness scan (tests/test_device_clean.py);
#   3. host syncs of SpectralRegularizer's computed and skipped calls (bench/gpu_syncs.py);
#   4. the fused ops on the cuda and triton backends (tests/test_ops.py, tests/test_ops_triton.py);
#   5. bench/bench_gpu.py: a power iteration / krylov step against fwd+bwd, the regularized
#      generator step against the plain one, computed and skipped calls, krylov against
#      per-sample ARPACK at B=16/64, d=128/512 (bench/results/gpu.md);
#   6. bench/bench_ops.py --device cuda: cuda and triton against eager CUDA torch;
#   7. bench/bench_topk.py sections 5-6 on CUDA (krylov, power, dense against per-sample ARPACK
#      and torch.lobpcg at B=16, d=128; the batching ceiling), into topk_cuda.md;
#   8. if time is left: the entry points again, now on the built cuda kernels.
# (tests/test_topk.py, test_krylov.py and test_regularizer.py have no device switch: they are
# CPU tests, not run here.)
#
#   bench/gpu_check.sh OUTDIR
#
# Every step has its own timeout, cut to what is left of GPU_CHECK_BUDGET seconds (default 380)
# for the whole run, so one hang cannot eat the run; a step that fails or times out is recorded
# and the next one runs (the tail is skipped when the budget is spent: summary.txt says so).  Writes 7 files into OUTDIR: gpu_check.log, summary.txt (each step's
# outcome, the pass/fail counts, the sync counts, every ratio table), tests.xml (junit, all test
# steps), gpu.md, gpu_iteration.md, topk_cuda.md, bench_ops.json.
#
# Needs a Python ($PYTHON, default python3) with a CUDA build of torch, triton, pytest,
# pytest-benchmark and scipy; ninja and nvcc on PATH (no network needed).
#
# GPU_CHECK_DRY=1: a smoke test without a GPU: no nvidia-smi, no CUDA build, the benchmarks on the
# CPU with tiny sizes (BENCH_DEVICE=cpu BENCH_TINY=1), bench_topk only collected; the tests run
# as they are (their cuda halves skip).
set -uo pipefail
export PYTHONUNBUFFERED=1

OUT="${1:?usage: bench/gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY:-0}"
BUDGET="${GPU_CHECK_BUDGET:-380}"
LOG="$OUT/gpu_check.log"
WORK="$(mktemp -d)"
START=$(date +%s)
status=0
STEPS=()
cd "$REPO"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

if [ "$DRY" = 1 ]; then
  BENCH_ENV=(BENCH_DEVICE=cpu BENCH_TINY=1 BENCH_ROUNDS=2)
  OPS_DEVICE=cpu
  GPU_TABLE=gpu_tiny_cpu
else
  BENCH_ENV=(BENCH_DEVICE=cuda BENCH_ROUNDS=3)
  OPS_DEVICE=cuda
  GPU_TABLE=gpu
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

record() {  # record NAME RC SECONDS TIMEOUT: one line of the steps list; a failure sets status
  local outcome
  case $2 in
    0) outcome="ok" ;;
    124|137) outcome="TIMEOUT after ${4}s"; status=1 ;;
    *) outcome="FAILED (exit $2)"; status=1 ;;
  esac
  STEPS+=("$1: $outcome in ${3}s")
}

limit() {  # the timeout for a step: min(CAP, time left - 5); prints nothing and fails below 10 s
  local t=$(( $(left) - 5 ))
  (( t > $1 )) && t=$1
  (( t >= 10 )) && echo "$t"
}

run() {  # run NAME CAP COMMAND...: COMMAND under its timeout, in the foreground
  local name="$1" t s rc
  if ! t=$(limit "$2"); then
    STEPS+=("$name: SKIPPED (no time left)"); status=1; return 0
  fi
  shift 2
  echo
  echo "=== $name (timeout ${t}s, $(date +%T), $(( $(date +%s) - START ))s into the run)"
  s=$(date +%s)
  timeout -k 5 "$t" "$@"
  rc=$?
  record "$name" $rc $(( $(date +%s) - s )) "$t"
}

BG_PID=""
background() {  # background NAME CAP COMMAND...: COMMAND under its timeout, output kept aside
  BG_NAME="$1"
  BG_LIMIT=$(limit "$2") || BG_LIMIT=10
  shift 2
  ( s=$(date +%s); timeout -k 5 "$BG_LIMIT" "$@" > "$WORK/background.log" 2>&1
    echo "$? $(( $(date +%s) - s ))" > "$WORK/background.rc" ) &
  BG_PID=$!
}

background_wait() {
  [ -n "$BG_PID" ] || return 0
  wait "$BG_PID"
  echo
  echo "=== $BG_NAME (ran during the build; timeout ${BG_LIMIT}s)"
  cat "$WORK/background.log"
  local rc took
  read -r rc took < "$WORK/background.rc"
  record "$BG_NAME" "$rc" "$took" "$BG_LIMIT"
  BG_PID=""
}

ENTRY_TESTS=(tests/test_device_entry_points.py tests/test_device_clean.py -rfEs)

# ---- 1. environment
echo "=== environment ($(date +%T))"
[ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PYTHON" - "$DRY" <<'PY' || { echo "gpu_check: torch with a usable GPU is required"; STEPS+=("environment: FAILED"); status=2; }
import sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton not installed: the triton tests will skip")
if sys.argv[1] != "1":
    assert torch.cuda.is_available(), "no GPU visible to torch"
    print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
PY
if (( status == 2 )); then
  echo "status=2 (no usable GPU)" > "$OUT/summary.txt"
  exit 2
fi

# ---- 2. build, and meanwhile the entry points
ENTRY_NAME="tests: every entry point on cpu and cuda, device cleanliness"
if [ "$DRY" = 1 ]; then
  STEPS+=("build: skipped (GPU_CHECK_DRY=1)")
  run "$ENTRY_NAME" 150 "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$WORK/entry.xml" "${ENTRY_TESTS[@]}"
else
  NVCC="$(command -v nvcc || true)"
  if [ -n "$NVCC" ]; then
    TOP="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
    [ -n "$TOP" ] && export CUDA_HOME="${CUDA_HOME:-$(cd "$TOP" && pwd -P)}"
  fi
  NVIDIA_INCLUDE="$("$PYTHON" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))' 2>/dev/null || true)"
  [ -d "$NVIDIA_INCLUDE" ] && export CPATH="$NVIDIA_INCLUDE${CPATH:+:$CPATH}"
  # the tests import spectral_ops before the build writes spectral_ops/_C: they run on triton / reference
  background "$ENTRY_NAME (before the CUDA kernels: triton backend)" 200 \
    "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$WORK/entry.xml" "${ENTRY_TESTS[@]}"
  run "build with CUDA (sm_90, MAX_JOBS=${MAX_JOBS:-16})" 200 \
    env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="${MAX_JOBS:-16}" "$PYTHON" setup.py --quiet build_ext --inplace
  background_wait
fi
"$PYTHON" -c 'from spectral_ops import ops; import torch; d = "cuda" if torch.cuda.is_available() else "cpu"; print("backends on", d, ops.available_backends(d))' \
  2>&1 | tee "$WORK/backends.txt"

# ---- 3. the rows that matter to users first: the regularized step against a plain one, the
# computed and skipped calls, krylov against per-sample ARPACK
run "bench/bench_gpu.py: steps, calls, krylov vs ARPACK (${BENCH_ENV[*]})" 150 \
  env "${BENCH_ENV[@]}" "$PYTHON" -m pytest -q -s -p no:cacheprovider bench/bench_gpu.py \
  -k "generator_step or regularizer_calls or krylov_vs_arpack"

# ---- 4. host syncs
run "host syncs (bench/gpu_syncs.py)" 45 env "${BENCH_ENV[@]}" "$PYTHON" bench/gpu_syncs.py

# ---- 5. op tests (test_cuda_rejects_large_k alone, after the others: it crashed the process once)
OPS_FILTER="(cuda or triton or bad or selection) and not test_cuda_rejects_large_k"
# without a GPU the triton tests run under the interpreter in a subprocess (minutes on a CPU): not in a dry run
[ "$DRY" = 1 ] && OPS_FILTER="($OPS_FILTER) and not under_interpreter"
run "tests: fused ops on the cuda and triton backends" 80 \
  "$PYTHON" -m pytest -q -rfE -p no:cacheprovider --junitxml="$WORK/ops.xml" tests/test_ops.py tests/test_ops_triton.py \
  -k "$OPS_FILTER"
run "tests: the cuda kernels refuse k > 32 (own process)" 30 \
  "$PYTHON" -X faulthandler -m pytest -q -rfE -p no:cacheprovider tests/test_ops.py -k test_cuda_rejects_large_k

# ---- 6. top-k to convergence and the batching ceiling
if [ "$DRY" = 1 ]; then  # on a CPU these are bench/results/topk.md's runs (long); only check they load
  run "bench/bench_topk.py sections 5-6 (collected only)" 60 \
    env BENCH_DEVICE=cpu "$PYTHON" -m pytest -q --collect-only -p no:cacheprovider bench/bench_topk.py \
    -k "to_convergence or batching_ceiling"
else
  run "bench/bench_topk.py sections 5-6 on CUDA" 90 \
    env BENCH_DEVICE=cuda BENCH_ROUNDS=2 BENCH_POWER_CAP=300 "$PYTHON" -m pytest -q -s -p no:cacheprovider \
    bench/bench_topk.py -k "to_convergence or batching_ceiling"
fi

# ---- 7. one iteration against fwd+bwd, then the fused ops against eager CUDA torch, as time allows
run "bench/bench_gpu.py: iteration cost (${BENCH_ENV[*]})" 80 \
  env "${BENCH_ENV[@]}" BENCH_GPU_TABLE="${GPU_TABLE}_iteration" "$PYTHON" -m pytest -q -s -p no:cacheprovider bench/bench_gpu.py -k "iteration_cost"
if [ "$DRY" = 1 ]; then
  OPS_TIMING=(--benchmark-disable)  # each case once: Python errors, not timings
else
  OPS_TIMING=(--benchmark-min-rounds=10 --benchmark-max-time=0.1)
fi
run "bench/bench_ops.py --device $OPS_DEVICE" 60 \
  "$PYTHON" -m pytest -q -p no:cacheprovider bench/bench_ops.py --device "$OPS_DEVICE" "${OPS_TIMING[@]}" \
  --benchmark-json="$OUT/bench_ops.json" -k "spectral_penalty or jacobian_topk"

# ---- 8. the entry points on the built kernels, if time is left
if [ "$DRY" != 1 ] && (( $(left) >= 70 )); then
  run "tests: every entry point again, on the built cuda kernels" 90 \
    "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$WORK/entry_cuda.xml" tests/test_device_entry_points.py \
    -k cuda
fi

# ---- outputs
"$PYTHON" - "$OUT/tests.xml" "$WORK"/entry.xml "$WORK"/ops.xml "$WORK"/entry_cuda.xml <<'PY' || true
import sys
import xml.etree.ElementTree as ET
merged = ET.Element("testsuites")
for path in sys.argv[2:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue  # a step cut short writes no junit
    merged.extend([root] if root.tag == "testsuite" else list(root))
ET.ElementTree(merged).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
PY
for f in "bench/results/$GPU_TABLE.md" "bench/results/${GPU_TABLE}_iteration.md"; do
  [ -f "$f" ] && cp "$f" "$OUT/${f##*/}"
done
if [ "$DRY" = 1 ]; then  # a dry run leaves the results as they were
  rm -f bench/results/"$GPU_TABLE".{md,json} bench/results/"${GPU_TABLE}"_iteration.{md,json}
else
  cp bench/results/topk_cuda.md "$OUT"/ 2>/dev/null || true
fi

echo
echo "=== done in $(( $(date +%s) - START ))s, status $status"
{
  echo "status=$status ($(( $(date +%s) - START ))s; GPU_CHECK_DRY=$DRY)"
  echo
  echo "## steps"
  printf '%s\n' "${STEPS[@]}"
  cat "$WORK/backends.txt"
  echo
  echo "## pytest outcomes (in step order)"
  grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected).* in [0-9.]+s" "$LOG" || true
  grep -E "^(FAILED|ERROR) " "$LOG" || true
  echo
  echo "## host syncs"
  grep -E "^syncs: " "$LOG" || true
  echo
  echo "## bench_gpu.py ($GPU_TABLE.md)"
  cat "$OUT/$GPU_TABLE.md" 2>/dev/null || echo "(not written)"
  cat "$OUT/${GPU_TABLE}_iteration.md" 2>/dev/null || echo "(iteration cost not written)"
  echo
  echo "## bench_ops.py ratios"
  sed -n '/ratios measured in this run/,/^x = speedup/p' "$LOG"
  echo
  echo "## bench_topk.py sections 5-6 (topk_cuda.md)"
  grep -E "^- (target|batching ceiling|products|spectrum)" "$OUT/topk_cuda.md" 2>/dev/null \
    || echo "(not written)"
  grep -E "^\| (to tol|batching)" "$OUT/topk_cuda.md" 2>/dev/null || true
} > "$OUT/summary.txt"
rm -rf "$WORK"
exit $status
