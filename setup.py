"""Build of the compiled kernels (metadata lives in pyproject.toml).

Always: ``rnnfast._C``, the C++ CPU kernels (csrc/cpu). When torch has CUDA and nvcc is found
(``CUDA_HOME``): also ``rnnfast._C_cuda`` from csrc/cuda; otherwise that part is skipped.

Install with torch already present: ``pip install -e ".[test]" --no-build-isolation``.

Environment:
    RNNFAST_SKIP_CUDA_BUILD=1   never build the CUDA kernels
    TORCH_CUDA_ARCH_LIST        CUDA targets (default "9.0+PTX": sm_90 code + PTX for newer GPUs)
    MAX_JOBS                    parallel compile jobs (read by torch's ninja build)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent


def _ext_module():
    # rnnfast/_ext.py holds the compiler flags shared with the just-in-time build; load that file alone
    # (importing the package would need it built already).
    spec = importlib.util.spec_from_file_location("_rnnfast_ext", ROOT / "rnnfast" / "_ext.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(paths):
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def _want_cuda() -> tuple[bool, str]:
    if os.environ.get("RNNFAST_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        return False, "RNNFAST_SKIP_CUDA_BUILD is set"
    if not torch.version.cuda:
        return False, "torch is a CPU-only build"
    if CUDA_HOME is None:
        return False, "nvcc not found (set CUDA_HOME)"
    if not list((ROOT / "csrc" / "cuda").glob("*.cu")):
        return False, "no CUDA sources in csrc/cuda"
    return True, f"CUDA {torch.version.cuda}, nvcc from {CUDA_HOME}"


def extensions():
    ext = _ext_module()
    mods = [
        CppExtension(
            "rnnfast._C",
            _rel(ext.cpu_sources(ROOT / "csrc")),
            extra_compile_args={"cxx": ext.CXX_FLAGS},
            extra_link_args=ext.LD_FLAGS,
        )
    ]
    cuda, why = _want_cuda()
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
        cuda_dir = ROOT / "csrc" / "cuda"
        mods.append(
            CUDAExtension(
                "rnnfast._C_cuda",
                _rel(list(cuda_dir.glob("*.cu")) + list(cuda_dir.glob("*.cpp"))),
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
            )
        )
    print(f"rnnfast: CUDA kernels {'built' if cuda else 'skipped'}: {why}", file=sys.stderr)
    return mods


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
