"""Where each benchmark case's time goes, kernel by kernel.

For every case of the chosen bench families (the same cases `python -m gfn_fast bench` times)
and every implementation in it, run a few warm calls, then profile `--reps` calls with
torch.profiler and list the kernels by their time per call: device time on a GPU (what a CUDA
graph replay of the call costs, without launch gaps), self CPU time of each op on a CPU, beside
the call's median wall time. Where the kernels' sum is far under the wall time the call is
bound by launches and Python (on a CPU, a Numba kernel called directly, not through a torch op,
is part of that remainder). The table answers "which kernel is the gap" before any tuning; the
bench gives the end-to-end ratios.

    python bench/profile_kernels.py --ops bfn --device cuda --out profile.md
    python bench/profile_kernels.py --ops bfn --cases text8 --device cpu --quick
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gfn_fast import benchmark as harness


def kernel_times(call, device: torch.device, reps: int) -> tuple[list[tuple[str, float, float]],
                                                                   float]:
    """([(name, microseconds per call, launches per call)], total microseconds per call) over
    `reps` profiled calls: device kernels on a GPU, operators' self CPU time on a CPU."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    harness._sync(device)
    with profile(activities=activities) as prof:
        for _ in range(reps):
            call()
        harness._sync(device)
    rows = []
    for event in prof.key_averages():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue  # an operator: its kernels are listed as events of their own
        spent = event.device_time_total if cuda else event.self_cpu_time_total
        if spent > 0:
            rows.append((event.key, spent / reps, event.count / reps))
    rows.sort(key=lambda row: -row[1])
    return rows, sum(row[1] for row in rows)


def _short(name: str, width: int = 70) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[:width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="bfn", help=f"bench families: "
                        f"{', '.join(harness.CASE_FAMILIES)} (comma-separated; default bfn)")
    parser.add_argument("--cases", default="", help="only cases whose op or label contains one "
                        "of these comma-separated words")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--quick", action="store_true",
                        help="the bench's --quick sizes (no torch.compile rows)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave the torch.compile rows out, as the bench's --no-compile")
    parser.add_argument("--reps", type=int, default=20, help="profiled calls per implementation")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per implementation")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.top < 1:
        parser.error("--reps and --top must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    try:
        families = harness.parse_families(args.ops)
    except ValueError as err:
        parser.error(str(err))
    words = [w.strip().lower() for w in args.cases.split(",") if w.strip()]
    unit = "device us/call" if device.type == "cuda" else "self CPU us/call"
    lines = [f"Kernels by time per call on {harness.device_name(device)}, {args.reps} profiled "
             f"calls after 3 warm ones ({unit}; wall: median of as many timed calls).", "",
             "| case | impl | wall us | kernels us | kernel | us/call | share | launches/call |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    found = False
    for family in families:
        for case in harness.build_cases([family], device, args.quick,
                                        compile_rows=not args.no_compile):
            text = f"{case.op} {case.label}".lower()
            if words and not any(word in text for word in words):
                continue
            found = True
            for impl, fn in case.impls.items():
                state = case.setup(device)

                def call(fn=fn, state=state):
                    return fn(state)
                wall = sorted(harness.time_call(call, device, min_reps=args.reps,
                                                min_seconds=0.0, max_reps=args.reps))
                rows, total = kernel_times(call, device, args.reps)
                median = 1e6 * wall[len(wall) // 2]
                for rank, (name, spent, launches) in enumerate(rows[:args.top]):
                    head = (f"{case.op} {case.label}", impl, f"{median:.1f}", f"{total:.1f}") \
                        if rank == 0 else ("", "", "", "")
                    share = spent / total if total else 0.0
                    lines.append(f"| {' | '.join(head)} | {_short(name)} | {spent:.2f} | "
                                 f"{share:.0%} | {launches:g} |")
                print(f"{case.op} [{impl}]: {median:.1f} us/call wall, {total:.1f} in kernels",
                      file=sys.stderr, flush=True)
    if not found:
        parser.error(f"no case of {families} matches --cases {args.cases!r}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
