"""Kernel backends that live in Python (Triton).  The C++/CUDA kernels are in spectral_ops._C."""
