"""Builds ssdfast._C with torch.utils.cpp_extension (ninja).

C++ CPU kernels are always built. CUDA kernels are added when a CUDA toolkit is found and either a
GPU is visible or FORCE_CUDA=1 (compile and link without a GPU, as CI does); USE_CUDA=0 opts out.

    pip install -e . --no-build-isolation                    # CPU (+ CUDA if a GPU is visible)
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" pip install -e . --no-build-isolation
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _set_cuda_home() -> None:
    """Point CUDA_HOME at the real toolkit before torch guesses.

    torch.utils.cpp_extension reads CUDA_HOME when it is imported and otherwise derives it from
    `which nvcc`; on our machines /usr/local/bin/nvcc is a wrapper, which makes torch guess
    /usr/local (wrong). /usr/local/cuda is the conventional toolkit location.
    """
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if (Path("/usr/local/cuda") / "bin" / "nvcc").exists():
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


_set_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is set)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> bool:
    if os.environ.get("USE_CUDA", "1") == "0":
        return False
    if CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"


def _pip_cuda_header_flags() -> list[str]:
    """Flags that let the compiler find CUDA library headers (cusparse.h, ...) shipped in pip packages.

    torch's CUDA headers include them; a bare toolkit (like ours) may not have them, but the
    nvidia-* wheels that the CUDA build of torch depends on do (site-packages/nvidia/*/include).
    Those folders also carry their own CCCL/runtime headers of a newer CUDA, which must not shadow
    the toolkit's: `-idirafter` searches them last, only for what the toolkit lacks.
    """
    site_packages = Path(torch.__file__).resolve().parent.parent
    dirs = sorted(str(p) for p in site_packages.glob("nvidia/*/include") if p.is_dir())
    return [flag for d in dirs for flag in ("-idirafter", d)]


def _extension():
    sources = ["csrc/ssdfast.cpp", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))]
    # -ffp-contract=off: no fused multiply-add on any host (x86 with FMA, Arm), so the CPU kernels
    # stay bit-identical to the CUDA kernels (built with --fmad=false) and to the PyTorch reference.
    extra = {"cxx": ["-O3", "-ffp-contract=off"]}
    if _want_cuda():
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        # --fmad=false: no fused multiply-add contraction, so IoUs are bit-identical to the CPU kernel
        # and to the PyTorch reference (matching decisions at IoU ties then agree exactly).
        header_flags = _pip_cuda_header_flags()
        extra["cxx"] += header_flags
        extra["nvcc"] = ["-O3", "--fmad=false", "-lineinfo"] + [
            f"-Xcompiler=-idirafter,{d}" for d in header_flags[1::2]
        ]
        print(f"ssdfast: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME})")
        return CUDAExtension("ssdfast._C", sources, extra_compile_args=extra)
    print("ssdfast: building CPU kernels only (no CUDA toolkit, no GPU and FORCE_CUDA unset, or USE_CUDA=0)")
    return CppExtension("ssdfast._C", sources, extra_compile_args=extra)


setup(
    packages=find_packages(include=["ssdfast", "ssdfast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
