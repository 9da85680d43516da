"""Build script: pure Python everywhere, plus the CUDA extension gfn_fast._C when nvcc is there.

GFN_FAST_CUDA=auto (default) builds the extension when nvcc is found, 1 makes a missing nvcc an
error, 0 skips it. GFN_FAST_CUDA_ARCHS (default "80;90") picks the GPU architectures and MAX_JOBS
the parallel compile jobs. The extension is built by CMake with nvcc and pybind11 only: it does
not include any PyTorch header.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_wanted() -> tuple[bool, str | None]:
    mode = os.environ.get("GFN_FAST_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto"):
        raise RuntimeError(f"GFN_FAST_CUDA must be 0, 1 or auto, got {mode!r}")
    nvcc = _find_nvcc()
    if mode == "0":
        return False, nvcc
    if nvcc is None:
        if mode == "1":
            raise RuntimeError("GFN_FAST_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        print("gfn_fast: nvcc not found, building without the CUDA extension", file=sys.stderr)
        return False, None
    return True, nvcc


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        _, nvcc = _cuda_wanted()
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("GFN_FAST_CUDA_ARCHS", "80;90")
        config = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
            f"-DCMAKE_BUILD_TYPE={config}",
        ]
        if shutil.which("ninja"):
            cmake_args.append("-GNinja")
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", ext.source_dir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(
            ["cmake", "--build", ".", "--config", config, "--parallel", jobs],
            cwd=build_temp,
            check=True,
        )


build_cuda, _ = _cuda_wanted()
setup(
    packages=[
        "gfn_fast",
        "gfn_fast.bench_cases",
        "gfn_fast.cpu",
        "gfn_fast.cuda",
        "gfn_fast.demos",
        "gfn_fast.integrations",
        "gfn_fast.reference",
        "gfn_fast.kernels",
    ],
    package_dir={"gfn_fast": "gfn_fast", "gfn_fast.kernels": "kernels"},
    ext_modules=[CMakeExtension("gfn_fast._C", ROOT)] if build_cuda else [],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
