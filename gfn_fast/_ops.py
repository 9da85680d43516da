"""Registration of gfn_fast's torch ops, with a direct path for eager PyTorch.

Every op is a `torch.library` custom op (fake implementation, registered autograd), which is what
torch.compile, export, fake tensors and opcheck see. Calling such an op eagerly costs 25-100 us
of dispatcher and Python work per forward+backward on top of the kernels (argument default
filling, dispatch-key redispatch, the generated autograd node), measured on a 2-core CPU: more
than the kernels themselves at small and medium sizes. `custom_op` below registers the same
function as the op, and returns a callable that runs it directly in plain eager mode: under an
`autograd.Function` built from the very `setup_context` and `backward` registered with the op
when it has autograd, under `no_grad` otherwise. Anything else (torch.compile tracing, a
dispatch mode such as FakeTensorMode, functorch transforms, tensor subclasses) goes through the
op. Both paths run the same implementation and backward code, so they give bitwise equal
results (tests/test_ops.py checks it for every op family).
"""

import contextlib
import inspect
from collections.abc import Callable

import torch

# Every op registered here, by qualified name (tests walk it).
REGISTRY: dict = {}
_force_op = False


@contextlib.contextmanager
def force_op_path(enabled: bool = True):
    """Route every call through the torch op even in eager mode (tests compare both paths)."""
    global _force_op
    saved, _force_op = _force_op, enabled
    try:
        yield
    finally:
        _force_op = saved


def _eager(args) -> bool:
    """True when nothing but plain eager PyTorch would see the call."""
    if _force_op or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    # Tensor subclasses (FakeTensor outside its mode, DTensor, ...) dispatch. Every op takes a
    # tensor first, and such inputs come together, so the first argument stands for all.
    return type(args[0]) in (torch.Tensor, torch.nn.Parameter)


class Op:
    """A registered op (`.op`, a torch.library CustomOpDef) plus its direct eager path."""

    def __init__(self, name: str, fn: Callable, mutates_args):
        self.op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        self.name = name
        self._fn = fn
        # Ops that write into their arguments always dispatch, so that the version counters
        # autograd uses to detect in-place changes of saved tensors are bumped.
        self._direct = not mutates_args
        self._defaults = tuple(p.default for p in inspect.signature(fn).parameters.values())
        self._function = None
        REGISTRY[name] = self

    def register_fake(self, fake: Callable) -> Callable:
        self.op.register_fake(fake)
        return fake

    def register_autograd(self, backward: Callable, *, setup_context: Callable) -> None:
        """`backward` and `setup_context` as for torch.library. An op whose outputs beyond the
        first are marked non-differentiable should also call ctx.set_materialize_grads(False) in
        its setup_context: autograd otherwise allocates and fills a zero gradient of each such
        output's shape on every backward. `backward` then sees None for those; a call whose
        gradients are all undefined (gradcheck tries one) gets None for every input here, so
        `backward` itself never sees an undefined gradient of its first output."""
        n_inputs = len(self._defaults)

        def guarded(ctx, *grads):
            if all(grad is None for grad in grads):
                return (None,) * n_inputs
            return backward(ctx, *grads)

        self.op.register_autograd(guarded, setup_context=setup_context)
        fn = self._fn

        # setup_context is called from forward rather than declared as the Function's own:
        # a declared one makes every apply() bind arguments through inspect.signature (~18 us).
        def forward(ctx, *args):
            output = fn(*args)
            setup_context(ctx, args, output)
            return output

        self._function = type(self.name.split("::")[-1], (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(guarded)})

    def __call__(self, *args):
        if not (self._direct and _eager(args)):
            return self.op(*args)
        if len(args) < len(self._defaults):  # the op fills defaults; setup_context needs them
            args = args + self._defaults[len(args):]
        if self._function is not None:
            return self._function.apply(*args)
        # torch.no_grad() as a context manager costs ~1 us here; the flag itself ~0.1 us
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return self._fn(*args)
        finally:
            torch._C._set_grad_enabled(enabled)


def custom_op(name: str, *, mutates_args=()) -> Callable[[Callable], Op]:
    """Decorator: register `fn` as the torch op `name` and return its `Op`."""
    return lambda fn: Op(name, fn, mutates_args)
