"""Compile Triton kernels ahead of time for a GPU architecture, with no GPU present.

The interpreter (TRITON_INTERPRET=1) runs kernels as NumPy code and cannot catch what only the
compiler rejects (layouts, dtypes, constexpr misuse, loop-carried types). Triton's compiler can
target sm_80/sm_90 on a machine without a GPU, so the tests compile every kernel specialisation
the launchers produce. Kernels are compiled in a subprocess with TRITON_INTERPRET unset, since
under the interpreter the decorated functions are not compilable objects.

A case is (kernel attribute name, {arg: type}, {constexpr arg: value}); types are Triton
signature strings ("*fp32", "i64", "fp64"); a constexpr value given as "tl.float32" is a dtype.
An argument the kernel annotates with a type (float arguments are tl.float64) must be given that
type: the launcher passes it so, and compiling it as anything else would test another kernel. A
float argument that the kernel does not annotate tl.float64 is refused: compiled Triton would
receive the launcher's Python float rounded to fp32, costing float64 kernels their accuracy.

Register spills are refused too. Each compiled kernel's PTX goes through Triton's own ptxas with
-v, which reports the registers and the bytes spilled to local memory per thread. A kernel that
spills has run out of its 255 registers: on an H100, a BFN kernel whose tile held 32 Philox
streams per thread spilled ~200 bytes at 255 registers, which also leaves room for only a few
warps per SM. The launcher's tile sizes must keep every kernel out of that. Kernels found
spilling when this check came in (TB/VarGrad rows, DB, SubTB, sampling) are listed with their
current spill sizes as known debt in their test modules, so that they cannot get worse; their
tiles need retuning with a GPU at hand to time it.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile


def compile_in_subprocess(module: str, cases: list, arch: int = 90, timeout: float = 600,
                          known_spills: dict | None = None) -> None:
    """Compile each case of `module` for sm_<arch>; raise AssertionError with the compiler's
    message on the first failure. `known_spills` {kernel name: bytes} lists kernels known to
    spill (at most that much); every other kernel must spill nothing."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    payload = json.dumps({"module": module, "cases": cases, "arch": arch,
                          "known_spills": known_spills or {}})
    result = subprocess.run([sys.executable, __file__], input=payload, text=True,
                            capture_output=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"Triton compilation failed for {module}:\n{result.stderr[-6000:]}")


def _constexpr(value):
    import triton.language as tl

    if isinstance(value, str) and value.startswith("tl."):
        return getattr(tl, value[3:])
    return value


def _main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    request = json.load(sys.stdin)
    module = importlib.import_module(request["module"])
    target = GPUTarget("cuda", request["arch"], 32)
    for name, types, constexprs in request["cases"]:
        fn = getattr(module, name)
        signature = {arg: ("constexpr" if arg in constexprs else types[arg])
                     for arg in fn.arg_names}
        for param in fn.params:
            wanted = getattr(param, "annotation_type", "")
            if signature[param.name] in ("fp16", "bf16", "fp32", "fp64") and wanted != "fp64":
                sys.stderr.write(f"{name}: float argument `{param.name}` is not annotated "
                                 "tl.float64 (a Python float reaches an unannotated argument as "
                                 "fp32, rounded)\n")
                sys.exit(1)
            if wanted and not param.is_constexpr and signature[param.name] != wanted:
                sys.stderr.write(f"{name}: `{param.name}` is annotated {wanted} in the kernel but "
                                 f"the case compiles it as {signature[param.name]}\n")
                sys.exit(1)
        consts = {(fn.arg_names.index(k),): _constexpr(v) for k, v in constexprs.items()}
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs=consts), target=target)
        except Exception as err:
            sys.stderr.write(f"{name} {constexprs}:\n{err}\n")
            sys.exit(1)
        spilled = spill_bytes(kernel.asm["ptx"], request["arch"])
        known = request["known_spills"].get(name, 0)
        if spilled > known:
            sys.stderr.write(f"{name} {constexprs}: spills {spilled} bytes per thread to local "
                             f"memory (ptxas -v; {known} known); use a smaller tile\n")
            sys.exit(1)


def spill_bytes(ptx: str, arch: int) -> int:
    """Bytes of spill stores per thread that ptxas reports for `ptx` (Triton's own ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE)
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [get_ptxas(arch).path, f"-arch={target.group(1) if target else f'sm_{arch}'}", "-v",
             source, "-o", os.path.join(folder, "kernel.cubin")],
            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed: {result.stderr[-2000:]}")
    found = re.findall(r"(\d+) bytes spill stores", result.stdout + result.stderr)
    if not found:
        raise RuntimeError(f"ptxas -v printed no spill figure: {result.stderr[-2000:]}")
    return sum(int(n) for n in found)


if __name__ == "__main__":
    _main()
