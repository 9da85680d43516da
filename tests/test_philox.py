"""The counter-based RNG layer: Philox4x32-10 words bit-identical on every backend, the float
transforms agreeing to a few ulps with the right moments, and the generator helper."""

import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gfn_fast import _rng
from gfn_fast.reference import _philox as ref

ROOT = Path(__file__).resolve().parents[1]

# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _case(counter, key):
    """(seed, offset, row, col) that put `counter` and `key` into Philox."""
    seed = key[0] | (key[1] << 32)
    offset = counter[2] | (counter[3] << 32)
    return seed, offset, counter[1], counter[0]


def _inputs(n=4099):
    gen = torch.Generator().manual_seed(7)
    rows = torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64)
    cols = torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64)
    rows[:3] = torch.tensor([0, 2**32 - 1, 5])
    cols[:3] = torch.tensor([0, 2**32 - 1, 0])
    return rows, cols


SEEDS = [(0, 0), (1234, 0), (2**64 - 1, 2**63 + 17), (0xDEADBEEF12345678, 42)]


def _reference(seed, offset, rows, cols):
    words = ref.philox4x32(seed, offset, rows, cols)
    n0, n1 = ref.normal_pair(words[:, 0], words[:, 1])
    floats = torch.stack([ref.uniform(words[:, 0]), ref.exponential(words[:, 0]),
                          ref.gumbel(words[:, 0]), n0, n1], dim=1)
    return words, floats


def _numba(seed, offset, rows, cols):
    from gfn_fast.cpu import _philox as nb

    k0, k1 = ref.split_seed(seed)
    o0, o1 = ref.split_offset(offset)
    words = np.zeros((rows.shape[0], 4), dtype=np.uint64)
    nb.fill_words(k0, k1, o0, o1, rows.numpy().astype(np.uint64), cols.numpy().astype(np.uint64),
                  words)
    floats = np.zeros((rows.shape[0], 5), dtype=np.float32)
    nb.fill_transforms(words, floats)
    return torch.from_numpy(words.astype(np.int64)), torch.from_numpy(floats)


def _triton(seed, offset, rows, cols):
    from gfn_fast.kernels import _philox as tr

    return tr.fill(*ref.split_seed(seed), *ref.split_offset(offset), rows, cols)


def _cuda_header_on_host(seed, offset, rows, cols):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler to build philox.cuh for the host")
    src = Path(__file__).parent / "philox_host.cpp"
    exe = Path(tempfile.gettempdir()) / f"gfn_fast_philox_host_{os.getuid()}"
    if not exe.exists() or exe.stat().st_mtime < max(src.stat().st_mtime, (
            ROOT / "csrc/include/gfn_fast/philox.cuh").stat().st_mtime):
        subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-I",
                        str(ROOT / "csrc/include"), str(src), "-o", str(exe)], check=True)
    lines = "\n".join(f"{seed} {offset} {r} {c}"
                      for r, c in zip(rows.tolist(), cols.tolist(), strict=True))
    out = subprocess.run([str(exe)], input=lines, text=True, capture_output=True, check=True)
    values = torch.tensor([[int(v) for v in line.split()] for line in out.stdout.splitlines()],
                          dtype=torch.int64)
    floats = values[:, 4:].to(torch.int32).view(torch.float32)
    return values[:, :4], floats


IMPLEMENTATIONS = {"numba": _numba, "triton": _triton, "cuda_header_host": _cuda_header_on_host}


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_reference_known_answers(counter, key, expected):
    seed, offset, row, col = _case(counter, key)
    assert tuple(ref.philox4x32(seed, offset, row, col).tolist()) == expected


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_known_answers(impl):
    cases = [_case(c, k) for c, k, _ in KNOWN_ANSWERS]
    for (seed, offset, row, col), (_, _, expected) in zip(cases, KNOWN_ANSWERS, strict=False):
        words, _ = IMPLEMENTATIONS[impl](seed, offset, torch.tensor([row]), torch.tensor([col]))
        assert tuple(words[0].tolist()) == expected


@pytest.mark.parametrize("seed,offset", SEEDS)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_words_bit_identical(impl, seed, offset):
    rows, cols = _inputs()
    words, floats = IMPLEMENTATIONS[impl](seed, offset, rows, cols)
    ref_words, ref_floats = _reference(seed, offset, rows, cols)
    assert torch.equal(words, ref_words)
    # uniform is exact (integer -> float32 by a power of two); the others use log/cos/sin, whose
    # last bits differ between math libraries.
    assert torch.equal(floats[:, 0], ref_floats[:, 0])
    torch.testing.assert_close(floats[:, 1:], ref_floats[:, 1:], rtol=4e-7, atol=1e-6)


def test_offsets_and_rows_give_distinct_streams():
    rows = torch.arange(64)
    a = ref.philox4x32(1, 0, rows, 0)
    b = ref.philox4x32(1, 1, rows, 0)
    c = ref.philox4x32(2, 0, rows, 0)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert a[:, 0].unique().numel() == 64


@pytest.mark.parametrize("impl", ["reference", "numba"])
def test_moments(impl):
    n = 1 << 20
    rows, cols = torch.zeros(n, dtype=torch.int64), torch.arange(n)
    if impl == "reference":
        _, floats = _reference(99, 3, rows, cols)
    else:
        _, floats = _numba(99, 3, rows, cols)
    floats = floats.double()
    tol = 6.0 / math.sqrt(n)
    u, e, g, n0, n1 = floats.unbind(1)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < tol * math.sqrt(1 / 12) and abs(u.var() - 1 / 12) < tol * 0.075
    assert e.min() > 0 and abs(e.mean() - 1) < tol and abs(e.var() - 1) < tol * 3
    assert torch.isfinite(g).all()
    assert abs(g.mean() - 0.5772156649) < tol * 1.3
    assert abs(g.var() - math.pi**2 / 6) < tol * 5
    for z in (n0, n1):
        assert torch.isfinite(z).all()
        assert abs(z.mean()) < tol and abs(z.var() - 1) < tol * 1.5
        assert abs((z**4).mean() - 3) < tol * 10
    assert abs(torch.corrcoef(torch.stack([n0, n1]))[0, 1]) < tol


def test_uniform_extremes_stay_open():
    bits = torch.tensor([0, 1, 2**32 - 1, 2**32 - 2, 2**31])
    u = ref.uniform(bits)
    assert u.min() > 0 and u.max() < 1
    e = ref.exponential(bits)
    assert torch.isfinite(e).all() and (e > 0).all()
    assert torch.isfinite(ref.gumbel(bits)).all()
    assert ref.gumbel(torch.tensor([0])).item() > 22  # 32-bit resolution of the upper tail


def test_seed_offset_explicit():
    cpu = torch.device("cpu")
    assert _rng.seed_offset("op", cpu, seed=5, offset=9) == (5, 9)
    assert _rng.seed_offset("op", cpu, seed=-1) == (2**64 - 1, 0)


def test_seed_offset_generator_advances_and_reproduces():
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(3)
    first = _rng.seed_offset("op", cpu, gen)
    second = _rng.seed_offset("op", cpu, gen)
    assert first != second
    gen.manual_seed(3)
    assert _rng.seed_offset("op", cpu, gen) == first


@pytest.mark.parametrize("kwargs,exc,arg", [
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(seed=1, offset=-1), ValueError, "offset"),
    (dict(offset=3), ValueError, "offset"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "generator"),
    (dict(generator=5), TypeError, "generator"),
])
def test_seed_offset_errors(kwargs, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"):
        _rng.seed_offset("op", torch.device("cpu"), **kwargs)


def test_triton_fill_compiles_for_sm90():
    from tests.triton_compile import compile_in_subprocess

    compile_in_subprocess("gfn_fast.kernels._philox", [
        ("_fill_kernel", {"rows_ptr": "*i64", "cols_ptr": "*i64", "words_ptr": "*i64",
                          "floats_ptr": "*fp32", "n": "i32", "seed_lo": "i32", "seed_hi": "i32",
                          "off_lo": "i32", "off_hi": "i32"}, {"BLOCK": 1024}),
    ])


def test_numba_log32_within_three_ulps():
    """_vmath.log32, behind the Numba Gumbel and Box-Muller transforms: within 3 float32 ulps of
    ln x (2.85 measured over every float32 in [2^-34, 17], the range those transforms feed it;
    here every 61st bit pattern of that range, every pattern of [1 - 2^-10, 1 + 2^-10], where
    ln x is smallest against x, and the two ends)."""
    numba = pytest.importorskip("numba")
    from gfn_fast.cpu import _vmath as vm

    @numba.njit(cache=False)
    def logs(x, out):
        for i in range(x.shape[0]):
            out[i] = vm.log32(x[i])

    lo, hi = np.array([2.0**-34, 17.0], dtype=np.float32).view(np.int32)
    near_lo, near_hi = np.array([1 - 2.0**-10, 1 + 2.0**-10], dtype=np.float32).view(np.int32)
    bits = np.concatenate([np.arange(lo, hi, 61, dtype=np.int32),
                           np.arange(near_lo, near_hi + 1, dtype=np.int32),
                           np.array([lo, hi], dtype=np.int32)])
    x = bits.view(np.float32)
    got = np.empty_like(x)
    logs(x, got)
    exact = np.log(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    ulps = np.abs(got - exact) / ulp
    assert ulps.max() < 3.0, (ulps.max(), x[ulps.argmax()])
    assert got[x == 1.0] == 0.0


def test_numba_erfc_within_two_units_of_libm_precision():
    """_vmath.erfc_pos_inplace, the discretised BFN kernels' normal tails: within 1.5e-15
    relative of libm's erfc (itself within ~4e-16 of the exact value; 7e-16 measured against
    mpmath) over [0, 26.5] (every 1e-4, and 1e-300 .. 1 geometrically), where the result spans
    1 .. 1e-307: the relative precision of the far tail is kept. 0 from 26.6 on (erfc <
    1e-308), and erfc(0) = 1, erfc(inf) = 0, NaN -> NaN."""
    from gfn_fast.cpu import _vmath as vm

    a = np.concatenate([np.arange(0.0, 26.5, 1e-4), np.geomspace(1e-300, 1.0, 2001)])
    got = a.copy()
    vm.erfc_pos_inplace(got)
    exact = np.array([math.erfc(x) for x in a])
    rel = np.abs(got - exact) / exact
    assert rel.max() < 1.5e-15, (rel.max(), a[rel.argmax()])
    special = np.array([0.0, np.inf, np.nan, 26.6, 40.0])
    vm.erfc_pos_inplace(special)
    assert special[0] == 1.0 and special[1] == 0.0 and np.isnan(special[2])
    assert (special[3:] == 0.0).all()


def test_numba_exponential_is_the_two_branch_formula_exactly():
    """The Numba exponential writes log1p_neg's two branches (v where 1 - v rounds to 1, else
    -log(w) t / (w - 1)) as one max(v, quotient), so that loops over it vectorise: the same
    float32 on every word up to 2^20 (v up to 2^-12, past which the quotient exceeds v by far
    more than its rounding) and on random words, against the branches written out."""
    numba = pytest.importorskip("numba")
    from gfn_fast.cpu import _philox as px
    from gfn_fast.cpu import _vmath as vm

    one = np.float32(1.0)

    @numba.njit(cache=False)
    def both(words, fused, branches):
        for i in range(words.shape[0]):
            bits = np.uint64(words[i])
            fused[i] = px.exponential(bits)
            v = min(px.open_unit(bits), px.ONE_MINUS_TWO_M24)
            t = -v
            w = one + t
            branches[i] = v if w == one else -(vm.divide(vm.log32(w) * t, w - one))

    rng = np.random.default_rng(7)
    words = np.concatenate([np.arange(1 << 20, dtype=np.uint64),
                            rng.integers(0, 2**32, 1 << 20, dtype=np.uint64),
                            np.array([2**32 - 1, 2**32 - 2, 2**31], dtype=np.uint64)])
    fused, branches = np.empty(words.shape[0], np.float32), np.empty(words.shape[0], np.float32)
    both(words, fused, branches)
    assert np.array_equal(fused.view(np.int32), branches.view(np.int32))
    assert (fused > 0).all() and np.isfinite(fused).all()
