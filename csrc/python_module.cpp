// Makes the shared library importable as the Python module spectral_ops._C.  Importing it runs
// the static TORCH_LIBRARY registrations; the ops are then reachable as torch.ops.spectral_ops.*.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "spectral_ops compiled kernels", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
