"""Build spectral_ops._C: the C++ CPU kernels always, plus the CUDA kernels when wanted.

CUDA sources are compiled when FORCE_CUDA=1, or when torch is a CUDA build and nvcc is found.
torch.cuda.is_available() is deliberately not consulted: CUDA code must compile on machines
without a GPU.  Build with `pip install --no-build-isolation .` so the extension links against
the torch that is already installed.
"""

import glob
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    import torch

    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    """One extension, as in pytorch/extension-cpp: CPU sources always, CUDA sources when wanted."""
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + _sources("csrc/cpu/*.cpp")
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        depends=_sources("csrc/common/*.h")
        + _sources("csrc/cpu/*.h")
        + _sources("csrc/cuda/*.cuh")
        + ["spectral_ops/ops/constants.def"],
    )
    if _want_cuda():
        extra_compile_args["nvcc"] = ["-O3", "-DSPECTRAL_OPS_WITH_CUDA"]
        extra_compile_args["cxx"].append("-DSPECTRAL_OPS_WITH_CUDA")
        return [
            cpp_extension.CUDAExtension(
                "spectral_ops._C", sources + _sources("csrc/cuda/*.cu"), extra_compile_args=extra_compile_args, **kwargs
            )
        ]
    return [cpp_extension.CppExtension("spectral_ops._C", sources, extra_compile_args=extra_compile_args, **kwargs)]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
