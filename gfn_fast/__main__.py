"""Command line: `python -m gfn_fast info` prints the backends; `python -m gfn_fast bench`
runs the benchmark (see gfn_fast.benchmark)."""

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
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "bench" or args.command is None:
        return benchmark.main(args if args.command == "bench" else
                              bench.parse_args([]))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
