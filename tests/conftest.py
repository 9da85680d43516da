"""Shared test setup.

Triton kernels run on CPU tensors through the interpreter: TRITON_INTERPRET=1 is set here (before
anything imports triton) unless the caller chose otherwise, so the plain `pytest` command checks
them too. GPU tests carry @pytest.mark.cuda and skip cleanly without a GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import gfn_fast  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def run_probe(source: str, tag: str, cache_dir=None):
    """Runs `source` in a fresh interpreter (the repository on its path; with an empty Numba
    cache when `cache_dir` is given) and returns the JSON it printed after `tag`."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    result = subprocess.run([sys.executable, "-c", source], env=env, cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.rsplit(tag + " ", 1)[1])


def available_backends(device: str) -> list[str]:
    report = gfn_fast.backends()
    return [name for name in ("cuda", "triton", "numba") if device in report[name]["devices"]]


def backend_params() -> list:
    """(backend, device) pairs: every non-reference backend on CPU (numba, and triton through
    the interpreter), plus the GPU ones marked `cuda` (skipped without a GPU)."""
    params = [pytest.param(name, "cpu", id=f"{name}-cpu") for name in available_backends("cpu")]
    for name in ("cuda", "triton"):
        params.append(pytest.param(name, "cuda", id=f"{name}-cuda", marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not HAS_CUDA or name not in available_backends("cuda"),
                               reason=f"needs a CUDA GPU and the {name} backend")]))
    return params


def pytest_collection_modifyitems(config, items):
    """Without a GPU, `pytest -m cuda` would run nothing silently: say so."""
    if not HAS_CUDA and config.getoption("-m") == "cuda":
        print("\nno CUDA device: every cuda-marked test is skipped")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def property_settings(ci: int, long: int):
    """Hypothesis settings for one property-test module: `ci` examples per test by default,
    `long` with HYPOTHESIS_PROFILE=long. Attached to each test (not loaded as a global profile,
    which the last module collected would set for every module)."""
    import os

    from hypothesis import HealthCheck, settings

    examples = long if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "long" else ci
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
