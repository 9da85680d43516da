"""PNG plots of benchmark rows (gfn_fast.benchmark): one figure per op, two panels side by side.

Left: median time per implementation per case, on a log scale, with the 20th-80th percentile
range as an error bar. Right: speed-up against eager PyTorch (the reference), with 1x marked.
Cases run down the vertical axis so their long labels stay readable.

matplotlib is optional (the `bench` extra); `plot_rows` raises ImportError without it and the
harness reports that in one line.
"""

import json
import re
from pathlib import Path

SPEEDUP_BASELINE = "eager"


def _safe_name(op: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", op)


def _ordered(values) -> list:
    seen: dict = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


def plot_op(rows: list[dict], path: str | Path, title: str) -> Path:
    """Write one PNG for the timed rows of one op (rows without "median_ms" are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    timed = [r for r in rows if "median_ms" in r]
    cases = _ordered(r["case"] for r in timed)
    impls = _ordered(r["impl"] for r in timed)
    per_case = {case: [r for r in timed if r["case"] == case] for case in cases}
    height = 0.8 / max(len(case_rows) for case_rows in per_case.values())
    colours = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 1.2 + 0.4 * sum(max(len(r), 2) for r in per_case.values())),
        sharey=True, squeeze=True)
    labelled = set()
    for c, case in enumerate(cases):
        # cases top to bottom, implementations in harness order within a case
        for k, row in enumerate(per_case[case]):
            position = len(cases) - 1 - c + 0.4 - (k + 0.5) * height
            colour = colours(impls.index(row["impl"]) % 10)
            label = row["impl"] if row["impl"] not in labelled else None
            labelled.add(row["impl"])
            median = row["median_ms"]
            error = [[median - row.get("p20_ms", median)], [row.get("p80_ms", median) - median]]
            left.barh(position, median, height=height, xerr=error, color=colour, label=label,
                      capsize=2)
            speedup = row.get("speedup_vs_eager")
            bars = right.barh(position, speedup or 0.0, height=height, color=colour)
            right.bar_label(bars, labels=["n/a" if speedup is None else f"{speedup:.2f}x"],
                            padding=2, fontsize=8)
    ticks = [len(cases) - 1 - c for c in range(len(cases))]
    left.set_yticks(ticks, cases)
    left.set_xscale("log")
    plain = matplotlib.ticker.FormatStrFormatter("%g")
    left.xaxis.set_major_formatter(plain)
    # label the 2..9 ticks only when the times span less than a decade (else they collide)
    lows = [r.get("p20_ms", r["median_ms"]) for r in timed]
    highs = [r.get("p80_ms", r["median_ms"]) for r in timed]
    narrow = max(highs) < 10 * min(lows)
    left.xaxis.set_minor_formatter(plain if narrow else matplotlib.ticker.NullFormatter())
    left.set_xlabel("median time per call (ms, log scale; bars: p20-p80)")
    left.grid(axis="x", which="both", alpha=0.3)
    right.axvline(1.0, color="black", linewidth=0.8)
    ratios = [r["speedup_vs_eager"] for r in timed if r.get("speedup_vs_eager")] or [1.0]
    if max(ratios) / min(ratios) > 30:  # e.g. 1000x against a slow peer: linear hides the rest
        right.set_xscale("log")
        right.xaxis.set_major_formatter(plain)
        right.set_xlim(0.5 * min(ratios + [1.0]), 3 * max(ratios + [1.0]))
        right.set_xlabel(f"speed-up vs {SPEEDUP_BASELINE} (log scale, higher is better)")
    else:
        right.set_xlim(0, 1.25 * max(ratios + [1.0]))
        right.set_xlabel(f"speed-up vs {SPEEDUP_BASELINE} (higher is better)")
    right.grid(axis="x", alpha=0.3)
    left.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rows(rows: list[dict], out_dir: str | Path, header: dict | None = None) -> list[Path]:
    """One `<op>.png` per op under out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = header or {}
    device = header.get("device_name") or (rows[0].get("device_name") if rows else None)
    written = []
    for op in _ordered(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        if not any("median_ms" in r for r in op_rows):
            continue
        title = op if device is None else f"{op} on {device}"
        written.append(plot_op(op_rows, out_dir / f"{_safe_name(op)}.png", title))
    return written


def plot_results_dir(directory: str | Path) -> list[Path]:
    """Re-render the plots of a recorded run from its results.jsonl."""
    directory = Path(directory)
    rows = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()
            if line.strip()]
    return plot_rows(rows, directory)
