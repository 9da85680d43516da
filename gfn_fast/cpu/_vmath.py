"""exp, log and the Box-Muller transform for Numba loops that LLVM can vectorise.

Numba lowers math.exp / math.log / math.cos to calls into libm (there is no SVML here), and a
call inside a loop keeps LLVM from vectorising the loop: a Box-Muller normal cost ~15 ns and an
exp ~4 ns, scalar. These versions are plain arithmetic plus bit casts: LLVM inlines them and
vectorises the loops that call them. They carry flags of their own (see _HELPER: contraction,
no reassociation), so their rounding steps survive a caller compiled with fastmath reassoc and
their build does not depend on which kernel called them first. float32 math runs 16 lanes to an
AVX-512 register against float64's 8, so float32 data gets float32 versions.

  * exp(x): float32 or float64 by the type of x, within 1-2 ulps of that type;
  * log(x): float64, within a few ulps (per-row log-sum-exps, not hot);
  * log32(x): float32, within 3 ulps (the Gumbel and Box-Muller transforms of random words);
  * erfc_pos_inplace(values): float64 erfc of values >= 0, within 7e-16 relative (the normal
    tails of the discretised BFN distribution);
  * box_muller(u1, theta): sqrt(-2 ln u1) (cos theta, sin theta) in float32, within a few
    float32 ulps of the float32 libm chain of gfn_fast/reference/_philox.py.
"""

import decimal
import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 `bits` (a bit cast, no conversion)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bits_of_f64(typingctx, value):
    """The IEEE-754 bit pattern of a float64, as int64."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer `bits` (Numba widens
    int32 arithmetic to int64, so wider integers are truncated first)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_of_f32(typingctx, value):
    """The bit pattern of a float32, as int32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def divide(typingctx, a, b):
    """a / b for two floats of one type, rounded as IEEE-754 division (b = 0 gives inf or NaN):
    the division without the zero-divisor test and exception branch that Numba's default
    (Python) error model puts around `/`, which keep a loop from vectorising. Emitted in place,
    whatever the caller's flags."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])

    return a(a, b), codegen


_WIDE = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typingctx):
    """Marks the function being compiled (the one whose loop calls this; a prange body is a
    function of its own) with LLVM's "prefer-vector-width"="512". On AVX-512 CPUs that LLVM
    tunes for 256-bit vectors (Intel client and Ice Lake-era cores: "rocketlake" here), loops
    that mix 64-bit integers and float32 otherwise vectorise 8 wide with float32 at half a
    register. Philox + Box-Muller, 98K normals, one thread: 170 -> 117 us, bitwise the same
    values. No code is emitted; without AVX-512 the widest legal vector is used, as before
    (checked with NUMBA_CPU_NAME=haswell and Haswell's feature list in NUMBA_CPU_FEATURES: the
    machine code of the text8 n-step loss, the discrete loss backward and the continuous flow
    came out identical with and without the attribute).
    llvmlite's attribute set only admits its known names, so the string attribute goes in
    through the set's own add (it is a set subclass; tests/test_reliability.py checks that the
    attribute reaches the kernels' LLVM IR)."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, _WIDE)
        return context.get_dummy_value()

    return types.none(), codegen


def _split(value: decimal.Decimal, dtype, keep_bits: int) -> tuple:
    """value = hi + lo with hi in `dtype` keeping `keep_bits` significant bits (so small integer
    multiples of hi are exact) and lo the rounded rest: a Cody-Waite constant."""
    info = np.finfo(dtype)
    drop = info.nmant - keep_bits
    as_int = np.int64 if dtype == np.float64 else np.int32
    bits = np.array([float(value)], dtype=dtype).view(as_int)
    hi = (bits & ~as_int((1 << drop) - 1)).view(dtype)[0]
    return dtype(hi), dtype(float(value - decimal.Decimal(float(hi))))


with decimal.localcontext() as _ctx:
    _ctx.prec = 50
    _LN2 = decimal.Decimal(2).ln()
    _PI_OVER_2 = decimal.Decimal("1.5707963267948966192313216916397514420985846996876")
    _LN2_HI, _LN2_LO = (float(v) for v in _split(_LN2, np.float64, 20))
    _LN2_HI32, _LN2_LO32 = _split(_LN2, np.float32, 12)
    _PIO2_A32, _rest = _split(_PI_OVER_2, np.float32, 12)
    _PIO2_B32, _PIO2_C32 = _split(_PI_OVER_2 - decimal.Decimal(float(_PIO2_A32)), np.float32, 12)
    del _rest

# float64
_LOG2E = 1.0 / math.log(2.0)
# exp: below _EXP_LO the result (< 2^-1020) is flushed to 0; above _EXP_HI it overflows to inf.
_EXP_LO = -707.0
_EXP_HI = 709.782712893384
_EXP_COEFFS = tuple(1.0 / math.factorial(k) for k in range(14))
_LOG_COEFFS = tuple(1.0 / (2 * k + 1) for k in range(12))
_SQRT2 = math.sqrt(2.0)
_MANTISSA = np.int64((1 << 52) - 1)
_ONE_BITS = np.int64(1023 << 52)
_INF = math.inf
# erfc: Chebyshev coefficients of g(u) = ln erfc(a) + a^2 - ln t, where t = 2 / (2 + a) and
# u = 2 t - 1 in (-1, 1] for a >= 0 (g is smooth there: 0 at a = 0, ln(1 / (2 sqrt(pi))) as
# a -> inf). Fitted for this module (session 20): g interpolated at 80 Chebyshev nodes with
# mpmath at 50 digits, the series cut after 31 terms (those after are below 1e-18).
_ERFC_COEFFS = (
    -0.6513268598908547, 0.6419697923564902, 0.019476473204185836, -0.009561514786808632,
    -0.0009465953444820369, 0.00036683949785276145, 4.252332480690777e-05,
    -2.0278578112534242e-05, -1.6242900046470256e-06, 1.3036558355805232e-06,
    1.5626441722066142e-08, -8.523809591492654e-08, 6.5290544390988515e-09,
    5.059343495551469e-09, -9.91364156493033e-10, -2.273651222931836e-10, 9.646791102015527e-11,
    2.3940380830391146e-12, -6.886027526497553e-12, 8.944879273090725e-13, 3.130921399342958e-13,
    -1.1270822361367252e-13, 3.810905255189232e-16, 7.106097613609237e-15,
    -1.5230282014571043e-15, -9.457494571291233e-17, 1.210237189224279e-16,
    -2.816663087747177e-17, 5.003005559445902e-20, 2.3281042579529253e-18,
    -8.446077682509006e-19)
# from here on erfc(a) < e^-707, which exp flushes to 0 (erfc(26.6) ~ 1e-309)
_ERFC_ZERO_FROM = 26.6
_HIGH_26_BITS = np.int64(-(1 << 27))  # clears the low 27 of the 52 stored significand bits

# float32
_F32 = np.float32
_LOG2E32 = _F32(_LOG2E)
_EXP_LO32 = _F32(-86.0)  # below: results < 2^-124 flushed to 0
_EXP_HI32 = _F32(88.72283)
_EXP_COEFFS32 = tuple(_F32(1.0 / math.factorial(k)) for k in range(8))
_LOG_COEFFS32 = tuple(_F32(1.0 / (2 * k + 1)) for k in range(6))
_SQRT2_32 = _F32(math.sqrt(2.0))
_HALF32 = _F32(0.5)
_ONE32 = _F32(1.0)
_TWO32 = _F32(2.0)
_ZERO32 = _F32(0.0)
_INF32 = _F32(math.inf)
_MINUS_TWO32 = _F32(-2.0)
_TWO_OVER_PI32 = _F32(2.0 / math.pi)
_COS_COEFFS32 = tuple(_F32((-1.0) ** k / math.factorial(2 * k)) for k in range(5))
_SIN_COEFFS32 = tuple(_F32((-1.0) ** k / math.factorial(2 * k + 1)) for k in range(5))
_MANTISSA32 = np.int32((1 << 23) - 1)
_ONE_BITS32 = np.int32(127 << 23)

# The functions below are compiled on their own and called (LLVM inlines them), so Numba would
# give them the fastmath flags and error model of whichever kernel first calls them in a process
# (flags a callee does not set are inherited), and cache that build on disk for every later
# caller: the same kernel's results then depended on which kernel had compiled first (the BFN
# demo gave 5.128 or 5.137 bits/dim from the same code). Their flags are set here instead:
# contraction (a * b + c as one fused multiply-add, one rounding fewer) and NumPy's error model;
# no reassociation, which would allow undoing the two-constant Cody-Waite reduction.
_HELPER = dict(cache=True, fastmath={"contract"}, error_model="numpy")


@numba.njit(**_HELPER)
def _exp64(x):
    """e^x for float64 x: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-13
    Taylor polynomial in r, times 2^n built from its bits. NaN -> NaN, -inf -> 0, +inf -> inf;
    results below 2^-1020 are flushed to 0."""
    clamped = x if x > _EXP_LO else _EXP_LO
    clamped = clamped if clamped < _EXP_HI else _EXP_HI
    n = math.floor(clamped * _LOG2E + 0.5)
    r = (clamped - n * _LN2_HI) - n * _LN2_LO
    c = _EXP_COEFFS
    p = c[13]
    p = p * r + c[12]
    p = p * r + c[11]
    p = p * r + c[10]
    p = p * r + c[9]
    p = p * r + c[8]
    p = p * r + c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    # 2^(n - 1) * 2: n reaches 1024 at the top of the range, whose 2^n has no float64 form.
    scale = _f64_from_bits((np.int64(n) + np.int64(1022)) << np.int64(52))
    result = (p * 2.0) * scale
    if x < _EXP_LO:
        result = 0.0
    if x > _EXP_HI:
        result = _INF
    if x != x:
        result = x
    return result


@numba.njit(**_HELPER)
def _exp32(x):
    """e^x for float32 x, all in float32: as _exp64 with a degree-7 polynomial (|r| <= 0.347,
    truncation 5e-9). Results below 2^-124 are flushed to 0."""
    clamped = x if x > _EXP_LO32 else _EXP_LO32
    clamped = clamped if clamped < _EXP_HI32 else _EXP_HI32
    n = np.floor(clamped * _LOG2E32 + _HALF32)
    r = (clamped - n * _LN2_HI32) - n * _LN2_LO32
    c = _EXP_COEFFS32
    p = ((((((c[7] * r + c[6]) * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r + c[1]) * r \
        + c[0]
    scale = _f32_from_bits((np.int32(n) + np.int32(126)) << np.int32(23))
    result = (p * _TWO32) * scale
    if x < _EXP_LO32:
        result = _ZERO32
    if x > _EXP_HI32:
        result = _INF32
    if x != x:
        result = x
    return result


def exp(x):
    """e^x in the precision of x (float32 or float64); see _exp32 / _exp64."""
    raise NotImplementedError("gfn_fast.cpu._vmath.exp is for Numba-compiled code")


@overload(exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@numba.njit(**_HELPER)
def log(x):
    """ln x for float64 x, normal or +inf (0 -> -inf; x < 0 and NaN -> NaN; subnormal x is
    outside the domain): x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(f),
    f = (m - 1) / (m + 1), by its odd series to f^23."""
    bits = _bits_of_f64(x)
    exponent = (bits >> np.int64(52)) - np.int64(1023)
    m = _f64_from_bits((bits & _MANTISSA) | _ONE_BITS)
    if m > _SQRT2:
        m = m * 0.5
        exponent += np.int64(1)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    c = _LOG_COEFFS
    p = c[11]
    p = p * f2 + c[10]
    p = p * f2 + c[9]
    p = p * f2 + c[8]
    p = p * f2 + c[7]
    p = p * f2 + c[6]
    p = p * f2 + c[5]
    p = p * f2 + c[4]
    p = p * f2 + c[3]
    p = p * f2 + c[2]
    p = p * f2 + c[1]
    p = p * f2 + c[0]
    e = np.float64(exponent)
    result = e * _LN2_HI + (2.0 * f * p + e * _LN2_LO)
    if x == _INF:
        result = _INF
    if x == 0.0:
        result = -_INF
    if not x >= 0.0:
        result = math.nan
    return result


@numba.njit(**_HELPER)
def log32(x):
    """ln x in float32 for a positive, normal, finite float32 x (nothing else is checked: 0,
    subnormals, inf, NaN and negatives give meaningless finite values): x = m 2^e with m in
    [sqrt(1/2), sqrt(2)), ln m = 2 atanh(f), f = (m - 1) / (m + 1), by its odd series to f^11.
    Within 2.85 float32 ulps of ln x over every float32 in [2^-34, 17] (the exhaustive check of
    tests/test_philox.py)."""
    bits = _bits_of_f32(x)
    exponent = (bits >> np.int32(23)) - np.int32(127)
    m = _f32_from_bits((bits & _MANTISSA32) | _ONE_BITS32)
    if m > _SQRT2_32:
        m = m * _HALF32
        exponent += np.int32(1)
    f = (m - _ONE32) / (m + _ONE32)
    f2 = f * f
    c = _LOG_COEFFS32
    p = ((((c[5] * f2 + c[4]) * f2 + c[3]) * f2 + c[2]) * f2 + c[1]) * f2 + c[0]
    e = np.float32(exponent)
    return e * _LN2_HI32 + (_TWO32 * f * p + e * _LN2_LO32)


@numba.njit(inline="always", cache=True)
def _erfc_pos(a):
    """erfc(a) for float64 a >= 0 (callers pass |x|): t exp(-a^2 + g(u)), g's Chebyshev series
    (_ERFC_COEFFS) summed by Clenshaw's recurrence, and a^2 split exactly into hi + lo (a's top
    26 significand bits squared, plus the rest) so that e^-hi e^(g - lo) keeps the tail's relative
    precision where a^2 is large. Within 7e-16 relative of the exact erfc over [0, 26.5] (a
    million points against mpmath; libm: 4e-16); 0 from 26.6 on, where erfc < 1e-308; NaN ->
    NaN."""
    t = 2.0 / (2.0 + a)
    u = 2.0 * t - 1.0
    u2 = u + u
    c = _ERFC_COEFFS
    b1 = c[30]
    b2 = 0.0
    # written out: as `for k in range(29, 0, -1)` over the tuple the callers' loops stayed
    # scalar (49 against 6.5 ns an element; the packed-FMA probe test fails)
    b1, b2 = u2 * b1 - b2 + c[29], b1
    b1, b2 = u2 * b1 - b2 + c[28], b1
    b1, b2 = u2 * b1 - b2 + c[27], b1
    b1, b2 = u2 * b1 - b2 + c[26], b1
    b1, b2 = u2 * b1 - b2 + c[25], b1
    b1, b2 = u2 * b1 - b2 + c[24], b1
    b1, b2 = u2 * b1 - b2 + c[23], b1
    b1, b2 = u2 * b1 - b2 + c[22], b1
    b1, b2 = u2 * b1 - b2 + c[21], b1
    b1, b2 = u2 * b1 - b2 + c[20], b1
    b1, b2 = u2 * b1 - b2 + c[19], b1
    b1, b2 = u2 * b1 - b2 + c[18], b1
    b1, b2 = u2 * b1 - b2 + c[17], b1
    b1, b2 = u2 * b1 - b2 + c[16], b1
    b1, b2 = u2 * b1 - b2 + c[15], b1
    b1, b2 = u2 * b1 - b2 + c[14], b1
    b1, b2 = u2 * b1 - b2 + c[13], b1
    b1, b2 = u2 * b1 - b2 + c[12], b1
    b1, b2 = u2 * b1 - b2 + c[11], b1
    b1, b2 = u2 * b1 - b2 + c[10], b1
    b1, b2 = u2 * b1 - b2 + c[9], b1
    b1, b2 = u2 * b1 - b2 + c[8], b1
    b1, b2 = u2 * b1 - b2 + c[7], b1
    b1, b2 = u2 * b1 - b2 + c[6], b1
    b1, b2 = u2 * b1 - b2 + c[5], b1
    b1, b2 = u2 * b1 - b2 + c[4], b1
    b1, b2 = u2 * b1 - b2 + c[3], b1
    b1, b2 = u2 * b1 - b2 + c[2], b1
    b1, b2 = u2 * b1 - b2 + c[1], b1
    g = u * b1 - b2 + c[0]
    head = _f64_from_bits(_bits_of_f64(a) & _HIGH_26_BITS)
    rest = a - head
    hi = head * head
    lo = (head + head) * rest + rest * rest
    result = t * _exp64(-hi) * _exp64(g - lo)
    if a >= _ERFC_ZERO_FROM:  # also a = inf, where rest is NaN
        result = 0.0
    return result


@numba.njit(**_HELPER)
def erfc_pos_inplace(values):
    """values[:] = erfc(values) for a float64 [N] array of values >= 0 (see _erfc_pos), in one
    vectorised loop: ~6.6 ns an element on the 2-core EPYC host, one thread, against ~15 for
    libm's erfc (throughput-bound: the series and two exps are ~150 vector instructions per 8
    elements; two independent halves a step were no faster). An array, not an element, at a
    time: the series makes the element function too large for LLVM to inline into a caller's
    loop, and a call inside a loop keeps the loop scalar (53 ns an element that way)."""
    wide_vectors()
    for i in range(values.shape[0]):
        values[i] = _erfc_pos(values[i])


@numba.njit(**_HELPER)
def box_muller(u1, theta):
    """(r cos theta, r sin theta), r = sqrt(-2 ln u1), for float32 u1 in (0, 1] (normal) and
    theta in [0, 2 pi], all in float32. ln u1 by log32; theta = q pi/2 + r with a three-part
    pi/2, cos r to r^8 and sin r to r^9 (|r| <= pi/4, truncation < 3e-8)."""
    radius = np.sqrt(_MINUS_TWO32 * log32(u1))

    q = np.floor(theta * _TWO_OVER_PI32 + _HALF32)
    r = ((theta - q * _PIO2_A32) - q * _PIO2_B32) - q * _PIO2_C32
    r2 = r * r
    c = _COS_COEFFS32
    cos_r = (((c[4] * r2 + c[3]) * r2 + c[2]) * r2 + c[1]) * r2 + c[0]
    s = _SIN_COEFFS32
    sin_r = ((((s[4] * r2 + s[3]) * r2 + s[2]) * r2 + s[1]) * r2 + s[0]) * r
    quadrant = np.int32(q)
    odd = (quadrant & np.int32(1)) != np.int32(0)
    cos_sign = _ONE32 - _TWO32 * np.float32(((quadrant + np.int32(1)) >> np.int32(1))
                                            & np.int32(1))
    sin_sign = _ONE32 - _TWO32 * np.float32((quadrant >> np.int32(1)) & np.int32(1))
    cos_t = (sin_r if odd else cos_r) * cos_sign
    sin_t = (cos_r if odd else sin_r) * sin_sign
    return radius * cos_t, radius * sin_t
