// Makes the shared library importable as the Python module spectral_ops._C.  Importing it runs
// the static TORCH_LIBRARY registrations; the ops are then reachable as torch.ops.spectral_ops.*.
// The module itself only reports and switches the CPU kernels' instruction set (cpu/cpu_isa.h).
#include <Python.h>
#include <c10/util/Exception.h>

#include <string>

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

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' instruction set now: 'baseline' or 'avx2'."},
    {"cpu_has_avx2", cpu_has_avx2, METH_NOARGS, "Whether the AVX2 + FMA kernels can run here."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Selects the CPU kernels' instruction set: 'baseline' or 'avx2'."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "spectral_ops compiled kernels", -1,
                                          methods};
  return PyModule_Create(&module_def);
}
}
