"""The benchmark's PNG plots (gfn_fast.bench_plots) and the harness's fallback without them."""

import json
import struct
import sys
import types

import pytest

from gfn_fast import bench_plots, benchmark


def synthetic_rows():
    rows = []
    for case, scale in (("B=4096 T=64 fp32 fwd+bwd", 1.0), ("B=65536 T=128 fp32 fwd+bwd", 9.0)):
        for impl, ms in (("eager", 10.0), ("torch.compile", 4.0), ("gfn_fast[numba]", 1.5)):
            median = ms * scale
            rows.append({"op": "subtrajectory_balance", "case": case, "impl": impl,
                         "median_ms": median, "p20_ms": 0.9 * median, "p80_ms": 1.2 * median,
                         "speedup_vs_eager": 10.0 / ms, "device_name": "test CPU"})
    rows.append({"op": "subtrajectory_balance", "case": "B=4096 T=64 fp32 fwd+bwd",
                 "impl": "torchgfn", "error": "ImportError('gfn')"})
    rows.append({"op": "sample_actions", "case": "N=16 A=4", "impl": "gfn_fast[numba]",
                 "median_ms": 0.01, "p20_ms": 0.01, "p80_ms": 0.02})  # no eager row
    return rows


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_rows_writes_one_png_per_op(tmp_path):
    pytest.importorskip("matplotlib")
    paths = bench_plots.plot_rows(synthetic_rows(), tmp_path)
    assert [p.name for p in paths] == ["subtrajectory_balance.png", "sample_actions.png"]
    for path in paths:
        width, height = png_size(path)
        assert width > 500 and height > 100


def test_plots_only_redraws_a_recorded_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "results.jsonl").write_text(
        "\n".join(json.dumps(row) for row in synthetic_rows()) + "\n")
    benchmark.main(types.SimpleNamespace(update_readme=None, plots_only=str(tmp_path)))
    assert "wrote 2 plot(s)" in capsys.readouterr().out
    png_size(tmp_path / "subtrajectory_balance.png")


def test_missing_matplotlib_is_one_line_not_a_crash(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    benchmark.write_plots(lambda out: bench_plots.plot_rows(synthetic_rows(), out), tmp_path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and 'pip install -e ".[bench]"' in out
    assert not list(tmp_path.glob("*.png"))
