#!/usr/bin/env bash
# Compile and link the CUDA kernels of spectral_ops for sm_80 and sm_90 (no GPU needed) and check
# that the built library registers a CUDA kernel for every op.
#
#   .ci/build_cuda.sh [BUILD_DIR]
#
# - venv: $SPECTRAL_OPS_CUDA_VENV (default /tmp/spectral_ops_cuda_venv) with torch==2.14.1 (a
#   CUDA 13.0 build), reused when it is already valid, rebuilt otherwise;
# - build: setup.py build_ext with FORCE_CUDA=1 into BUILD_DIR (default: a fresh temporary
#   folder), so the CPU build in the working tree is left alone;
# - checks: cuobjdump lists sm_80 and sm_90 SASS; the library loads and every op has CUDA and CPU
#   kernels in the dispatcher.  Any failure exits non-zero.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPECTRAL_OPS_CUDA_VENV:-/tmp/spectral_ops_cuda_venv}"
BUILD_DIR="${1:-$(mktemp -d /tmp/spectral_ops_cuda_build.XXXXXX)}"
TORCH_VERSION="2.14.1"
OPS="orthonormalize orthonormalize_backward ritz_step alignment_loss alignment_loss_forward alignment_loss_backward"

fail() { echo "build_cuda: FAILED: $*" >&2; exit 1; }
start=$(date +%s)

venv_is_valid() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
import ninja, setuptools, wheel, numpy  # noqa: F401
import torch
ok = torch.__version__.split("+")[0] == sys.argv[1] and (torch.version.cuda or "").startswith("13.")
sys.exit(0 if ok else 1)
PY
}

if venv_is_valid; then
  echo "build_cuda: reusing $VENV"
else
  echo "build_cuda: creating $VENV (torch==$TORCH_VERSION, CUDA 13.0)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" numpy ninja setuptools wheel
  venv_is_valid || fail "$VENV does not hold a CUDA 13 build of torch $TORCH_VERSION"
fi

NVCC="$(command -v nvcc)" || fail "nvcc not on PATH"
# The toolkit root: nvcc may be a symlink or a wrapper script, so ask nvcc where it lives.
TOP="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
if [ -n "$TOP" ] && [ -f "$TOP/include/cuda_runtime.h" ]; then
  export CUDA_HOME="$(cd "$TOP" && pwd -P)"
else
  export CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
fi
[ -f "$CUDA_HOME/include/cuda_runtime.h" ] || fail "cannot find the CUDA toolkit root (tried $CUDA_HOME)"
NVIDIA_INCLUDE="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))')"
[ -d "$NVIDIA_INCLUDE" ] || fail "missing $NVIDIA_INCLUDE (the CUDA headers of the pip wheels)"
export CPATH="$NVIDIA_INCLUDE${CPATH:+:$CPATH}"
export TORCH_CUDA_ARCH_LIST="8.0;9.0"
export FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
echo "build_cuda: CUDA_HOME=$CUDA_HOME, build dir $BUILD_DIR, MAX_JOBS=$MAX_JOBS"

cd "$REPO"
"$VENV/bin/python" setup.py --quiet build_ext --build-lib "$BUILD_DIR/lib" --build-temp "$BUILD_DIR/tmp" \
  || fail "CUDA build"
SO="$(find "$BUILD_DIR/lib" -name '_C*.so' | head -n 1)"
[ -n "$SO" ] || fail "no _C*.so under $BUILD_DIR/lib"

# cuobjdump: on PATH, in the toolkit, or the copy shipped in the triton wheel (a torch dependency).
CUOBJDUMP="$(command -v cuobjdump || true)"
[ -n "$CUOBJDUMP" ] || [ ! -x "$CUDA_HOME/bin/cuobjdump" ] || CUOBJDUMP="$CUDA_HOME/bin/cuobjdump"
[ -n "$CUOBJDUMP" ] || CUOBJDUMP="$("$VENV/bin/python" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)"
[ -n "$CUOBJDUMP" ] && [ -x "$CUOBJDUMP" ] || fail "cuobjdump not found (PATH, $CUDA_HOME/bin, or the triton wheel)"
ELF="$("$CUOBJDUMP" --list-elf "$SO")" || fail "cuobjdump --list-elf $SO"
echo "$ELF"
for arch in sm_80 sm_90; do
  grep -q "$arch" <<<"$ELF" || fail "$SO has no $arch code"
done

"$VENV/bin/python" - "$SO" $OPS <<'PY' || fail "dispatcher check"
import sys
import torch
so, ops = sys.argv[1], sys.argv[2:]
torch.ops.load_library(so)
missing = [f"{op}:{key}" for op in ops for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"spectral_ops::{op}", key)]
if missing:
    sys.exit(f"no kernel registered for {missing}")
print(f"build_cuda: {len(ops)} ops have CPU and CUDA kernels in {so}")
PY

echo "build_cuda: OK in $(( $(date +%s) - start )) s"
