"""Helpers shared by the Numba kernels: loss functions and tensor <-> NumPy views."""

import contextlib
import hashlib
import math
import os
import sys
import threading
import types

import numba
import numpy as np
import torch

from gfn_fast import _scoped

SQUARED, HALF_SQUARED, ABSOLUTE, HUBER, SHIFTED_COSH, LINEX = range(6)
_NUMBA_FLOATS = (torch.float32, torch.float64)


@numba.njit(inline="always", cache=True)
def rho(d, loss_id, param):
    if loss_id == SQUARED:
        return d * d
    if loss_id == HALF_SQUARED:
        return 0.5 * d * d
    if loss_id == ABSOLUTE:
        return abs(d)
    if loss_id == HUBER:
        a = abs(d)
        return 0.5 * d * d if a <= param else param * (a - 0.5 * param)
    if loss_id == SHIFTED_COSH:
        return math.exp(d) + math.exp(-d) - 2.0
    ad = param * d
    return (math.exp(ad) - ad - 1.0) / (param * param)


@numba.njit(inline="always", cache=True)
def sign(d):
    """0 for a NaN d, as torch.sign (the reference's absolute and Huber gradients), Triton and
    CUDA: the loss is NaN there, its gradient 0."""
    if d > 0:
        return 1.0
    if d < 0:
        return -1.0
    return 0.0


@numba.njit(inline="always", cache=True)
def rho_grad(d, loss_id, param):
    if loss_id == SQUARED:
        return 2.0 * d
    if loss_id == HALF_SQUARED:
        return d
    if loss_id == ABSOLUTE:
        return sign(d)
    if loss_id == HUBER:
        return d if abs(d) <= param else param * sign(d)
    if loss_id == SHIFTED_COSH:
        return math.exp(d) - math.exp(-d)
    return math.expm1(param * d) / param


# ---- The on-disk kernel cache

_SOURCES_STAMP = "gfn_fast-cpu-sources.sha256"


def sources_digest() -> str:
    """SHA-256 over the sources of this package's Numba code (every gfn_fast/cpu/*.py) and the
    Numba version."""
    digest = hashlib.sha256(numba.__version__.encode())
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def drop_stale_kernels(cache_dir: str) -> bool:
    """Remove the cached kernels in `cache_dir` unless they were built from the current sources;
    True when it removed them. Numba revalidates a cached kernel against its own source file
    only (size and modification time), but the kernels inline helpers of other files (_common,
    _vmath, _philox, sampling's row helpers): after an edit of a helper alone, every kernel
    that inlines it would go on loading the old machine code. The cache directory keeps the
    digest of the sources its kernels came from (a cache without one, as written before this
    check, counts as stale); kernels recompile on first use. Best effort: a directory that
    cannot be read or written is left as it is."""
    current = sources_digest()
    stamp = os.path.join(cache_dir, _SOURCES_STAMP)
    try:
        with open(stamp) as f:
            if f.read().strip() == current:
                return False
    except OSError:
        pass
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return False
    for name in names:
        if name.endswith((".nbi", ".nbc")):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cache_dir, name))
    with contextlib.suppress(OSError):
        with open(stamp, "w") as f:
            f.write(current + "\n")
    return True


def as_numpy(tensor: torch.Tensor, compute: torch.dtype) -> np.ndarray:
    """A NumPy view of a CPU tensor (same strides); half types are widened to `compute`."""
    if tensor.dtype not in _NUMBA_FLOATS and tensor.is_floating_point():
        tensor = tensor.to(compute)
    return (tensor.detach() if tensor.requires_grad else tensor).numpy()


def per_row(tensor: torch.Tensor | None, batch: int, dtype: torch.dtype) -> np.ndarray:
    """[B] view of a scalar-or-[B] tensor (scalars broadcast with stride 0); a dummy when None.
    Built with NumPy directly: the torch route (detach, to, reshape, expand, numpy) cost ~3 us,
    several times per loss call."""
    if tensor is None:
        return np.zeros(1, dtype=np.float64 if dtype == torch.float64 else np.float32)
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if tensor.dim() == 1 and tensor.shape[0] == batch:
        return tensor.numpy()
    if tensor.numel() == 1:
        value = tensor.numpy()
        return np.ndarray((batch,), value.dtype, value, 0, (0,))
    return tensor.reshape(-1).expand(batch).numpy()


_CONSTANTS: dict = {}


def constant_row(batch: int, dtype: torch.dtype, value: float) -> np.ndarray:
    """[B] copies of `value` in `dtype` (float32 or float64): a stride-0 view of one cached
    element, the same Numba array type as an expanded scalar tensor. The default of a per-row
    factor (beta, scale, temperature, epsilon) that was not given."""
    key = (dtype, value)
    element = _CONSTANTS.get(key)
    if element is None:
        element = _CONSTANTS[key] = torch.full((1,), value, dtype=dtype, device="cpu").numpy()
    return np.ndarray((batch,), element.dtype, element, 0, (0,))


def row_or(value: torch.Tensor | None, batch: int, dtype: torch.dtype,
           default: float) -> np.ndarray:
    """per_row(value) where given, else constant_row(default): a per-row factor with its
    default. A missing one is a stride-0 row, the Numba array type of a scalar, so that calls
    with one value and calls without share a kernel build."""
    return per_row(value, batch, dtype) if value is not None else constant_row(batch, dtype,
                                                                               default)


_SERIAL_TWINS: dict = {}
_SERIAL_ONLY = False  # set in a process forked after its parent started an OpenMP pool


def _unsafe_pool_inherited() -> bool:
    """Whether this (just forked) process inherited a started OpenMP worker pool of Numba's:
    GNU OpenMP cannot be used after a fork, and Numba terminates a child that tries ("fork()
    called from a process already using GNU OpenMP"), e.g. a DataLoader worker forked after the
    training process ran a gfn_fast op."""
    from numba.np.ufunc import parallel

    return bool(parallel._is_initialized) and parallel._threading_layer == "omp"


def _after_fork_in_child() -> None:
    global _SERIAL_ONLY
    if _unsafe_pool_inherited():
        _SERIAL_ONLY = True
    # The child has one thread: a lock another thread of the parent held at the fork would
    # never be released (the child hung in its first pooled allocation).
    OUTPUTS.reset_lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def serial_if(kernel, small: bool):
    """`kernel` (a parallel=True Numba function), or when `small` its twin compiled without
    parallel=True, whose prange loops run on the calling thread. Waking the worker pool costs tens
    of microseconds idle (milliseconds on a loaded machine), more than small calls take; the twin
    avoids that without numba.set_num_threads, whose save-and-restore cost ~3 us per call.

    The twin is a copy of the Python function under its own name: Numba's on-disk cache indexes
    compiled code by the function's qualified name and bytecode, not by its compile flags, so a
    twin of the same name would load the parallel build (or overwrite it).

    In a process forked after its parent started Numba's OpenMP pool, every kernel runs its
    twin: that pool cannot run there (_unsafe_pool_inherited)."""
    if not (small or _SERIAL_ONLY):
        return kernel
    twin = _SERIAL_TWINS.get(kernel)
    if twin is None:
        fn = kernel.py_func
        copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        copy.__qualname__ = fn.__qualname__ + "_serial"
        copy.__module__ = fn.__module__
        options = {key: value for key, value in kernel.targetoptions.items()
                   if key not in ("parallel", "nopython")}
        twin = _SERIAL_TWINS[kernel] = numba.njit(cache=True, **options)(copy)
    return twin


# ---- Large outputs in reused memory

class _OutputPool:
    """Storages for large kernel outputs, handed out again once nothing else refers to them.

    Why: on the VMs this library is benchmarked on, a fresh multi-megabyte CPU allocation comes
    back from the OS page by page, each first write taking a page fault (~1 us per 4 KiB page;
    the heap is trimmed whenever a larger free happens in between). A TB backward at B=16384,
    T=64 writes two 4 MiB gradients, and the faults alone cost twice the kernels. The pool keeps
    the storages of the last few large outputs; a request of the same byte size reuses one whose
    only remaining reference is the pool's own, so nothing the caller can still reach is ever
    overwritten. The check is PyTorch's own storage use count (every tensor or view on the
    storage holds one), taken under a lock and raised by the new tensor before the lock is
    released; and the Python references to the pool's storage object, since PyTorch keeps one
    Python object per storage: the object `tensor.untyped_storage()` (or `.storage()`) hands a
    caller is the pool's own, and holding it adds no use count. Turn it off with
    `gfn_fast.cpu.set_output_reuse(False)` or GFN_FAST_REUSE_OUTPUTS=0.
    """

    min_bytes = 1 << 20
    max_storages = 8

    def __init__(self):
        self._storages: list = []  # most recently handed out last
        self._lock = threading.Lock()
        # PyTorch's count of references to a storage (private API): without it there is no
        # safe way to know a buffer is free, and nothing is reused
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)
        self.available = self._use_count is not None
        self.enabled = self.available and os.environ.get("GFN_FAST_REUSE_OUTPUTS", "1") != "0"
        # Python references to an entry that only the pool holds, counted by the same code
        # path that checks the entries (the count depends on the interpreter's bookkeeping)
        self._storages.append(torch.UntypedStorage(0))
        self._free_refs = self._python_refs(0)
        self._storages.clear()

    def _python_refs(self, i: int) -> int:
        storage = self._storages[i]
        return sys.getrefcount(storage)

    def _free(self, i: int, nbytes: int) -> bool:
        """Entry i has `nbytes` and nothing but the pool refers to it: no tensor or view (the
        storage use count), no caller holding its Python object, and no other process (a
        storage moved to shared memory, as torch.multiprocessing does to send a tensor, may be
        mapped by a receiver that this process cannot count: it is never handed out again and
        leaves the pool as newer entries push it out)."""
        storage = self._storages[i]
        if storage.nbytes() != nbytes or self._use_count(storage._cdata) != 1 or \
                storage.is_shared():
            return False
        del storage  # a reference of its own, which the calibration did not count
        return self._python_refs(i) <= self._free_refs

    def empty(self, shape: tuple, dtype: torch.dtype, stride: tuple | None = None, *,
              min_bytes: int | None = None):
        """torch.empty (contiguous) or, given `stride`, torch.empty_strided of a dense layout.
        Pooled from `min_bytes` (default: the class's) up."""
        nbytes = math.prod(shape) * dtype.itemsize
        here = REUSE.get()  # a `with output_reuse(...)` block's setting, else the process's
        enabled = self.enabled if here is None else here and self.available
        if not enabled or nbytes < (self.min_bytes if min_bytes is None else min_bytes):
            return _allocate(shape, dtype, stride)
        with self._lock:
            for i in range(len(self._storages)):
                if self._free(i, nbytes):
                    storage = self._storages[i]
                    out = torch.empty(0, dtype=dtype, device="cpu")
                    if stride is None:  # set_ without a stride lays it out contiguously
                        out.set_(storage, 0, shape)
                    else:
                        out.set_(storage, 0, shape, stride)
                    self._storages.append(self._storages.pop(i))
                    return out
            out = _allocate(shape, dtype, stride)
            self._storages.append(out.untyped_storage())
            if len(self._storages) > self.max_storages:
                self._storages.pop(0)
            return out

    def use_count(self, tensor: torch.Tensor) -> int | None:
        """How many tensors, views and pool entries refer to `tensor`'s storage (None when this
        torch cannot tell)."""
        if self._use_count is None:
            return None
        return self._use_count(tensor.untyped_storage()._cdata)

    def clear(self):
        with self._lock:
            self._storages.clear()

    def reset_lock(self):
        self._lock = threading.Lock()


def _allocate(shape: tuple, dtype: torch.dtype, stride: tuple | None) -> torch.Tensor:
    if stride is None:
        return torch.empty(shape, dtype=dtype, device="cpu")
    return torch.empty_strided(shape, stride, dtype=dtype, device="cpu")


OUTPUTS = _OutputPool()
# Overrides OUTPUTS.enabled (the process-wide setting) inside `with output_reuse(...)` blocks, in
# their own thread only (gfn_fast._scoped).
REUSE = _scoped.Switch("gfn_fast.output_reuse", None)


def output_like(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty_like(tensor, dtype=dtype), from the output pool when large. A non-contiguous
    tensor (e.g. a time-major [T, B] passed as `.T`) gets empty_like's layout, taken from a meta
    tensor so that nothing is allocated for it."""
    shape = tuple(tensor.shape)
    if tensor.is_contiguous():
        return OUTPUTS.empty(shape, dtype)
    layout = torch.empty_like(tensor, dtype=dtype, device="meta")
    return OUTPUTS.empty(shape, dtype, layout.stride())


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype) for a kernel output, from the output pool when large."""
    return OUTPUTS.empty(tuple(shape), dtype)


# Before any kernel of this package loads from the cache: every module of gfn_fast.cpu imports
# this one first (the package's __init__ does). All of them share one cache directory.
drop_stale_kernels(rho._cache._cache_path)
