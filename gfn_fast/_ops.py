"""Registration of gfn_fast's torch ops, with a direct path for eager PyTorch.

Every op is a `torch.library` custom op (fake implementation, registered autograd), which is what
torch.compile, export, fake tensors and opcheck see. Calling such an op eagerly costs 25-100 us
of dispatcher and Python work per forward+backward on top of the kernels (argument default
filling, dispatch-key redispatch, the generated autograd node), measured on a 2-core CPU: more
than the kernels themselves at small and medium sizes. `custom_op` below registers the same
function as the op, and returns a callable that runs it directly in plain eager mode: under an
`autograd.Function` built from the very `setup_context` and `backward` registered with the op
when it has autograd and grad mode is on, under `no_grad` otherwise; the version counters of
the arguments an op writes into are bumped as the dispatcher would. Anything else
(torch.compile tracing, a dispatch mode such as FakeTensorMode, functorch transforms and their
wrappers, tensor subclasses) goes through the op. Both paths run the same implementation and
backward code, so they give bitwise equal results (tests/test_ops.py checks it for every op
family, and for the generation steps, which write into their arguments).
"""

import functools
import inspect
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad

from gfn_fast import _scoped

# Every op registered here, by qualified name (tests walk it).
REGISTRY: dict = {}
_FORCE_OP = _scoped.Switch("gfn_fast.force_op_path", False)


def force_op_path(enabled: bool = True):
    """Route every call through the torch op even in eager mode (tests compare both paths):
    a context manager, for the calling thread."""
    return _FORCE_OP.scoped(enabled)


def _eager(args) -> bool:
    """True when nothing but plain eager PyTorch would see the call."""
    if torch.compiler.is_compiling() or _FORCE_OP.get() or torch._C._len_torch_dispatch_stack():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    # Tensor subclasses (FakeTensor outside its mode, DTensor, ...) and functorch wrappers (a
    # dead one, kept from inside a transform, has the plain Tensor type) dispatch. Every op
    # takes a tensor first, and such inputs come together, so the first argument stands for all.
    first = args[0]
    return type(first) in (torch.Tensor, torch.nn.Parameter) and \
        not torch._C._functorch.is_functorch_wrapped_tensor(first)


def _tangent_in(args) -> bool:
    """Whether a tensor argument carries a forward-mode tangent (torch.autograd.forward_ad's
    dual tensors, or torch.func.jvp / jacfwd, which run at a dual level too). Called only while
    a dual level is open. A tensor that cannot be unpacked (batched by vmap, which no op
    supports and which fails later) counts as no tangent."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_floating_point():
            try:
                if forward_ad.unpack_dual(arg).tangent is not None:
                    return True
            except RuntimeError:
                pass
    return False


def on_its_device(fn: Callable) -> Callable:
    """`fn` run with the device of its first argument (every op takes a tensor first) made the
    current CUDA device. Triton launches on the current device, and a CUDA kernel cannot be
    launched on another device's stream, so tensors on cuda:1 while cuda:0 is current failed or
    were read through the wrong device. Nothing is switched on a CPU or when the device is
    already current. The dispatcher does not switch devices for a Python op either."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = args[0]
        if first.is_cuda:
            index = first.get_device()
            if index != torch.cuda.current_device():
                with torch.cuda.device(index):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


class Op:
    """A registered op (`.op`, a torch.library CustomOpDef) plus its direct eager path."""

    def __init__(self, name: str, fn: Callable, mutates_args):
        fn = on_its_device(fn)
        self.op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        self.name = name
        self._fn = fn
        parameters = inspect.signature(fn).parameters
        self._defaults = tuple(p.default for p in parameters.values())
        # The positions of the arguments the op writes into. The dispatcher bumps their version
        # counters (which autograd reads to detect a saved tensor changed in place); the direct
        # path does the same with increment_version. Dispatching instead cost a BFN generation
        # step 60 us (100 us with the caches cold) at CIFAR-10's shape on a 2-core CPU.
        self._mutated = tuple(i for i, arg in enumerate(parameters) if arg in mutates_args)
        self._function = self._apply = None
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
        if self._mutated:  # the direct path would need ctx.mark_dirty
            raise NotImplementedError(f"{self.name}: autograd for an op that mutates arguments")
        n_inputs = len(self._defaults)

        def guarded(ctx, *grads):
            for grad in grads:  # a loop, not all(genexpr) (nor tuple.count, which calls ==)
                if grad is not None:
                    return backward(ctx, *grads)
            return (None,) * n_inputs

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
        # The C implementation of Function.apply. The Python classmethod in front of it checks
        # for functorch transforms and unwraps dead functorch wrappers, both of which `_eager`
        # has already ruled out. Skipping it took 22-27 us off a CIFAR-10-shape continuous flow
        # + loss + backward step on a 2-core CPU, caches warm or cold (as after a network ran).
        self._apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, self._function)

    def __call__(self, *args):
        # Forward-mode AD: a torch.library op's autograd is reverse mode only, and through the op
        # a tangent was silently dropped (torch.func.jvp gave zeros, a dual tensor's output no
        # tangent). Ops without autograd take detached inputs (their results have no gradient).
        if self._function is not None and getattr(forward_ad, "_current_level", -1) >= 0 and \
                _tangent_in(args):
            raise NotImplementedError(
                f"gfn_fast: {self.name} has no forward-mode derivative (torch.func.jvp, jacfwd, "
                f"torch.autograd.forward_ad); use reverse mode (torch.autograd), or "
                f"backend='reference', which is plain PyTorch")
        if not _eager(args):
            return self.op(*args)
        if len(args) < len(self._defaults):  # the op fills defaults; setup_context needs them
            args = args + self._defaults[len(args):]
        if not torch.is_grad_enabled():
            # nothing is recorded, so autograd.Function would only add its cost
            output = self._fn(*args)
        elif self._function is not None:
            return self._apply(*args)
        else:
            # no autograd: the outputs must not record a graph. torch.no_grad() as a context
            # manager costs ~1 us here; the flag itself ~0.1 us
            torch._C._set_grad_enabled(False)
            try:
                output = self._fn(*args)
            finally:
                torch._C._set_grad_enabled(True)
            # e.g. a fused backward (the *_bwd ops) run with create_graph=True: without a graph
            # its outputs would silently drop their own derivatives, where the op path raises
            anchors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if anchors:
                output = not_twice_differentiable(self.name, output, anchors)
        if self._mutated:
            torch.autograd.graph.increment_version([args[i] for i in self._mutated])
        return output


def saveable(*tensors):
    """`tensors` for ctx.save_for_backward, an inference tensor (made under
    torch.inference_mode(), e.g. the rewards or lengths of a rollout run there) replaced by a
    clone: autograd refuses to save one ("Inference tensors cannot be saved for backward"),
    while the reference, whose math does not save such inputs, took them."""
    return tuple(t.clone() if t is not None and t.is_inference() else t for t in tensors)


def not_twice_differentiable(name: str, output, anchors: list):
    """`output` (a tensor, or a tuple or list of them) with its floating tensors made to raise
    when differentiated back to any of `anchors` (the tensors that require grad and that the
    output depends on: a fused backward's saved inputs and incoming gradient). The fused ops
    are differentiable once: a gradient of their gradient (a penalty on it, a Hessian) must
    fail loudly rather than leave those terms out. (torch's once_differentiable marks outputs
    only when the incoming gradient requires grad, which it does not for a loss's gradient,
    and links them to fresh leaves rather than to the inputs: both drop the terms silently.)
    The link is a zero scalar through an error node that aliases each anchor, added to each
    output: a copy of each output, made only in a backward run with create_graph=True."""
    several = isinstance(output, (tuple, list))
    outputs = output if several else (output,)
    error = torch._C._functions.DelayedError(
        f"gfn_fast: {name} is differentiable once: a gradient of its gradient (create_graph=True "
        f"then a second backward through it) is not supported".encode(), len(anchors))
    aliases = error(*anchors)
    aliases = aliases if isinstance(aliases, tuple) else (aliases,)
    link = None
    for alias in aliases:
        term = alias.reshape(-1)[:1].sum() * 0
        link = term if link is None else link + term
    marked = [out + link.to(out.dtype) if isinstance(out, torch.Tensor) and
              out.is_floating_point() else out for out in outputs]
    return type(output)(marked) if several else marked[0]


def custom_op(name: str, *, mutates_args=()) -> Callable[[Callable], Op]:
    """Decorator: register `fn` as the torch op `name` and return its `Op`."""
    return lambda fn: Op(name, fn, mutates_args)
