// Makes the shared library importable as the Python module spectral_ops._C.  Importing it runs
// the static TORCH_LIBRARY registrations; the ops are then reachable as torch.ops.spectral_ops.*.
// The module itself reports and switches the CPU kernels' instruction set (cpu/cpu_isa.h), and
// shows the C++ side of what Python defines too (the constants of constants.def as C++ sees them,
// and the codes the kernels give the alignment_loss kinds), for tests/test_constants.py.
#include <Python.h>
#include <c10/util/Exception.h>

#include <string>

#include "common/checks.h"
#include "common/macros.h"
#include "cpu/cpu_isa.h"

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(spectral_ops::cpu_isa_name(spectral_ops::active_cpu_isa()).c_str());
}

PyObject* cpu_has_avx2(PyObject*, PyObject*) { return PyBool_FromLong(spectral_ops::cpu_has_avx2()); }

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;  // not a str: PyUnicode_AsUTF8 has set a TypeError
  try {
    spectral_ops::set_cpu_isa(name);
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// A dict {name: value} of the shared constants, read through the C++ names the kernels use.
PyObject* constants(PyObject*, PyObject*) {
  return Py_BuildValue("{s:i,s:d,s:d}", "MAX_CUDA_K", spectral_ops::kMaxCudaK, "RANK_TOLERANCE_FLOAT32",
                       static_cast<double>(spectral_ops::rank_tolerance<float>()), "RANK_TOLERANCE_FLOAT64",
                       spectral_ops::rank_tolerance<double>());
}

// The integer code the kernels use for a kind name (checks.h), or ValueError as the ops raise it.
template <int (*parse)(const std::string&)>
PyObject* kind_code(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  try {
    return PyLong_FromLong(parse(name));
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' instruction set now: 'baseline' or 'avx2'."},
    {"cpu_has_avx2", cpu_has_avx2, METH_NOARGS, "Whether the AVX2 + FMA kernels can run here."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Selects the CPU kernels' instruction set: 'baseline' or 'avx2'."},
    {"constants", constants, METH_NOARGS, "The constants of constants.def as the C++ kernels see them."},
    {"loss_kind_code", kind_code<spectral_ops::parse_loss_kind>, METH_O,
     "The kernels' integer code for an alignment_loss kind (ValueError for an unknown one)."},
    {"weight_kind_code", kind_code<spectral_ops::parse_weight_kind>, METH_O,
     "The kernels' integer code for an alignment_loss weighting (ValueError for an unknown one)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "spectral_ops compiled kernels", -1, methods};
  return PyModule_Create(&module_def);
}
}
