// The instruction set the CPU kernels run with, chosen once at load time and switchable for tests.
//
// The kernels are compiled twice from the same source (cpu_loop.h): once for the baseline x86-64
// (or whatever the compiler targets) and, on x86-64 with GCC or Clang, once more for AVX2 + FMA.
// The AVX2 copy is used when the running CPU has both; the build flags stay portable.
#pragma once

#include <string>

namespace spectral_ops {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1 };

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPECTRAL_OPS_AVX2_CLONES 1
#else
#define SPECTRAL_OPS_AVX2_CLONES 0
#endif

// True when this build has the AVX2 copies and the running CPU has AVX2 and FMA.
bool cpu_has_avx2();

// The ISA the kernels dispatch to now (the best available unless set_cpu_isa chose otherwise).
CpuIsa active_cpu_isa();

// Names for Python: "baseline" or "avx2".
std::string cpu_isa_name(CpuIsa isa);

// Selects an ISA by name; raises a ValueError naming the choices if it is unknown or unsupported.
void set_cpu_isa(const std::string& name);

}  // namespace spectral_ops
