// Run-time choice of the CPU kernels' instruction set (see cpu_isa.h).
#include "cpu/cpu_isa.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace spectral_ops {

bool cpu_has_avx2() {
#if SPECTRAL_OPS_AVX2_CLONES
  static const bool has = [] {
    __builtin_cpu_init();  // harmless if libgcc's constructor already ran; needed if it has not
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

namespace {
std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(cpu_has_avx2() ? CpuIsa::kAvx2 : CpuIsa::kBaseline)};
  return isa;
}
}  // namespace

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active_isa().load(std::memory_order_relaxed)); }

std::string cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::kAvx2 ? "avx2" : "baseline"; }

void set_cpu_isa(const std::string& name) {
  if (name == "baseline") {
    active_isa().store(static_cast<int>(CpuIsa::kBaseline));
    return;
  }
  TORCH_CHECK_VALUE(name == "avx2", "cpu isa must be 'baseline' or 'avx2', got '", name, "'");
  TORCH_CHECK_VALUE(cpu_has_avx2(),
                    "cpu isa 'avx2' is not available: this CPU lacks AVX2/FMA or the build has no AVX2 kernels");
  active_isa().store(static_cast<int>(CpuIsa::kAvx2));
}

}  // namespace spectral_ops
