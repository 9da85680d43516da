"""The benchmark harness (gfn_fast.benchmark): results written case by case, and the tables'
CUDA-graph columns. The graph capture itself needs a GPU; its rows are built here by hand."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gfn_fast import benchmark


def _args(out, ops):
    return argparse.Namespace(device="cpu", ops=ops, quick=True, out=str(out), min_seconds=0.01,
                              update_readme=None, plots_only=None)


def test_a_run_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    calls = {"n": 0}

    def finished(device, quick):
        def setup(dev):
            return {"x": torch.ones(8)}
        return [benchmark.Case("toy", "finished", {}, 64, setup, {"eager": lambda s: s["x"] * 2})]

    def cut(device, quick):
        def setup(dev):
            raise KeyboardInterrupt  # the run is stopped (a time limit) during this case
        calls["n"] += 1
        return [benchmark.Case("toy", "cut", {}, 64, setup, {"eager": lambda s: s})]

    monkeypatch.setattr(benchmark, "CASE_FAMILIES", {"a": finished, "b": cut})
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda device: 1e10)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(_args(tmp_path, "a,b"))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert calls["n"] == 1
    assert [(r["case"], r["impl"]) for r in rows] == [("finished", "eager")]
    assert rows[0]["median_ms"] > 0 and rows[0]["first_call_ms"] > 0
    assert rows[0]["device"] == "cpu"


def test_a_new_run_replaces_the_old_results(tmp_path, monkeypatch):
    def family(device, quick):
        return [benchmark.Case("toy", "only", {}, 64, lambda dev: {"x": torch.ones(8)},
                               {"eager": lambda s: s["x"] + 1})]

    monkeypatch.setattr(benchmark, "CASE_FAMILIES", {"a": family})
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda device: 1e10)
    (tmp_path / "results.jsonl").write_text('{"stale": true}\n')
    benchmark.main(_args(tmp_path, "a"))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "stale" not in rows[0]


def test_no_compile_leaves_the_compiled_rows_out_uncompiled(tmp_path, monkeypatch):
    compiled = []

    def family(device, quick):
        def compiled_impl(state):
            compiled.append(1)  # stands for torch.compile's first call
            return state["x"] + 1
        return [benchmark.Case("toy", "only", {}, 64, lambda dev: {"x": torch.ones(8)},
                               {"eager": lambda s: s["x"] + 1, "torch.compile": compiled_impl})]

    monkeypatch.setattr(benchmark, "CASE_FAMILIES", {"a": family})
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda device: 1e10)
    # --quick drops them as --no-compile does (benchmark.build_cases)
    for quick, no_compile, impls in ((False, True, ["eager"]), (True, False, ["eager"]),
                                     (False, False, ["eager", "torch.compile"])):
        args = _args(tmp_path, "a")
        args.quick, args.no_compile = quick, no_compile
        benchmark.main(args)
        rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text()
                .splitlines()]
        assert [r["impl"] for r in rows] == impls
        assert bool(compiled) == (impls[-1] == "torch.compile")


def _graph_rows():
    base = {"op": "trajectory_balance", "case": "B=65536 T=128", "p20_ms": 0.9, "p80_ms": 1.1,
            "bytes_moved": 134217728, "gbps": 150.0, "pct_copy_bw": 5.0, "peak_mem_mb": 64.0,
            "device_name": "NVIDIA H100 80GB HBM3"}
    return [
        dict(base, impl="eager", median_ms=0.8, speedup_vs_eager=1.0, graph_ms=0.28,
             graph_p20_ms=0.27, graph_p80_ms=0.29, graph_gbps=470.0, graph_pct_copy_bw=16.0,
             graph_speedup_vs_eager=1.0),
        dict(base, impl="gfn_fast[triton]", median_ms=0.7, speedup_vs_eager=0.8 / 0.7,
             graph_ms=0.077, graph_p20_ms=0.076, graph_p80_ms=0.078, graph_gbps=1740.0,
             graph_pct_copy_bw=58.0, graph_speedup_vs_eager=0.28 / 0.077),
        dict(base, impl="torchgfn", median_ms=5.0, speedup_vs_eager=0.16,
             graph_error="RuntimeError('sync during capture')"),
    ]


def test_markdown_has_a_device_time_table_for_graphed_rows():
    header = {"device_name": "NVIDIA H100 80GB HBM3", "device": "cuda", "copy_gbps": 2980.0,
              "date": "2026-11-24", "versions": {"torch": "2.11"}}
    text = benchmark.markdown(_graph_rows(), header)
    graph_part = text.split("Device time:")[1]
    assert "| gfn_fast[triton] | 0.0770 | 0.0760-0.0780 | 1740.0 | 58% | 3.64x |" in graph_part
    assert "| torchgfn | not capturable: RuntimeError('sync during capture')" in graph_part
    cpu_only = [dict(r) for r in _graph_rows()]
    for r in cpu_only:
        for key in [k for k in r if k.startswith("graph")]:
            del r[key]
    assert "Device time:" not in benchmark.markdown(cpu_only, header)


def test_results_summary_shows_graph_time_where_recorded(tmp_path):
    run = tmp_path / "h100"
    run.mkdir()
    run.joinpath("results.jsonl").write_text(
        "\n".join(json.dumps(r) for r in _graph_rows()) + "\n")
    lines = benchmark.results_summary(tmp_path).splitlines()
    assert lines[0].startswith("**h100**: NVIDIA H100 80GB HBM3")
    header = next(line for line in lines if line.startswith("| op |"))
    assert "graph ms" in header and "graph vs eager" in header and "items/s" not in header
    triton = next(line for line in lines if "gfn_fast[triton]" in line)
    assert "| 0.700 | 1.14x | 5% | 0.0770 | 3.64x | 58% | 64.0 |" in triton
    peer = next(line for line in lines if "torchgfn" in line)
    assert peer.endswith("| 5.000 | 0.16x | 5% | not capturable: RuntimeError('sync during "
                         "capture') |  |  | 64.0 |")


def test_results_summary_tables_current_runs_and_lists_superseded_ones(tmp_path):
    cpu_rows = [dict(r) for r in _graph_rows()[:2]]
    for r in cpu_rows:
        for key in [k for k in r if k.startswith("graph")]:
            del r[key]
        r.update(device_name="AMD EPYC (2 threads)", date="2026-12-07T13:00:00+00:00",
                 copy_gbps=29.8, items=4096, items_per_s=4096 / r["median_ms"] * 1e3)
    for name, rows in (("cpu-new", cpu_rows), ("cpu-old", cpu_rows)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(
            "\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "cpu-old" / benchmark.SUPERSEDED).write_text("by cpu-new, later kernels\nmore")
    text = benchmark.results_summary(tmp_path)
    assert "**cpu-new**: AMD EPYC (2 threads), 2026-12-07, copy bandwidth 29.8 GB/s" in text
    assert "**cpu-old**" not in text and text.count("| gfn_fast[triton] |") == 1
    assert text.endswith("not tabled: `cpu-old` (by cpu-new, later kernels).")
    header = next(line for line in text.splitlines() if line.startswith("| op |"))
    assert "items/s" in header and "graph" not in header
    eager = next(line for line in text.splitlines() if "| eager |" in line)
    assert eager.endswith("| 0.800 | 1.00x | 5% | 5.12e+06 | 64.0 |")


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py")
                 if "__main__" in p.read_text() and not p.name.startswith("test_"))


def _run_script(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_scripts_parse_their_arguments(script):
    """Each bench/ script builds its command line (bench_bfn.py once failed here: its case
    families had no help text in the harness)."""
    result = _run_script(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_bench_bfn_script_runs_and_labels_its_rows(tmp_path):
    result = _run_script(ROOT / "bench" / "bench_bfn.py", "--device", "cpu", "--quick", "--ops",
                         "cifar", "--min-seconds", "0.01", "--out", str(tmp_path), "--label", "ci")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "median_ms" in r]
    assert {r["impl"] for r in timed} >= {"eager", "gfn_fast[numba]"}
    assert all(r["device_label"] == "ci" and r["op"] == "bfn_continuous_flow+loss" for r in rows)


def test_gpu_session_script_rehearses_on_a_cpu(tmp_path):
    """tools/gpu_session.sh is what a session with a lent GPU runs in its one device call; its
    stages, limits and output files are rehearsed here on the CPU: the profile stage writes the
    kernel table, stages not asked for do not run, and the summary gives each stage's status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OUT=str(tmp_path), DEVICE="cpu", QUICK="1",
               STAGES="profile", PROFILE_CASES="cifar", PREFIX="rehearsal")
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_session.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.md", "session.log"]
    log = (tmp_path / "session.log").read_text()
    assert "profile: exit 0" in log and "== build" not in log and "== test" not in log
    table = (tmp_path / "profile.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| bfn_")]
    # the CIFAR-shaped cases: flow + loss, the continuous and discretised generation steps,
    # the update alone
    assert [row.split(" | ")[1] for row in rows] == ["eager", "gfn_fast[numba]"] * 4
    assert all("B=8 D=3072" in row for row in rows)  # --quick sizes, CIFAR cases only
    assert not list((ROOT / "bench" / "results").glob("rehearsal-*"))


def test_profile_script_refuses_bad_arguments():
    script = ROOT / "bench" / "profile_kernels.py"
    for args, message in ((["--ops", "nope"], "unknown --ops"),
                          (["--device", "cpu", "--cases", "nothing_like_this"], "no case"),
                          (["--reps", "0"], "at least 1")):
        result = _run_script(script, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_side_by_side_timing_stops_at_its_budget():
    """A slow case stops after max_seconds with a sample of every implementation, not after
    min_reps rounds (at N = 10^6 on a GPU, min_reps rounds outran the run's time limit)."""
    slow_calls = []

    def slow():
        slow_calls.append(1)
        time.sleep(0.2)

    calls = {"slow": slow, "fast": lambda: None}
    started = time.perf_counter()
    samples = benchmark.time_side_by_side(calls, torch.device("cpu"), min_seconds=0.01,
                                          min_reps=5, max_seconds=0.5)
    elapsed = time.perf_counter() - started
    assert 1 <= len(samples["slow"]) == len(samples["fast"]) < 5
    assert elapsed < 0.5 + 0.2 + 0.2  # the budget, the round running when it ran out, slack
    assert min(samples["slow"]) >= 0.2
    unbounded = benchmark.time_side_by_side(calls, torch.device("cpu"), min_seconds=0.01,
                                            min_reps=4)
    assert len(unbounded["slow"]) == 4


def test_cpu_peak_memory_is_the_allocators_high_water_mark_within_the_call():
    """Exact bytes: 1 MiB and 2 MiB live, 1 MiB freed, 4 MiB more (peak 6 MiB); a tensor made
    before the call and freed inside it lowers the running total, which the peak is measured
    from; nothing allocated gives 0."""
    mib = 2**20
    held = [torch.empty(3 * mib, dtype=torch.uint8)]

    def sequence():
        a = torch.empty(mib, dtype=torch.uint8)
        b = torch.empty(2 * mib, dtype=torch.uint8)
        del a
        c = torch.empty(4 * mib, dtype=torch.uint8)
        return b, c

    def frees_first():
        held.pop()  # 3 MiB that existed before the call
        return torch.empty(2 * mib, dtype=torch.uint8)

    cpu = torch.device("cpu")
    assert benchmark.peak_memory(sequence, cpu) == 6 * mib
    assert benchmark.peak_memory(frees_first, cpu) == 2 * mib
    assert benchmark.peak_memory(lambda: None, cpu) == 0


def test_cpu_peak_memory_counts_a_numba_kernels_outputs():
    """The Numba backend's output pool is off while measuring: a TB forward + backward at
    B = 4096, T = 64 allocates its [B, T] float32 gradients (1 MiB each) and they count."""
    import gfn_fast

    log_pf = torch.randn(4096, 64, requires_grad=True)
    log_pb = torch.randn(4096, 64, requires_grad=True)
    log_r = torch.randn(4096)

    def step():
        loss = gfn_fast.trajectory_balance(log_pf, log_pb, log_r, torch.tensor(0.0),
                                           backend="numba").sum()
        return torch.autograd.grad(loss, (log_pf, log_pb))

    step()
    assert benchmark.peak_memory(step, torch.device("cpu")) >= 2 * 4096 * 64 * 4


_COMPILE_PROBE = """
import json, sys
from numba.core import event

from gfn_fast import benchmark

compiled = []
timing = []  # non-empty once the first case's timing has started


class Recorder(event.Listener):
    def on_start(self, ev):
        if timing:  # compiles ahead of the timing (in a worker or here) are the design
            compiled.append(ev.data["dispatcher"].py_func.__module__)

    def on_end(self, ev):
        pass


def run_case(*args, _run_case=benchmark.run_case, **kwargs):
    timing.append(True)
    return _run_case(*args, **kwargs)


benchmark.run_case = run_case
event.register("numba:compile", Recorder())
from gfn_fast.__main__ import main

main(["bench", "--device", "cpu", "--quick", "--ops", "balance", "--min-seconds", "0.01",
      "--compile-workers", sys.argv[1], "--out", sys.argv[2]])
print("COMPILED " + json.dumps(sorted({m for m in compiled if m.startswith("gfn_fast")})))
"""


@pytest.mark.parametrize("workers", [1, 0])
def test_compile_workers_leave_nothing_to_compile_beside_the_timing(tmp_path, workers):
    """With a compile worker, the Numba kernels of a CPU bench are compiled ahead of the timing
    (in the worker, into an empty Numba cache, or in this process, which takes cases from the
    same queue once it has made its torch.compile first calls; --quick has none) and the timing
    only loads them; with none (the control, which shows the probe sees compiles), the timing
    compiles them itself."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    result = subprocess.run([sys.executable, "-c", _COMPILE_PROBE, str(workers),
                             str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    compiled = json.loads(result.stdout.rsplit("COMPILED ", 1)[1])
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text()
            .splitlines()]
    numba_row = next(r for r in rows if r["impl"] == benchmark.NUMBA_IMPL)
    assert "error" not in numba_row and numba_row["first_call_ms"] > 0
    if workers:
        assert compiled == []
        assert list((tmp_path / "numba").rglob("balance.*.nbi"))  # the worker's build
    else:
        assert compiled == ["gfn_fast.cpu.balance"]


def test_a_worker_that_cannot_build_the_cases_leaves_them_to_this_process():
    """Cases from a family defined inside a function cannot be rebuilt in a worker: the worker
    stops, and its case is compiled (here: called) in this process instead, still ahead of the
    timing."""
    calls = []

    def family(device, quick):
        def numba_impl(state):
            calls.append(os.getpid())
            return state["x"] + 1
        return [benchmark.Case("toy", "local", {}, 64, lambda dev: {"x": torch.ones(8)},
                               {"eager": lambda s: s["x"] + 1,
                                benchmark.NUMBA_IMPL: numba_impl})]

    cases = family(None, True)
    first = benchmark.compile_ahead(cases, [family], True, torch.device("cpu"), workers=1)
    assert calls == [os.getpid()]
    assert set(first) == {0} and first[0][benchmark.NUMBA_IMPL] >= 0
    assert benchmark.compile_ahead(cases, [family], True, torch.device("cuda"), workers=1) == {}
    assert calls == [os.getpid()]  # nothing ahead of time on a GPU


def test_cpu_device_name_names_the_model_and_the_llvm_target():
    """CPU results depend on the CPU model and on LLVM's tuning for it, not only on the thread
    count: the recorded name carries both where they can be read."""
    name = benchmark.device_name(torch.device("cpu"))
    assert name.endswith(f"({torch.get_num_threads()} threads)")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        assert not models or name.startswith(models[0])
    import llvmlite.binding
    assert f"LLVM target {llvmlite.binding.get_host_cpu_name()}" in name or \
        os.environ.get("NUMBA_CPU_NAME")


def test_the_rollout_floor_runs_the_policy_on_the_rows_the_rollout_gave_it():
    """The rollout cases' "policy network alone" row (the ceiling of every ratio against
    torchgfn) calls the network on exactly the row counts of gfn_fast's rollout: on CPU the live
    rows, one policy call per transition of each trajectory, so their sum is the lengths' sum."""
    from gfn_fast.rollout import sample_trajectories

    (case,) = benchmark.rollout_cases(torch.device("cpu"), quick=True)
    floor = case.impls["policy network alone (floor)"]
    state = case.setup(torch.device("cpu"))
    rows = state["policy_rows"]
    with torch.no_grad():
        lengths = sample_trajectories(state["policy"], state["env"], case.params["N"],
                                      seed=0).lengths
    assert rows[0] == case.params["N"] and rows == sorted(rows, reverse=True)
    assert sum(rows) == int(lengths.sum()) and len(rows) == int(lengths.max())
    out = floor(state)
    assert out.shape == (rows[-1], state["env"].n_actions)


def test_cpu_peak_memory_of_a_call_that_replaces_an_earlier_calls_output():
    """A step that frees the buffer the previous step allocated (a gradient set to None, then
    made anew) allocates 2 MiB each time. CPU frees are reported for blocks allocated while a
    profiler recorded memory, so the first measurement's buffer was netted against the
    second's: 2 MiB, then 0."""
    mib = 2**20
    held = [torch.empty(2 * mib, dtype=torch.uint8)]

    def replace():
        held.pop()
        held.append(torch.empty(2 * mib, dtype=torch.uint8))

    cpu = torch.device("cpu")
    assert [benchmark.peak_memory(replace, cpu) for _ in range(3)] == [2 * mib] * 3


def _toy_case(impls):
    return benchmark.Case("toy", "toy", {}, 64, lambda dev: {"x": torch.ones(8)}, impls)


def test_a_failed_eager_row_leaves_the_others_without_a_ratio():
    """The rows are compared with the implementation named "eager"; when it fails they get no
    ratio (they were silently compared with the next eager-named row instead), and each ratio
    names its baseline."""
    def fails(state):
        raise RuntimeError("no")

    case = _toy_case({"eager": fails, "eager O(K) reference": lambda s: s["x"] * 2,
                      "gfn_fast[numba]": lambda s: s["x"] + 1})
    rows = benchmark.run_case(case, torch.device("cpu"), 1e10, min_seconds=0.01)
    assert [r["impl"] for r in rows if "error" in r] == ["eager"]
    assert not any("speedup_vs_eager" in r for r in rows)
    case = _toy_case({"eager (materialises)": lambda s: s["x"] * 2,
                      "gfn_fast[numba]": lambda s: s["x"] + 1})
    rows = benchmark.run_case(case, torch.device("cpu"), 1e10, min_seconds=0.01)
    assert all(r["speedup_baseline"] == "eager (materialises)" for r in rows)
    assert rows[0]["speedup_vs_eager"] == 1.0


def test_results_summary_lists_failed_rows(tmp_path):
    """A recorded run's failed rows (a case whose setup failed, a row that could not be
    captured) appear in the README table with their error; they used to be left out."""
    rows = _graph_rows()
    rows.append({**rows[0], "case": "broken", "impl": "eager",
                 "error": "setup: RuntimeError('Offset | increment\noutside graph capture')"})
    for key in [k for k in rows[-1] if k not in ("op", "case", "impl", "error", "device_name",
                                                 "date", "copy_gbps", "device", "versions")]:
        del rows[-1][key]
    (tmp_path / "h100").mkdir()
    (tmp_path / "h100" / "results.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n")
    lines = benchmark.results_summary(tmp_path).splitlines()
    header = next(line for line in lines if line.startswith("| op |"))
    failed = next(line for line in lines if "broken" in line)
    assert failed.count("|") == header.count("|")  # the error's own "|" became "/"
    assert "| broken | eager | error: setup: RuntimeError('Offset / increment outside " \
           "graph capture') |" in failed
    peer = next(line for line in lines if "torchgfn" in line)
    assert "| not capturable: RuntimeError('sync during capture') |" in peer


def test_bench_bfn_script_runs_every_bfn_family_by_default(monkeypatch):
    """bench/bench_bfn.py swaps the harness's families for the BFN ones; without --ops it runs
    all of those (it exited naming the harness's own families as unknown)."""
    import importlib.util

    from gfn_fast.bench_cases.bfn import FAMILIES

    monkeypatch.setattr(benchmark, "CASE_FAMILIES", dict(benchmark.CASE_FAMILIES))
    monkeypatch.setattr(benchmark, "FAMILY_HELP", dict(benchmark.FAMILY_HELP))
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda device: 1e10)

    class Built(Exception):
        pass

    def build_cases(families, *args, **kwargs):
        raise Built(families)

    monkeypatch.setattr(benchmark, "build_cases", build_cases)
    monkeypatch.setattr(sys, "argv", ["bench_bfn.py", "--device", "cpu", "--quick"])
    spec = importlib.util.spec_from_file_location("bench_bfn", ROOT / "bench" / "bench_bfn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(Built) as built:
        module.main()
    assert built.value.args[0] == list(FAMILIES)


def test_generation_steps_report_data_elements():
    """Every BFN case that reports elements per second counts a step's B x D data elements,
    in its params as in its items (the discrete step's params said B x D x K)."""
    from gfn_fast.bench_cases.bfn import step_cases

    cases = step_cases(torch.device("cpu"), quick=True)
    assert len(cases) == 3
    for case in cases:
        assert case.items == case.params["elements"] == case.params["B"] * case.params["D"]


def test_setups_leave_the_fused_kernels_to_their_first_call(monkeypatch):
    """The rollout case counts its policy rows, and the torchgfn SubTB cases check agreement,
    on the reference: a fused backend called in a setup compiled its kernels there, outside the
    first call the bench reports (29.8 s of a rollout's compilation went unreported)."""
    import importlib.util

    from gfn_fast import _backends
    from gfn_fast.bench_cases import subtb as subtb_cases

    resolved = []
    resolve = _backends.resolve

    def recording(op, backend, device):
        name = resolve(op, backend, device)
        resolved.append(name)
        return name

    monkeypatch.setattr(_backends, "resolve", recording)
    cases = benchmark.rollout_cases(torch.device("cpu"), quick=True)
    if importlib.util.find_spec("gfn") is not None:
        cases += subtb_cases.torchgfn_cases(torch.device("cpu"), quick=True)
    assert len(cases) >= 1
    for case in cases:
        case.setup(torch.device("cpu"))
    assert resolved and set(resolved) == {"reference"}
