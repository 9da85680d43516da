"""Command line: `python -m gfn_fast info` prints the backends; `python -m gfn_fast bench`
runs the benchmark (see gfn_fast.benchmark); `python -m gfn_fast demo gflownet` trains the
GFlowNet demo and `python -m gfn_fast demo bfn` the BFN demo."""

import argparse
import sys


def _info() -> int:
    import torch

    import gfn_fast

    print(f"gfn_fast {gfn_fast.__version__}, torch {torch.__version__}")
    for name, status in gfn_fast.backends().items():
        devices = ", ".join(status["devices"]) or "-"
        print(f"  {name:<10} {'available' if status['available'] else 'unavailable':<12} "
              f"devices: {devices}")
        for device, why in status["why_not"].items():
            print(f"  {'':<10} not on {device}: {why}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gfn_fast")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("info", help="list the backends and why any is unavailable")
    bench = commands.add_parser("bench", help="benchmark the ops against PyTorch")
    from gfn_fast import benchmark

    benchmark.add_arguments(bench)
    demo = commands.add_parser("demo", help="end-to-end demos")
    demos = demo.add_subparsers(dest="demo", required=True)
    from gfn_fast.demos import bfn, gflownet

    gflownet.add_arguments(demos.add_parser("gflownet", help="logit-scaling GFlowNet on "
                                            "HyperGrid, trained with the fused ops"))
    bfn.add_arguments(demos.add_parser("bfn", help="discrete BFN on scikit-learn's 8x8 digits"))
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    try:
        if args.command == "demo":
            {"gflownet": gflownet, "bfn": bfn}[args.demo].run(args)
            return 0
        if args.command == "bench":
            return benchmark.main(args)
    except ValueError as err:
        # gfn_fast's own input errors (a backend not available here, a bad environment size)
        # as one line, like argparse's; anything else keeps its traceback
        if not str(err).startswith("gfn_fast"):
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
