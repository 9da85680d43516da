"""The one place that decides which implementation runs.

Backends: "cuda" (CUDA C++ extension gfn_fast._C), "triton" (gfn_fast.kernels), "numba"
(gfn_fast.cpu), "reference" (gfn_fast.reference, plain PyTorch autograd). Default order on CUDA
tensors: cuda -> triton -> reference; on CPU tensors: numba -> reference. Triton also runs CPU
tensors when TRITON_INTERPRET=1 (how CI checks the kernels), but is never picked automatically
for them. An explicit ``backend=`` argument, else GFN_FAST_BACKEND, overrides: a requested backend
that cannot run raises; an automatic choice that falls back warns once.
"""

import functools
import importlib
import os
import sys
import warnings

import torch

NAMES = ("cuda", "triton", "numba", "reference")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("numba", "reference")}
_MODULE_ROOT = {"cuda": "gfn_fast.cuda", "triton": "gfn_fast.kernels", "numba": "gfn_fast.cpu",
                "reference": "gfn_fast.reference"}
_warned: set = set()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _import_status(name: str) -> tuple[bool, str]:
    """Whether the backend's software is importable (independent of devices), and why not."""
    try:
        if name == "cuda":
            importlib.import_module("gfn_fast._C")
        elif name == "triton":
            importlib.import_module("triton")
        elif name == "numba":
            importlib.import_module("numba")
    except ImportError as err:
        if name == "cuda":
            return False, ("the CUDA extension gfn_fast._C was not built (no nvcc at install "
                           f"time, or GFN_FAST_CUDA=0): {err}")
        return False, f"{name} is not importable: {err}"
    return True, ""


def _device_status(name: str, device_type: str) -> tuple[bool, str]:
    ok, why = _import_status(name)
    if not ok:
        return ok, why
    if name == "reference":
        return True, ""
    if name == "numba":
        return (True, "") if device_type == "cpu" else (False, "numba runs on CPU tensors only")
    if name == "cuda":
        if device_type != "cuda":
            return False, "the CUDA extension runs on CUDA tensors only"
        return True, ""
    if device_type == "cuda":
        return True, ""
    if device_type == "cpu" and triton_interpret():
        return True, ""
    return False, "triton runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1"


def backends() -> dict:
    """For each backend: whether it can run now, on which devices, and why not."""
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {}
    for name in NAMES:
        usable = [dt for dt in device_types if _device_status(name, dt)[0]]
        reasons = {dt: _device_status(name, dt)[1] for dt in device_types if dt not in usable}
        if not torch.cuda.is_available() and name in ("cuda", "triton"):
            reasons.setdefault("cuda", "no CUDA device is visible to torch")
        report[name] = {"available": bool(usable), "devices": usable, "why_not": reasons}
    return report


def _constant_result(fn):
    """torch.compiler.assume_constant_result(fn), without importing torch._dynamo where nothing
    has yet: that import is ~1.2 s, half of `import gfn_fast` on a 2-core VM, and only
    torch.compile needs it. The decorator does nothing but set this attribute, which Dynamo
    reads when it traces a call (tests/test_ops.py checks that against the installed torch)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_constant_result
def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The backend name that runs `op` on tensors of `device`. A function of its arguments and
    of the environment only, so torch.compile evaluates it once while tracing."""
    requested = backend if backend is not None else os.environ.get("GFN_FAST_BACKEND") or None
    device_type = device.type
    if requested is not None:
        if requested not in NAMES:
            raise ValueError(f"gfn_fast.{op}: `backend` must be one of {list(NAMES)} or None, "
                             f"got {requested!r}")
        ok, why = _device_status(requested, device_type)
        if not ok:
            raise RuntimeError(f"gfn_fast.{op}: backend {requested!r} cannot run on "
                               f"{device_type} tensors: {why}")
        return requested
    order = _AUTO_ORDER.get(device_type, ("reference",))
    skipped = []
    for name in order:
        ok, why = _device_status(name, device_type)
        if ok:
            if skipped and (device_type, name) not in _warned:
                _warned.add((device_type, name))
                warnings.warn(f"gfn_fast: using the {name!r} backend on {device_type} tensors; "
                              + "; ".join(skipped), RuntimeWarning, stacklevel=3)
            return name
        skipped.append(f"{name} unavailable ({why})")
    raise RuntimeError(f"gfn_fast.{op}: no backend can run on {device_type} tensors")


_MODULES: dict = {}


def module(backend: str, family: str):
    """The implementation module of an op family ("balance", ...) for a backend. Imported once:
    every op call asks, and importlib's lookup costs ~1-2 us a call."""
    found = _MODULES.get((backend, family))
    if found is None:
        found = _MODULES[(backend, family)] = importlib.import_module(
            f"{_MODULE_ROOT[backend]}.{family}")
    return found
