"""One benchmark harness for every op (../shared/DESIGN.md, "Benchmarks").

Each case times forward+backward of one op for every implementation that can run here: the
gfn_fast backends, the plain-PyTorch reference in eager mode and under torch.compile, and peers
where installed. Each row reports the median and 20th/80th percentile times, peak memory, a
bytes-moved model read as GB/s and as a fraction of the copy bandwidth of this machine measured
in the same run, and the speed-up against eager PyTorch. Results go out as JSON lines (with
device, versions and date), a markdown table and one PNG plot per op (gfn_fast.bench_plots,
needs matplotlib).

Value checks are switched off while timing (`gfn_fast.validation(False)`), as in production.
On a CPU everything that compiles (Numba kernels, torch.compile baselines) is compiled before
the timing starts, in parallel where there are cores for it (compile_ahead).

`--quick` (one small size per case, short timings) leaves the torch.compile rows out of every
case (build_cases): on a 2-core CPU with empty caches their first calls took ~27 s of an 87 s
run, which the issue wants in about a minute. The full run has them, unless `--no-compile`.
"""

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import gfn_fast
from gfn_fast import _backends, bench_plots
from gfn_fast._cli import at_least, output_dir, positive_float


@dataclass
class Case:
    """One op at one size. `setup(device)` returns a state; each impl maps state -> outputs."""

    op: str
    label: str
    params: dict
    bytes_moved: int
    setup: Callable
    impls: dict = field(default_factory=dict)
    items: int = 0           # work items per call (e.g. trajectories), reported as items/s
    item_name: str = ""
    graph: bool = True       # on CUDA, also time each call replayed from a captured CUDA graph
    min_reps: int = 10       # calls of each implementation at least (fewer for slow cases)
    # seconds after which the side-by-side timing stops short of min_reps once every
    # implementation has one sample (slow cases, where one implementation may take minutes)
    max_seconds: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_call(fn: Callable, device: torch.device, *, warmup: int = 3, min_reps: int = 10,
              min_seconds: float = 0.5, max_reps: int = 1000) -> list[float]:
    """Seconds per call, one sample per call (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_reps or (time.perf_counter() - started < min_seconds
                                      and len(samples) < max_reps):
        samples.append(_time_once(fn, device))
    return samples


def peak_memory(fn: Callable, device: torch.device) -> int:
    """Peak bytes allocated by torch during one call, above what was allocated before it.
    CUDA: the caching allocator's statistics. CPU: the profiler's allocation events, with the
    Numba backend's output reuse off, so that its outputs count as the allocations they are."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    from gfn_fast.cpu import output_reuse

    with output_reuse(False), _quiet_stderr(), profile(
            activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        return _peak_from_allocations(prof)
    except (ImportError, AttributeError):
        # Fallback: each op's net self usage at its start. Inside an op that allocates and
        # frees scratch, frees are netted before they happen, so this can read low.
        changes = [change for _, change in sorted(
            ((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]"
              else e.self_cpu_memory_usage) for e in prof.events()), key=lambda c: c[0])]
        current = peak = 0
        for change in changes:
            current += change
            peak = max(peak, current)
        return peak


def _peak_from_allocations(prof) -> int:
    """The peak of the bytes allocated during the profiled call and not yet freed, from the
    profiler's allocation and free events taken in time order. Only blocks allocated during
    the call count: CPU frees are reported for blocks allocated while any profiler recorded
    memory, so a free of a block from an earlier measurement (a gradient the call replaces)
    would otherwise be netted against what the call allocates, and the same call measured
    twice read 1.52 MB, then 0. (torch's MemoryProfile gives the figures of the allocator's
    running total from the same events, with that netting, and its data-flow analysis cost
    ~0.4 s a row, half of a warm `bench --quick` on 2 cores.)"""
    from torch._C._profiler import _EventType

    events = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            events.append((event.start_time_ns, fields.alloc_size, fields.ptr))
    live: dict = {}  # pointer -> bytes of the blocks allocated during the call, not yet freed
    current = peak = 0
    for _, size, ptr in sorted(events, key=lambda e: e[0]):
        if size > 0:
            live[ptr] = live.get(ptr, 0) + size
            current += size
            peak = max(peak, current)
        elif ptr in live:
            current -= live.pop(ptr)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines to file descriptor 2; hide them."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def copy_bandwidth(device: torch.device, n_bytes: int | None = None) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read and written."""
    if n_bytes is None:
        n_bytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    samples = time_call(lambda: dst.copy_(src), device, min_reps=10, min_seconds=0.5)
    return 2 * n_bytes / statistics.median(samples)


def device_name(device: torch.device) -> str:
    """The GPU's name; for a CPU its model (Linux's /proc/cpuinfo, else the platform's word),
    the CPU LLVM compiles the Numba kernels for, and the threads torch uses. CPU results depend
    on more than the core count: the same Numba kernel can vectorise under LLVM's tuning for
    one x86 CPU and not another's (see cpu/sampling.py), and a VM may name its CPU vaguely."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), None)
    name = model or platform.processor() or platform.machine()
    try:
        import llvmlite.binding
        import numba

        target = numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()
        name += f", LLVM target {target}"
    except ImportError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def _versions() -> dict:
    versions = {"gfn_fast": gfn_fast.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    for name in ("triton", "numba"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_side_by_side(calls: dict, device: torch.device, *, min_seconds: float,
                      min_reps: int = 10, max_reps: int = 2000,
                      max_seconds: float | None = None) -> dict:
    """Seconds per call of each implementation, sampled round-robin (one call of each in turn),
    so that load from other processes on a shared machine hits all of them alike and their
    ratios stay meaningful. Past `max_seconds` (warm-up included) the rounds stop after the
    first, even short of min_reps."""
    started = time.perf_counter()
    for fn in calls.values():
        for _ in range(3 if min_reps >= 10 else 1):
            fn()
    _sync(device)
    samples: dict = {name: [] for name in calls}
    timing = time.perf_counter()
    reps = 0
    while reps < min_reps or (time.perf_counter() - timing < min_seconds * len(calls)
                              and reps < max_reps):
        if reps and max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        for name, fn in calls.items():
            samples[name].append(_time_once(fn, device))
        reps += 1
    return samples


_PEERS = ("torchgfn", "flashinfer")


def _capture(call: Callable, device: torch.device) -> "torch.cuda.CUDAGraph":
    """`call` captured in a CUDA graph (warmed up on a side stream first, as capture needs)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    _sync(device)
    return graph


def _graph_rows(calls: dict, rows: list, case: Case, device: torch.device, bandwidth: float,
                min_seconds: float, progress: Callable) -> None:
    """Device time per call: each implementation captured once in a CUDA graph and its replays
    timed side by side. Per-call timing includes the host's launch overhead (the GPU waits for
    Python); a replay launches the same kernels with none, so this is the figure to set against
    the bytes the op moves. An implementation that cannot be captured gets `graph_error`."""
    graphs, replays = {}, {}
    for impl, call in calls.items():
        if any(peer in impl for peer in _PEERS):  # peers synchronise with the host: not
            # capturable (e.g. "torchgfn.Sampler", "PyTorch + flashinfer.sampling")
            continue
        progress(f"{case.label} / capturing {impl}")
        try:
            graphs[impl] = _capture(call, device)
            replays[impl] = graphs[impl].replay
        except Exception as err:
            _sync(device)
            next(r for r in rows if r.get("impl") == impl)["graph_error"] = repr(err)[:300]
    if not replays:
        return
    progress(f"{case.label} / timing {len(replays)} graph replays side by side")
    timings = time_side_by_side(replays, device, min_seconds=min_seconds)
    for impl, samples in timings.items():
        median = statistics.median(samples)
        row = next(r for r in rows if r.get("impl") == impl)
        row.update(graph_ms=median * 1e3, graph_p20_ms=_percentile(samples, 0.2) * 1e3,
                   graph_p80_ms=_percentile(samples, 0.8) * 1e3,
                   graph_gbps=case.bytes_moved / median / 1e9,
                   graph_pct_copy_bw=100 * case.bytes_moved / median / bandwidth)
    del graphs, replays
    torch.cuda.empty_cache()


def run_case(case: Case, device: torch.device, bandwidth: float, *, min_seconds: float,
             progress: Callable[[str], None] = lambda _: None,
             first_calls: dict | None = None) -> list[dict]:
    """The rows of one case. `first_calls` (impl -> seconds) are first calls already made
    elsewhere (see compile_ahead); they are reported instead of this process's first call."""
    first_calls = first_calls or {}
    try:
        state = case.setup(device)
    except Exception as err:  # e.g. a peer library that cannot run on this device
        return [{"op": case.op, "case": case.label, "impl": impl, "error": f"setup: {err!r}"}
                for impl in case.impls]
    calls, rows, first_call = {}, [], {}
    with gfn_fast.validation(False):
        for impl, fn in case.impls.items():
            call = lambda fn=fn: fn(state)  # noqa: E731
            progress(f"{case.label} / warm-up {impl}")
            started = time.perf_counter()
            try:
                call()
                _sync(device)
            except Exception as err:  # a baseline that cannot run here is reported, not fatal
                rows.append({"op": case.op, "case": case.label, "impl": impl,
                             "error": repr(err)})
                continue
            first_call[impl] = first_calls.get(impl, time.perf_counter() - started)
            calls[impl] = call
            progress(f"{case.label} / first call of {impl}: {first_call[impl]:.2f} s")
        progress(f"{case.label} / timing {len(calls)} implementations side by side")
        timings = time_side_by_side(calls, device, min_seconds=min_seconds,
                                    min_reps=case.min_reps, max_seconds=case.max_seconds)
        for impl, call in calls.items():
            samples = timings[impl]
            median = statistics.median(samples)
            rows.append({
                "op": case.op, "case": case.label, "impl": impl, "params": case.params,
                "median_ms": median * 1e3, "p20_ms": _percentile(samples, 0.2) * 1e3,
                "p80_ms": _percentile(samples, 0.8) * 1e3, "reps": len(samples),
                # the first call: compilation, autotuning, graph capture (and one run); on a
                # CPU, Numba's and torch.compile's made while others compile (compile_ahead)
                "first_call_ms": first_call[impl] * 1e3,
                "peak_mem_mb": peak_memory(call, device) / 2**20,
                "bytes_moved": case.bytes_moved,
                "gbps": case.bytes_moved / median / 1e9,
                "pct_copy_bw": 100 * case.bytes_moved / median / bandwidth,
            })
            if case.items:
                rows[-1].update(items=case.items, item_name=case.item_name,
                                items_per_s=case.items / median)
        if device.type == "cuda" and case.graph and calls:
            _graph_rows(calls, rows, case, device, bandwidth, min_seconds, progress)
    # the baseline: the implementation named "eager", else, in a case that has none, its first
    # eager variant (e.g. "eager (materialises [B, D, K])" where that is the only reference).
    # Where the baseline failed the rows get no ratio, not one against another implementation.
    baseline = "eager" if "eager" in case.impls else next(
        (name for name in case.impls if name.startswith("eager")), None)
    eager = next((r for r in rows if r["impl"] == baseline and "median_ms" in r), None)
    for row in rows:
        if eager is not None and "median_ms" in row:
            row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"]
            row["speedup_baseline"] = baseline
        if eager is not None and "graph_ms" in row and "graph_ms" in eager:
            row["graph_speedup_vs_eager"] = eager["graph_ms"] / row["graph_ms"]
    return rows


NUMBA_IMPL = "gfn_fast[numba]"
_DONE = "gfn_fast compiled"


def compile_worker(builders: list, quick: bool) -> None:
    """A compile worker's loop (see compile_ahead). Builds the cases with `builders`
    ("module:qualified name" of each case family's function), then reads cases from stdin, one JSON
    [index, op, label] a line; makes the first call of that case's Numba implementation, which
    compiles its kernels into Numba's on-disk cache; answers `gfn_fast compiled INDEX SECONDS`
    on stdout. SECONDS is -1 where the call failed (run_case reports why) or where this
    process's case INDEX is not the one named (the parent built other cases)."""
    torch.set_num_threads(1)
    cases = []
    for name in builders:
        module, qualname = name.split(":")
        build = importlib.import_module(module)
        for attribute in qualname.split("."):
            build = getattr(build, attribute)
        cases += build(torch.device("cpu"), quick)
    for line in sys.stdin:
        index, op, label = json.loads(line)
        seconds = None
        if 0 <= index < len(cases) and (cases[index].op, cases[index].label) == (op, label):
            seconds = _numba_first_call(cases[index])
        print(f"{_DONE} {index} {-1.0 if seconds is None else seconds!r}", flush=True)


def _numba_first_call(case: Case) -> float | None:
    """Seconds of the first call of `case`'s Numba implementation, None if it failed."""
    try:
        state = case.setup(torch.device("cpu"))
        with gfn_fast.validation(False):
            started = time.perf_counter()
            case.impls[NUMBA_IMPL](state)
            return time.perf_counter() - started
    except Exception:
        return None


def _start_worker(builders: list, quick: bool) -> subprocess.Popen:
    # the worker imports the gfn_fast this process runs, whatever put it on sys.path
    env = dict(os.environ)
    root = str(Path(gfn_fast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = ("import sys; from gfn_fast.benchmark import compile_worker; "
            "compile_worker(sys.argv[2:], sys.argv[1] == '1')")
    names = [f"{build.__module__}:{build.__qualname__}" for build in builders]
    return subprocess.Popen([sys.executable, "-c", code, str(int(quick)), *names],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _feed(worker: subprocess.Popen, tasks: queue.Queue, results: dict) -> None:
    """Hands `worker` one case at a time until none is left. A worker that stops answering
    (it died) gets no more, and its case goes back in the queue."""
    try:
        while True:
            try:
                task = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                worker.stdin.write(json.dumps(task) + "\n")
                worker.stdin.flush()
                line = worker.stdout.readline()
                while line and not line.startswith(_DONE):  # whatever else the case printed
                    line = worker.stdout.readline()
            except OSError:  # a broken pipe
                line = ""
            if not line:
                tasks.put(task)
                return
            _, _, index, seconds = line.split()
            if float(seconds) >= 0:
                results[int(index)] = float(seconds)
    finally:
        with contextlib.suppress(OSError):
            worker.stdin.close()


def compile_ahead(cases: list[Case], builders: list, quick: bool, device: torch.device,
                  workers: int, progress: Callable[[str], None] = lambda _: None) -> dict:
    """First calls made before the timing, by case index: {index: {impl: seconds}}.

    On a CPU, most of a first run is compiling: Numba's kernels (~40 s of `bench --quick` on 2
    cores, one core busy) and torch.compile's baselines (~20 s, half of it waiting on the C++
    compiler). Here `workers` processes make the first call of every case's Numba
    implementation, which compiles its kernels into Numba's on-disk cache, while this process
    makes the first calls of the torch.compile baselines, then takes Numba cases from the same
    queue. The timing that follows finds every kernel compiled (a worker's in the cache), and
    nothing compiles beside it. Each first call is measured where it is made, with the other
    compiles running beside it. Whatever fails here is left to run_case, which makes the call
    again and reports the error.

    `cases` must be what the case-family functions `builders` build for `quick`: a worker
    imports those functions and builds the cases again (a worker that cannot, e.g. for a family
    defined inside a function, answers nothing and its cases are compiled here)."""
    if device.type != "cpu" or workers < 1:
        return {}
    # An op's later cases go last: at another size or on other inputs they mostly run the
    # kernels its first case compiled, and they are left to this process, which will have run
    # their setup (torchgfn's cases take a second or two each the first time) by then.
    firsts, repeats, ops = [], [], set()
    for index, case in enumerate(cases):
        if NUMBA_IMPL in case.impls:
            (repeats if case.op in ops else firsts).append(index)
            ops.add(case.op)
    tasks: queue.Queue = queue.Queue()
    for index in firsts + repeats:
        tasks.put((index, cases[index].op, cases[index].label))
    n_tasks = tasks.qsize()
    if not n_tasks:
        return {}
    numba_first: dict = {}
    procs = [_start_worker(builders, quick) for _ in range(min(workers, n_tasks))]
    feeders = [threading.Thread(target=_feed, args=(proc, tasks, numba_first), daemon=True)
               for proc in procs]
    for feeder in feeders:
        feeder.start()
    first: dict = {}
    try:
        with gfn_fast.validation(False):
            for index, case in enumerate(cases):
                compiled = [impl for impl in case.impls if impl.startswith("torch.compile")]
                if not compiled:
                    continue
                try:
                    state = case.setup(device)
                except Exception:
                    continue
                for impl in compiled:
                    progress(f"{case.label} / first call of {impl}")
                    started = time.perf_counter()
                    try:
                        case.impls[impl](state)
                    except Exception:
                        continue
                    first.setdefault(index, {})[impl] = time.perf_counter() - started
                del state
        # then Numba cases from the same queue, including any a dying worker put back
        while not tasks.empty() or any(feeder.is_alive() for feeder in feeders):
            try:
                index, _, _ = tasks.get_nowait()
            except queue.Empty:
                progress(f"Numba kernels in {len(procs)} worker(s): {len(numba_first)} of "
                         f"{n_tasks} cases")
                for feeder in feeders:
                    feeder.join(0.5 if feeder.is_alive() else 0)
                continue
            progress(f"{cases[index].label} / first call of {NUMBA_IMPL}")
            seconds = _numba_first_call(cases[index])
            if seconds is not None:
                numba_first[index] = seconds
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    for index, seconds in numba_first.items():
        first.setdefault(index, {})[NUMBA_IMPL] = seconds
    return first


def markdown(rows: list[dict], header: dict) -> str:
    lines = [f"Device: {header['device_name']} ({header['device']}); copy bandwidth "
             f"{header['copy_gbps']:.1f} GB/s; {header['date']}; "
             f"torch {header['versions']['torch']}",
             "",
             "| op | case | impl | median ms | p20-p80 ms | GB/s | % copy BW | items/s | peak MB "
             "| vs eager |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | error: "
                         f"{_table_text(r['error'], 60)} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {r['op']} | {r['case']} | {r['impl']} | {r['median_ms']:.3f} | "
            f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f} | "
            + (f"{r['gbps']:.1f} | {r['pct_copy_bw']:.0f}% | " if r["bytes_moved"] else "- | - | ")
            + (f"{r['items_per_s']:.3g} {r['item_name']} | " if "items_per_s" in r else "- | ")
            + f"{r['peak_mem_mb']:.1f} | {r.get('speedup_vs_eager', float('nan')):.2f}x |")
    graphed = [r for r in rows if "graph_ms" in r or "graph_error" in r]
    if graphed:
        lines += ["", "Device time: each call captured in a CUDA graph, replays timed side by "
                  "side (no host launch overhead).", "",
                  "| op | case | impl | graph ms | p20-p80 ms | GB/s | % copy BW | vs eager |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in graphed:
            if "graph_ms" not in r:
                lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | not capturable: "
                             f"{_table_text(r['graph_error'], 60)} | | | | |")
                continue
            lines.append(
                f"| {r['op']} | {r['case']} | {r['impl']} | {r['graph_ms']:.4f} | "
                f"{r['graph_p20_ms']:.4f}-{r['graph_p80_ms']:.4f} | "
                + (f"{r['graph_gbps']:.1f} | {r['graph_pct_copy_bw']:.0f}% | " if r["bytes_moved"]
                   else "- | - | ")
                + f"{r.get('graph_speedup_vs_eager', float('nan')):.2f}x |")
    return "\n".join(lines)


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn, dynamic=False) for a case's compile row, made at its first call:
    making it imports torch._dynamo (~1.2 s on a 2-core VM), which runs without compile rows
    (--quick, --no-compile) and the compile workers never need."""
    made = None

    def call(*args, **kwargs):
        nonlocal made
        if made is None:
            made = torch.compile(fn, dynamic=False)
        return made(*args, **kwargs)
    return call


def timed_backends(device: torch.device) -> list[str]:
    """The gfn_fast backends a case times on `device`: those that run there, except Triton on a
    CPU (its interpreter is for tests, not timing)."""
    report = gfn_fast.backends()
    return [name for name in ("cuda", "triton", "numba")
            if device.type in report[name]["devices"]
            and not (name == "triton" and device.type == "cpu")]


def _fwd_bwd(forward: Callable, names: tuple) -> Callable:
    def call(state):
        inputs = [state[n] for n in names]
        loss = forward(state)
        return torch.autograd.grad(loss, inputs)
    return call


def balance_cases(device: torch.device, quick: bool) -> list[Case]:
    """TB and VarGrad (log-partition variance) forward+backward, float32, padded, random lengths
    (issue: foundation), from small to large batches."""
    from gfn_fast.reference import balance as reference

    if device.type == "cuda":
        sizes = [(16384, 128)] if quick else [(4096, 32), (65536, 128), (262144, 64)]
    else:
        sizes = [(4096, 64)] if quick else [(1024, 16), (16384, 64), (65536, 128)]
    cases = []
    for batch, steps in sizes:
        def setup(dev, batch=batch, steps=steps):
            gen = torch.Generator(device="cpu").manual_seed(0)
            lengths = torch.randint(1, steps + 1, (batch,), generator=gen).to(dev)
            return {
                "log_pf": torch.randn(batch, steps, generator=gen).to(dev).requires_grad_(),
                "log_pb": torch.randn(batch, steps, generator=gen).to(dev).requires_grad_(),
                "log_reward": torch.randn(batch, generator=gen).to(dev),
                "log_z": torch.zeros((), device=dev, requires_grad=True),
                "lengths": lengths,
            }

        for op, has_log_z in (("trajectory_balance", True), ("log_partition_variance", False)):
            names = ("log_pf", "log_pb", "log_z") if has_log_z else ("log_pf", "log_pb")

            def through(backend, op=op, has_log_z=has_log_z):
                fused = getattr(gfn_fast, op)
                if has_log_z:
                    return lambda s: fused(s["log_pf"], s["log_pb"], s["log_reward"], s["log_z"],
                                           lengths=s["lengths"], backend=backend)
                return lambda s: fused(s["log_pf"], s["log_pb"], s["log_reward"],
                                       lengths=s["lengths"], backend=backend)

            def plain(s, op=op, has_log_z=has_log_z):
                # the reference takes (..., log_z, beta, ...) for TB, (..., beta, ...) for
                # VarGrad
                head = (s["log_pf"], s["log_pb"], s["lengths"], False, s["log_reward"])
                tail = (None, -float("inf"), 0, 0.0, reference.MEAN)
                return getattr(reference, op)(*head, *((s["log_z"],) if has_log_z else ()),
                                              *tail)

            impls = {"eager": _fwd_bwd(plain, names),
                     "torch.compile": _fwd_bwd(compiled(plain), names)}
            for backend in timed_backends(device):
                impls[f"gfn_fast[{backend}]"] = _fwd_bwd(through(backend), names)
            # bytes: read log_pf and log_pb once, write their gradients once (per-row terms
            # ignored)
            label = "TB" if has_log_z else "VarGrad"
            cases.append(Case(op, f"{label} B={batch} T={steps} fp32 fwd+bwd",
                              {"B": batch, "T": steps, "dtype": "float32", "layout": "padded"},
                              4 * batch * steps * 4, setup, impls))
    return cases


class _AsFloat(torch.nn.Module):
    """torchgfn's k-hot preprocessor yields integers; the shared network takes floats."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.float())


def rollout_cases(device: torch.device, quick: bool) -> list[Case]:
    """HyperGrid(4, 8) trajectories sampled by the same MLP policy: gfn_fast's rollout (fused
    sampler; "eager" is the same loop on the reference sampler) and torchgfn's Sampler."""
    from gfn_fast.envs import HyperGrid
    from gfn_fast.rollout import sample_trajectories

    cpu_sizes = [4096, 16384, 65536]
    sizes = [1024] if quick else (cpu_sizes if device.type == "cpu" else [65536, 1_000_000])
    cases = []
    for n in sizes:
        def setup(dev, n=n):
            torch.manual_seed(0)
            env = HyperGrid(ndim=4, height=8, device=dev)
            net = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.LeakyReLU(),
                                      torch.nn.Linear(128, 128), torch.nn.LeakyReLU(),
                                      torch.nn.Linear(128, 5)).to(dev)
            # one policy object: a CUDA-graphed rollout is cached per (policy, env, n, ...)
            state = {"env": env, "net": net, "policy": lambda f, _: net(f)}
            # the row counts gfn_fast's rollout hands the policy (live rows on CPU), for the
            # "policy network alone" floor below; counted on the reference sampler (the same
            # trajectories), so that the fused rows' first calls, timed after setup, include
            # their kernels' compilation
            rows = []
            with torch.no_grad():
                sample_trajectories(lambda f, _: rows.append(f.shape[0]) or net(f), env, n,
                                    seed=0, backend="reference")
            state["policy_rows"] = rows
            state["policy_input"] = torch.zeros(max(rows), 32, device=dev)
            return state

        def policy_alone(state):
            """The same network on the same rows with nothing else: the floor of any sampler
            that calls it, and so the ceiling of every ratio against torchgfn in this case."""
            with torch.no_grad():
                features = state["policy_input"]
                return [state["net"](features[:m]) for m in state["policy_rows"]][-1]

        def ours(backend, n=n, graph=False):
            def call(state):
                with torch.no_grad():
                    return sample_trajectories(state["policy"], state["env"], n, seed=0,
                                               backend=backend, cuda_graph=graph).lengths
            return call

        impls = {"eager": ours("reference"), "policy network alone (floor)": policy_alone}
        for backend in timed_backends(device):
            impls[f"gfn_fast[{backend}]"] = ours(backend)
            if device.type == "cuda":
                impls[f"gfn_fast[{backend}] + CUDA graph"] = ours(backend, graph=True)
        # torchgfn is imported at the row's first call: importing it at once brings in
        # torch._dynamo and torch_geometric (~1.5 s), which a run's other rows never need
        if importlib.util.find_spec("gfn") is not None:
            def torchgfn(state, n=n):
                if "sampler" not in state:
                    from gfn.gym import HyperGrid as TorchgfnHyperGrid
                    from gfn.modules import DiscretePolicyEstimator
                    from gfn.preprocessors import KHotPreprocessor
                    from gfn.samplers import Sampler

                    env = TorchgfnHyperGrid(ndim=4, height=8, device=device)
                    estimator = DiscretePolicyEstimator(
                        _AsFloat(state["net"]), n_actions=env.n_actions,
                        preprocessor=KHotPreprocessor(height=8, ndim=4))
                    state["sampler"] = (Sampler(estimator=estimator), env)
                sampler, env = state["sampler"]
                with torch.no_grad():
                    return sampler.sample_trajectories(env, n=n)
            impls["torchgfn.Sampler"] = torchgfn
        cases.append(Case("sample_trajectories", f"HyperGrid(4,8) N={n}",
                          {"N": n, "ndim": 4, "height": 8}, 0, setup, impls, items=n,
                          item_name="traj/s", graph=False, min_reps=3 if n > 100_000 else 10,
                          # at N = 10^6 on a GPU two runs hit their time limit in this case
                          max_seconds=60.0 if n > 100_000 else None))
    return cases


def sampling_cases(device: torch.device, quick: bool) -> list[Case]:
    from gfn_fast.bench_cases.sampling import sampling_cases as cases

    return cases(device, quick)


def subtb_cases(device: torch.device, quick: bool) -> list[Case]:
    from gfn_fast.bench_cases.subtb import subtb_cases as cases

    return cases(device, quick)


def bfn_cases(device: torch.device, quick: bool) -> list[Case]:
    from gfn_fast.bench_cases.bfn import FAMILIES

    return [case for build in FAMILIES.values() for case in build(device, quick)]


CASE_FAMILIES = {"balance": balance_cases, "subtb": subtb_cases, "rollout": rollout_cases,
                 "sampling": sampling_cases, "bfn": bfn_cases}
FAMILY_HELP = {"balance": "trajectory balance and VarGrad",
               "subtb": "detailed and sub-trajectory balance "
               "(and torchgfn's SubTB loss when installed)", "rollout": "HyperGrid rollouts "
               "(and torchgfn's Sampler)", "sampling": "sample_actions, action_log_prob",
               "bfn": "Bayesian Flow Network flows, losses, generation steps and updates"}


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


SUPERSEDED = "SUPERSEDED"


def _run_heading(name: str, rows: list) -> str:
    first = rows[0]
    parts = [first.get("device_name", "?")]
    if first.get("date"):
        parts.append(str(first["date"])[:10])
    if first.get("copy_gbps"):
        parts.append(f"copy bandwidth {first['copy_gbps']:.1f} GB/s")
    torch_version = first.get("versions", {}).get("torch")
    if torch_version:
        parts.append(f"torch {torch_version}")
    return f"**{name}**: " + ", ".join(parts)


def results_summary(directory: str | Path) -> str:
    """Markdown over the recorded runs under `directory` (*/results.jsonl): one table per
    current run (each implementation's median time and speed-up against eager; % of the run's
    measured copy bandwidth where the case has a bytes model; items per second where it counts
    items; on a GPU the same for the CUDA-graph replay, the device time). A run whose directory
    holds a file named SUPERSEDED is not tabled: it is listed after the tables with that file's
    first line (what replaced it), so a reader sees only the figures of the current code."""
    def ratio(value):
        return "" if value is None else f"{value:.2f}x"

    def number(value, fmt):
        return "" if value is None else format(value, fmt)

    blocks, old = [], []
    for path in sorted(Path(directory).glob("*/results.jsonl")):
        name = path.parent.name
        marker = path.parent / SUPERSEDED
        if marker.is_file():
            lines = marker.read_text().strip().splitlines()
            old.append(f"`{name}` ({lines[0] if lines else 'superseded'})")
            continue
        rows = [row for row in map(json.loads, path.read_text().splitlines())
                if "median_ms" in row or "error" in row]
        if not any("median_ms" in row for row in rows):
            continue
        graph = any("graph_ms" in row or "graph_error" in row for row in rows)
        items = any("items_per_s" in row for row in rows)
        head = ["op", "case", "impl", "median ms", "vs eager", "% copy BW"]
        head += ["items/s"] if items else []
        head += ["graph ms", "graph vs eager", "graph % copy BW"] if graph else []
        head += ["peak MB"]
        table = [_run_heading(name, rows), "",
                 "| " + " | ".join(head) + " |",
                 "|---|---|---|" + "---:|" * (len(head) - 3)]
        for row in rows:
            if "median_ms" not in row:  # a failed row is listed, not left out
                cells = [row["op"], row["case"], row["impl"],
                         "error: " + _table_text(row["error"], 80)]
                table.append("| " + " | ".join(cells + [""] * (len(head) - 4)) + " |")
                continue
            cells = [row["op"], row["case"], row["impl"], f"{row['median_ms']:.3f}",
                     ratio(row.get("speedup_vs_eager")),
                     f"{row['pct_copy_bw']:.0f}%" if row.get("bytes_moved") else ""]
            if items:
                cells.append(number(row.get("items_per_s"), ".3g"))
            if graph and "graph_error" in row:
                cells += ["not capturable: " + _table_text(row["graph_error"], 60), "", ""]
            elif graph:
                cells += [number(row.get("graph_ms"), ".4f"),
                          ratio(row.get("graph_speedup_vs_eager")),
                          f"{row['graph_pct_copy_bw']:.0f}%"
                          if row.get("bytes_moved") and "graph_pct_copy_bw" in row else ""]
            cells.append(f"{row['peak_mem_mb']:.1f}")
            table.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(table))
    if old:
        blocks.append("Superseded runs, kept in `bench/results/` for the record and not tabled: "
                      + "; ".join(old) + ".")
    return "\n\n".join(blocks)


def _table_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters for a markdown table cell (one line, no pipes)."""
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def update_readme(readme: str | Path, directory: str | Path) -> None:
    """Replace the README's results section (between the results markers) with the summary.
    SystemExit, leaving the README as it was, when it has no markers or `directory` no run
    (say, a run's own directory given for its parent: the section would be emptied)."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"--update-readme: {readme} has no results section (a line "
                         f"{README_START} and, after it, a line {README_END})")
    summary = results_summary(directory)
    if not summary:
        raise SystemExit(f"--update-readme: no recorded run under {directory} (it should hold "
                         "one directory per run, each with a results.jsonl)")
    start += len(README_START)
    readme.write_text(text[:start] + "\n" + summary + "\n" + text[end:])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run, read from CASE_FAMILIES as it is when called (bench/bench_bfn.py
    swaps in the BFN families first). --ops defaults to None: every family of CASE_FAMILIES as
    it is when the run starts."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--ops", default=None,
                        help="comma-separated op families (default: all): " + "; ".join(
                            f"{name} = {FAMILY_HELP[name]}" for name in CASE_FAMILIES))
    parser.add_argument("--quick", action="store_true",
                        help="one small size per case, short timings, no torch.compile rows")
    parser.add_argument("--out", default=None,
                        help="directory for results.jsonl, results.md and one PNG plot per op")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave the torch.compile rows out (their first calls dominate a "
                        "short GPU run)")
    parser.add_argument("--compile-workers", type=at_least(0), default=None, metavar="N",
                        help="on a CPU, processes that compile the Numba kernels before the "
                        "timing while this one compiles the torch.compile baselines (default: "
                        "one less than the CPU count, at most 4; 0: compile each in its case)")
    parser.add_argument("--min-seconds", type=positive_float, default=None,
                        help="minimum timing per row (default 1.0, --quick 0.2)")
    parser.add_argument("--update-readme", nargs=2, metavar=("README", "RESULTS_DIR"),
                        help="only rewrite README's results table from RESULTS_DIR/*/results.jsonl")
    parser.add_argument("--plots-only", metavar="DIR",
                        help="only redraw the PNG plots of DIR/results.jsonl (a recorded run)")


def build_cases(families: list[str], device: torch.device, quick: bool,
                compile_rows: bool = True) -> list[Case]:
    """The cases of `families` (CASE_FAMILIES names). --quick runs, and runs without
    `compile_rows`, lose the torch.compile rows (module docstring); dropped before any call,
    they cost nothing, as torch.compile only compiles on a first call."""
    cases = [case for family in families for case in CASE_FAMILIES[family](device, quick)]
    if quick or not compile_rows:
        for case in cases:
            case.impls = {name: fn for name, fn in case.impls.items()
                          if not name.startswith("torch.compile")}
    return cases


def parse_families(ops: str) -> list[str]:
    """'balance, bfn' -> ['balance', 'bfn'] (a family named twice runs once); ValueError naming
    the unknown ones (or an empty list) and the choices."""
    families = list(dict.fromkeys(f.strip() for f in ops.split(",") if f.strip()))  # once each
    unknown = [f for f in families if f not in CASE_FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown --ops {unknown or ops!r}; choose from {list(CASE_FAMILIES)}")
    return families


def _run_flags(args: argparse.Namespace) -> list[str]:
    """The flags given that shape a benchmark run (meaningless beside --update-readme or
    --plots-only, which run nothing)."""
    def given(name, default=None):
        return getattr(args, name, default) not in (default, False)
    flags = {"--device": given("device"), "--ops": given("ops"),
             "--quick": given("quick"), "--out": given("out"), "--no-compile": given("no_compile"),
             "--compile-workers": given("compile_workers"), "--min-seconds": given("min_seconds")}
    return [flag for flag, on in flags.items() if on]


def main(args: argparse.Namespace) -> int:
    only = [flag for flag, value in (("--update-readme", getattr(args, "update_readme", None)),
                                     ("--plots-only", getattr(args, "plots_only", None))) if value]
    if only and (len(only) > 1 or _run_flags(args)):
        raise SystemExit(f"{only[0]} runs nothing, so it takes no other option; got "
                         f"{', '.join(only[1:] + _run_flags(args))} beside it")
    if getattr(args, "update_readme", None):
        for path in (args.update_readme[0], args.update_readme[1]):
            if not Path(path).exists():
                raise SystemExit(f"--update-readme: {path} does not exist")
        update_readme(*args.update_readme)
        return 0
    if getattr(args, "plots_only", None):
        results = Path(args.plots_only) / "results.jsonl"
        if not results.is_file():
            raise SystemExit(f"--plots-only: no results.jsonl in {args.plots_only}")
        if not any(line.strip() for line in results.read_text().splitlines()):
            raise SystemExit(f"--plots-only: {results} holds no rows")
        write_plots(bench_plots.plot_results_dir, args.plots_only)
        return 0
    if args.device not in (None, "cpu", "cuda") and not str(args.device).startswith("cuda:"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available here")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    min_seconds = args.min_seconds if args.min_seconds is not None else (
        0.2 if args.quick else 1.0)
    try:
        families = parse_families(",".join(CASE_FAMILIES) if args.ops is None else args.ops)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out = output_dir(args.out) if args.out else None  # before any work
    bandwidth = copy_bandwidth(device)
    header = {"device": str(device), "device_name": device_name(device),
              "copy_gbps": bandwidth / 1e9, "versions": _versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "backends": {k: v["devices"] for k, v in _backends.backends().items()}}
    cases = build_cases(families, device, args.quick,
                        compile_rows=not getattr(args, "no_compile", False))
    if out is not None:
        (out / "results.jsonl").write_text("")
    workers = getattr(args, "compile_workers", None)
    if workers is None:
        workers = min(4, (os.cpu_count() or 1) - 1)
    first_calls = compile_ahead(
        cases, [CASE_FAMILIES[family] for family in families], args.quick, device, workers,
        lambda what: print(f"\r[compiling] {what:<60}", end="", flush=True))
    rows = []
    for index, case in enumerate(cases, 1):
        def progress(what, index=index):
            print(f"\r[{index}/{len(cases)}] {what:<60}", end="", flush=True)
        case_rows = run_case(case, device, bandwidth, min_seconds=min_seconds, progress=progress,
                             first_calls=first_calls.get(index - 1))
        rows.extend(case_rows)
        if out is not None:  # each case as it finishes: a run cut short keeps what it measured
            with open(out / "results.jsonl", "a") as f:
                for row in case_rows:
                    f.write(json.dumps({**header, **row}) + "\n")
    print("\r" + " " * 72 + "\r", end="")
    table = markdown(rows, header)
    print(table)
    if out is not None:
        (out / "results.md").write_text(table + "\n")
        print(f"wrote {out / 'results.jsonl'} and {out / 'results.md'}")
        write_plots(lambda out: bench_plots.plot_rows(rows, out, header), out)
    return 0


def write_plots(draw: Callable, out: str | Path) -> None:
    """Draw the PNG plots with `draw(out)`; without matplotlib say how to get it, in one line."""
    try:
        paths = draw(out)
    except ImportError as err:
        print(f"no plots ({err.name or 'matplotlib'} is missing): plots need "
              f'`pip install -e ".[bench]"`')
        return
    if paths:
        print(f"wrote {len(paths)} plot(s): {', '.join(str(p) for p in paths)}")
