"""argparse value types for the command line: bad values stop before any work, as a one-line
usage error instead of a traceback after minutes of training."""

import argparse
import math
import os
import tempfile
from pathlib import Path


def at_least(minimum: int):
    """An int type accepting values >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


positive_int = at_least(1)


def output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` created (with its parents) and shown writable, or SystemExit with one line: called
    before any work, so a bad --out does not end a run in a traceback after the work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        reason = f"{err.strerror} ({err.filename})" if err.strerror else str(err)
        raise SystemExit(f"{flag} {path}: cannot write there: {reason}") from None
    return out
