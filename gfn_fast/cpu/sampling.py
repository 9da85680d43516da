"""Numba CPU kernels of masked, logit-scaled, epsilon-exploring action sampling.

Rows go to threads in chunks (prange): the chunk's Philox blocks are drawn first, in one loop
that LLVM vectorises (chunk_words), then the chunk's rows are drawn (sample_chunk): the
Gumbel-max argmax of the policy branch, the uint32-key argmax of the uniform branch and the
per-row epsilon coin that decides which index is returned, with the row's log-sum-exp (and
entropy terms). Randomness and the exact decision rules: gfn_fast/reference/sampling.py and
gfn_fast/reference/_philox.py.

The Gumbel noise (two logarithms a key) is drawn with the words, in a vectorised loop, for rows
of up to 256 actions (see _ROW_LOOPS_FROM), and their exponentials and logarithms in vectorised
loops over the chunk too (sample_chunk). Wider rows take one streaming pass each (_sample_row)
and cannot afford a scalar Gumbel transform per element, so there the policy branch skips the
Gumbel transform of an element that certainly cannot beat the current best key: with
E = -log1p(-v) >= v, the key z + G = z - log E exceeds `best` only if E < exp(z - best), hence
only if v < exp(z - best + slack). The slack (1e-3 plus a relative 1e-6 of the magnitudes)
covers every float rounding, so a skipped element is one whose computed key would lose too: the
result is exactly the argmax of the computed keys, as on the GPU backends, which compute every
key. The test itself costs no exponential: exp(z - m), m the running max, is the term the sum
of exponentials needs anyway, and exp(m - best + slack) changes only with m or best (a few
times a row), so it is renewed then (see _sample_row). Sums of exponentials accumulate in
float64.

action_log_prob's kernels (no randomness) are different: two vectorised passes over a row (the
max, then the sum of exponentials) forward, one backward; see _row_log_prob.
"""

import math

import numba
import numpy as np
import torch

from gfn_fast.cpu import _philox
from gfn_fast.cpu import _vmath as vm
from gfn_fast.cpu._common import as_numpy, empty, row_or, serial_if
from gfn_fast.cpu._vmath import _bits_of_f64, _f64_from_bits

_U64 = np.uint64
_INF = math.inf
# Below this many Philox blocks (~40 ns each, serial) a call runs on the calling thread: waking
# Numba's pool costs tens of microseconds idle and milliseconds on a loaded machine, more than
# the work (a HyperGrid rollout's late steps sample a few hundred rows of 5 actions).
_PARALLEL_MIN_BLOCKS = 2048


@numba.njit(inline="always", cache=True)
def _allowed(mask_row, has_mask, packed, a):
    if not has_mask:
        return True
    if packed:
        return (mask_row[a >> 3] >> (a & 7)) & 1 != 0
    return mask_row[a] != 0


@numba.njit(inline="always", cache=True)
def _scaled(x, scale, lo, hi, inv_t):
    """clip(scale * x) * inv_t, keeping NaN (each operation rounded like the other backends)."""
    y = scale * x
    if y < lo:
        y = lo
    elif y > hi:
        y = hi
    return y * inv_t


@numba.njit(inline="always", cache=True)
def log_mixture(log_pi, eps, count):
    """log((1 - eps) exp(log_pi) + eps / count)."""
    a = math.log1p(-eps) + log_pi if eps < 1.0 else -_INF
    b = math.log(eps) - math.log(count) if eps > 0.0 else -_INF
    if a == -_INF:
        return b
    if b == -_INF:
        return a
    high = a if a > b else b
    low = b if a > b else a
    return high + math.log1p(math.exp(low - high))


# Philox blocks are drawn ahead of the row loops, for a chunk of rows at a time, by a loop that
# does nothing else: LLVM vectorises it (~1.5 ns a block on a 2-core AMD EPYC, Zen 4), where the
# same block drawn inside a row's loop, among its branches, stayed scalar (~9-11 ns). The chunk
# holds up to _CHUNK_ROWS rows and at most _CHUNK_BLOCKS blocks (32 KiB of words, in L1) unless
# a single row has more (over 4096 actions); its loop runs over rows when it holds several
# (narrow rows: a HyperGrid row has 3 blocks) and over a row's pairs otherwise.
# With 16 rows (until session 19), the HyperGrid step kernel took ~2% longer on one thread
# (96.6 against 94.7 ns a row at 4096 rows; the sampler alone ~0.5% longer).
_CHUNK_ROWS = 32
_CHUNK_BLOCKS = 2048
# From this many rows a chunk (rows of up to 256 actions), chunk_words' loops run over the rows
# of the chunk, and the chunk also draws its rows' Gumbel noise ahead in such a loop
# (_fill_gumbels, ~1.3 ns a value): its rows compute every key. Wider rows loop over a row's
# pairs for the words and draw the noise of the keys they do not skip one by one (module
# docstring). The same argmax either way: the skip never changes it. Below 16 rows, the row
# loops end in a remainder that the 16-lane float32 vectors do not cover. One thread, N(0, 1)
# logits, 80% allowed, epsilon 0.1, 2M elements, ns an element, rows drawing every key against
# rows skipping keys: 10.95 vs 14.94 at 256 actions (16 rows a chunk), 17.27 vs 14.67 at 300 (13
# rows), 18.57 vs 14.37 at 384, 16.17 vs 13.98 at 512 (8 rows). Until session 19 the threshold
# was 8 rows, and rows of 257-512 actions drew every key.
_ROW_LOOPS_FROM = 16


@numba.njit(inline="always", cache=True)
def chunk_rows(width):
    """Rows per chunk of `width` actions (>= 1)."""
    return max(1, min(_CHUNK_ROWS, _CHUNK_BLOCKS // ((width + 1) >> 1)))


@numba.njit(inline="always", cache=True)
def _put_block(words, pair, j, key0, key1, o0, o1, row):
    w0, w1, w2, w3 = _philox.philox4x32(key0, key1, _U64(pair), _U64(row), o0, o1)
    words[pair, 0, j] = w0
    words[pair, 1, j] = w1
    words[pair, 2, j] = w2
    words[pair, 3, j] = w3


@numba.njit(inline="always", cache=True)
def draws_gumbels(width):
    """Whether rows of `width` actions get their Gumbel noise from chunk_words (and compute every
    key) rather than skip keys."""
    return chunk_rows(width) >= _ROW_LOOPS_FROM


@numba.njit(inline="always", cache=True)
def chunk_words(chunk, rows, width, key0, key1, o0, o1):
    """(first row, end row, words, gumbels) of chunk `chunk` of `rows` rows of `width` actions:
    words[pair, k, j] = word k of the Philox block (column pair `pair`, row first + j), the
    blocks those rows draw in _sample_row (read there as words[:, :, r - first]). On rows that
    compute every key (see draws_gumbels), gumbels[pair, i, j] is the Gumbel noise
    of action 2 pair + i of row first + j, _philox.gumbel of its word (0 or 2), drawn here in a
    loop LLVM vectorises; wider rows leave gumbels unset and draw the keys they do not skip one
    by one."""
    per_chunk = chunk_rows(width)
    first = chunk * per_chunk
    end = min(first + per_chunk, rows)
    pairs = (width + 1) >> 1
    words = np.empty((pairs, 4, per_chunk), dtype=np.uint32)
    every_key = draws_gumbels(width)  # per_chunk >= _ROW_LOOPS_FROM
    if every_key:
        for pair in range(pairs):
            for j in range(end - first):
                _put_block(words, pair, j, key0, key1, o0, o1, first + j)
    else:
        for j in range(end - first):
            for pair in range(pairs):
                _put_block(words, pair, j, key0, key1, o0, o1, first + j)
    gumbels = np.empty((pairs if every_key else 0, 2, per_chunk), dtype=np.float32)
    if every_key:
        _fill_gumbels(words, gumbels, end - first)
    return first, end, words, gumbels


@numba.njit(cache=True)
def _fill_gumbels(words, gumbels, count):
    """gumbels[pair, i, j] = _philox.gumbel(words[pair, 2 i, j]) for j < count. A function of
    its own, not inlined by Numba: its loop is vectorised when it is compiled alone; inlined by
    Numba into a kernel, the same loop stayed scalar in one of the sampler's specialisations (the
    serial twin with stride-0 scale, temperature and epsilon: 59 against 26 us for 400 rows of
    5)."""
    for pair in range(gumbels.shape[0]):
        for i in range(2):
            for j in range(count):
                gumbels[pair, i, j] = _philox.gumbel(_U64(words[pair, 2 * i, j]))


@numba.njit(inline="always", cache=True)
def n_chunks(rows, width):
    return (rows + chunk_rows(width) - 1) // chunk_rows(width)


@numba.njit(inline="always", cache=True)
def _explores(eps, r, key0, key1, o0, o1):
    """Row r's epsilon coin: word 0 of its coin block, as a 24-bit uniform in [0, 1), below
    eps. A coin never falls below eps <= 0, so its Philox block is then skipped."""
    if not eps > 0.0:
        return False
    coin = _philox.philox4x32(key0, key1, _philox.COIN_COL, _U64(r), o0, o1)[0]
    return float(coin >> _U64(8)) * 5.9604644775390625e-08 < eps


@numba.njit(inline="always", cache=True)
def _row_keys(row, mask_row, has_mask, packed, r, s_r, it_r, lo, hi, eps, key0, key1, o0, o1,
              words, gumbels, d):
    """sample_chunk's first pass over row r of a row that computes every key: (action, its
    scaled logit z, the max of the allowed z, their count), and d[a] = z_a - max for
    _chunk_exps, with 0 where z_a is the max (an infinite one too: each counts 1, as in
    torch.logsumexp), -inf where a is masked or z_a = -inf, NaN for a NaN z_a. The actions are
    _sample_row's: the same keys (z + Gumbel noise, a NaN key losing), the same argmax rules and
    the same epsilon coin."""
    width = row.shape[0]
    m = row.dtype.type(-_INF)
    count = 0
    g_idx, g_key, g_z = -1, row.dtype.type(-_INF), row.dtype.type(0.0)
    u_idx, u_key, u_z = -1, _U64(0), row.dtype.type(0.0)
    explores = eps > 0.0
    zero = row.dtype.type(0.0)
    for a in range(width):
        if not _allowed(mask_row, has_mask, packed, a):
            d[a] = -_INF
            continue
        count += 1
        z = _scaled(row[a], s_r, lo, hi, it_r)
        d[a] = z
        m = z if z > m else m
        key = z + gumbels[a >> 1, a & 1]
        if key != key:
            key = -_INF
        if g_idx < 0 or key > g_key:
            g_idx, g_key, g_z = a, key, z
        if explores:
            ubits = _U64(words[a >> 1, 1 + 2 * (a & 1)])
            if u_idx < 0 or ubits > u_key:
                u_idx, u_key, u_z = a, ubits, z
    for a in range(width):
        z = d[a]
        d[a] = z if z == -_INF else (zero if z == m else z - m)
    chosen, z_a = (u_idx, u_z) if _explores(eps, r, key0, key1, o0, o1) else (g_idx, g_z)
    return (chosen if chosen >= 0 else 0), z_a, m, count


@numba.njit(cache=True, error_model="numpy")
def _chunk_exps(d, e, n):
    """e[i] = exp(d[i]) and d[i] = e[i] d[i] (a tilt term; 0 where d[i] = -inf) for i < n, in
    the type of d (libm's expf was the row pass's float32 exponential too): one loop LLVM
    vectorises, a function of its own as _fill_gumbels is."""
    zero = d.dtype.type(0.0)
    for i in range(n):
        x = d[i]
        y = vm.exp(x)
        e[i] = y
        d[i] = zero if x == -_INF else y * x


@numba.njit(cache=True, error_model="numpy")
def _chunk_lse(m, total, lse, n):
    """lse[j] = m[j] + log(total[j]) for j < n (lse may be m), in a loop LLVM vectorises
    (_vmath.log, within a few float64 ulps; log(0) = -inf for rows with nothing finite)."""
    for j in range(n):
        lse[j] = m[j] + vm.log(total[j])


@numba.njit(cache=True)
def sample_chunk(logits, mask, has_mask, packed, scale, inv_t, lo, hi, epsilon, first, end, key0,
                 key1, o0, o1, words, gumbels):
    """Draws rows first..end (a chunk: chunk_words' words and gumbels) of a call keyed (key0,
    key1, o0, o1); returns (picks, values): picks[0, j] = the action of row first + j,
    picks[1, j] = its allowed count; values[0..3, j] = log pi(action), the logsumexp, the sum of
    exponentials relative to the max and their tilt sum. Any kernel calling this for the same
    row draws the same action and log-probability. Its scratch is the chunk's own: made once a
    call for every row, it was 134 MB at N=65536, A=256, and its page faults made that call
    1.2x slower than with the streaming pass.

    Rows that compute every key (up to 256 actions, see draws_gumbels) take three passes: per
    row, the keys' argmax, the max and the differences to it (_row_keys); one vectorised loop of
    exponentials over the chunk's elements (_chunk_exps), summed per row; one vectorised loop of
    logarithms over its rows (_chunk_lse). One thread, 2M elements, N(0, 1) logits, 80%
    allowed, epsilon 0.1, in ns an element against the one streaming pass per row that all rows
    took until session 19 (a libm call an element and one a row): 23.7 vs 27.7 at 5 actions,
    9.7 vs 14.2 at 40, 8.0 vs 11.0 at 256. Wider rows keep that pass (_sample_row), which skips
    keys.

    A function of its own (one call per chunk), not inlined by Numba into the kernels' prange
    bodies: there Numba's parallel-loop passes went over its whole body again, in every kernel
    and serial twin that draws. The first run's compile of the sampler went from 13.0 to 6.2 s
    and of the HyperGrid rollout step from 14.9 + 5.7 (serial twin) to 8.3 + 0.9 s (2-core VM);
    timings were unchanged within the noise."""
    width = logits.shape[1]
    n = end - first
    picks = np.empty((2, n), dtype=np.int64)
    values = np.empty((4, n), dtype=np.float64)
    if not draws_gumbels(width):
        for j in range(n):
            r = first + j
            chosen, lp, lse, count, total, tilt = _sample_row(
                logits[r], mask[np.int64(r) if has_mask else np.int64(0)], has_mask, packed, r,
                scale[r], inv_t[r], lo, hi, float(epsilon[r]), key0, key1, o0, o1,
                words[:, :, j])
            picks[0, j] = chosen
            picks[1, j] = count
            values[0, j] = lp
            values[1, j] = lse
            values[2, j] = total
            values[3, j] = tilt
        return picks, values
    d = np.empty(n * width, dtype=logits.dtype)
    e = np.empty(n * width, dtype=logits.dtype)
    for j in range(n):
        r = first + j
        chosen, z_a, m, count = _row_keys(
            logits[r], mask[np.int64(r) if has_mask else np.int64(0)], has_mask, packed, r,
            scale[r], inv_t[r], lo, hi, float(epsilon[r]), key0, key1, o0, o1, words[:, :, j],
            gumbels[:, :, j], d[j * width:(j + 1) * width])
        picks[0, j] = chosen
        picks[1, j] = count
        values[0, j] = z_a
        values[1, j] = m
    _chunk_exps(d, e, n * width)
    for j in range(n):
        total = 0.0
        tilt = 0.0
        for a in range(j * width, (j + 1) * width):
            total += float(e[a])
            tilt += float(d[a])
        values[2, j] = total
        values[3, j] = tilt
    lse = values[1]
    _chunk_lse(lse, values[2], lse, n)
    for j in range(n):
        values[0, j] = values[0, j] - lse[j]
    return picks, values


@numba.njit(inline="always", cache=True)
def _sample_row(row, mask_row, has_mask, packed, r, s_r, it_r, lo, hi, eps, key0, key1, o0, o1,
                words):
    """Row r's draw on rows of over 256 actions, which skip keys (see draws_gumbels): (action,
    log pi(action), logsumexp, allowed count, sum of exponentials relative to the max, their
    tilt sum), in one streaming pass. The random words are those of row r of a call keyed (key0,
    key1, o0, o1), read from `words` ([pairs, 4], filled by chunk_words) but for the epsilon
    coin."""
    width = row.shape[0]
    m = row.dtype.type(-_INF)
    total = 0.0
    tilt = 0.0
    count = 0
    g_idx, g_key, g_z = -1, row.dtype.type(-_INF), row.dtype.type(0.0)
    u_idx, u_key, u_z = -1, _U64(0), row.dtype.type(0.0)
    stale, reach = True, 0.0
    explores = eps > 0.0
    for pair in range((width + 1) >> 1):
        w0, w1, w2, w3 = (_U64(words[pair, 0]), _U64(words[pair, 1]), _U64(words[pair, 2]),
                          _U64(words[pair, 3]))
        for j in range(2):
            a = 2 * pair + j
            if a >= width or not _allowed(mask_row, has_mask, packed, a):
                continue
            count += 1
            z = _scaled(row[a], s_r, lo, hi, it_r)
            e_z = 0.0  # exp(z - m), m the running max after z
            if z > m:
                if total > 0.0:
                    alpha = math.exp(float(m) - float(z))
                    tilt = alpha * (tilt + (float(m) - float(z)) * total)
                    total = total * alpha
                total += 1.0
                m = z
                e_z = 1.0
                stale = True
            elif z != -_INF:
                delta = float(z) - float(m)
                e_z = math.exp(delta)
                total += e_z
                tilt += e_z * delta
            bits = w0 if j == 0 else w2
            try_gumbel = True
            if g_idx >= 0 and abs(float(z)) <= 1e5:  # (False for NaN)
                # The skip test v >= exp(z - best + 1e-3 + 1e-6 (|z| + |best|)) of the module
                # docstring without an exp of its own: exp(z - m) (the sum's term) times
                # reach = exp(m - best + 1e-3 + 1e-6 |best|), renewed when m or best changes,
                # times 1 + 2e-6 |z| >= exp(1e-6 |z|) (|z| <= 1e5). A NaN or inf product
                # (infinite m or best) is never skipped.
                if stale:
                    reach = math.exp(float(m) - float(g_key) + 1e-3 + 1e-6 * abs(float(g_key)))
                    stale = False
                v = min(_philox.open_unit(bits), _philox.ONE_MINUS_TWO_M24)
                try_gumbel = not v >= e_z * reach * (1.0 + 2e-6 * abs(float(z)))
            if try_gumbel:
                key = z + _philox.gumbel(bits)
                if key != key:
                    key = -_INF
                if g_idx < 0 or key > g_key:
                    g_idx, g_key, g_z = a, key, z
                    stale = True
            # the uniform branch's argmax only matters when the coin can send the row there; its
            # data-dependent branch cost ~8 ns a row of 5 (mispredicted half the time)
            ubits = w1 if j == 0 else w3
            if explores and (u_idx < 0 or ubits > u_key):
                u_idx, u_key, u_z = a, ubits, z
    lse = float(m) + math.log(total)
    chosen, z_a = (u_idx, u_z) if _explores(eps, r, key0, key1, o0, o1) else (g_idx, g_z)
    return (chosen if chosen >= 0 else 0), float(z_a) - lse, lse, count, total, tilt


@numba.njit(parallel=True, cache=True)
def _sample_rows(logits, mask, has_mask, packed, scale, inv_t, lo, hi, epsilon, k0, k1, off_lo,
                 off_hi, actions, log_pi, log_mu, want_log_mu, entropy, want_entropy, lse_out):
    key0, key1, o0, o1 = _U64(k0), _U64(k1), _U64(off_lo), _U64(off_hi)
    rows, width = logits.shape
    for chunk in numba.prange(n_chunks(rows, width)):
        first, end, words, gumbels = chunk_words(chunk, rows, width, key0, key1, o0, o1)
        picks, values = sample_chunk(logits, mask, has_mask, packed, scale, inv_t, lo, hi,
                                     epsilon, first, end, key0, key1, o0, o1, words, gumbels)
        for r in range(first, end):
            j = r - first
            lp = values[0, j]
            lse_out[r] = values[1, j]
            actions[r] = picks[0, j]
            log_pi[r] = lp
            if want_log_mu:
                log_mu[r] = log_mixture(lp, float(epsilon[r]), float(picks[1, j]))
            if want_entropy:
                # total = 0 when every allowed scaled logit is -inf (NaN log pi, as on the other
                # backends); under Numba's Python error model x / 0 raises ZeroDivisionError
                total = values[2, j]
                entropy[r] = math.log(total) - values[3, j] / total if total > 0.0 else math.nan


# The log-prob kernels run branch-free loops over a row that LLVM vectorises, with
# _vmath.exp for the exponentials (a libm call per element kept them scalar, ~6 ns an element)
# and reassociation only (no nnan/ninf), so NaN and inf still propagate. Which mask a row has is
# decided outside the loops: the row helpers take the mask test as a function argument, and
# Numba compiles one specialisation per test (a run-time flag inside the loop blocked
# vectorisation, measured 7x slower). No "contract": with it the backward's recomputed scaled
# logit no longer matched the float32-rounded one behind the forward's lse (most likely
# scale * logit * inv_t - lse became one fused multiply-add), so a row whose only allowed action
# has |z| ~ 170 got gradients of ~1e-5 (logits) and ~5e-4 (scale) instead of 0 (found by the
# property tests; dropping it cost nothing measurable).
# The exponentials are computed for every element and the masked ones dropped by a select after
# (`e = exp(z - m)`, then `0 if ... else e`), not inside the conditional expression: written
# inside it, LLVM's cost model for Intel AVX-512 CPUs (icelake-server, sapphirerapids and the
# like, which prefer 256-bit vectors) left the forward's sum loop scalar, and the forward took
# 2.8x as long (4.6 ms against 1.64 ms at N=4096, A=256 on 2 Xeon cores). LLVM's Zen 4 tuning
# (NUMBA_CPU_NAME=znver4 on the same machine) vectorised both forms.
# Their prange bodies call vm.wide_vectors() (512-bit vectors where that tuning picks 256):
# N=4096, A=256, two threads, side by side on a 2-core Xeon ("rocketlake"): forward without a
# mask 1.19-1.31 -> 0.90 ms, with a mask 2.23-2.40 -> 1.89-2.00 ms, forward + backward
# 3.59-3.75 -> 2.91-2.95 ms. The sampler's row loop is a scalar stream; it did not change there.
_REASSOC = {"reassoc"}


@numba.njit(inline="always", cache=True)
def _allow_all(mask_row, a):
    return True


@numba.njit(inline="always", cache=True)
def _allow_byte(mask_row, a):
    return mask_row[a] != 0


@numba.njit(inline="always", cache=True)
def _allow_bit(mask_row, a):
    return (mask_row[a >> 3] >> (a & 7)) & 1 != 0


_MIN_KEY = np.int64(-(2 ** 63))
_LOW_63 = np.int64(2 ** 63 - 1)


@numba.njit(inline="always", cache=True)
def _order_key(value):
    """An int64 that orders like the float64 `value` (sign-magnitude -> two's complement)."""
    bits = _bits_of_f64(np.float64(value))
    return bits ^ ((bits >> np.int64(63)) & _LOW_63)


@numba.njit(inline="always", cache=True)
def _order_key_inverse(key):
    return key ^ ((key >> np.int64(63)) & _LOW_63)


@numba.njit(inline="always", cache=True, fastmath=_REASSOC)
def _row_log_prob(row, mask_row, allow, s_r, lo, hi, it_r, a_r):
    """(lse, log pi(a_r)) of one row: the max, then the sum of exponentials in float64. A masked
    action is -inf; an infinite max counts 1 for each element equal to it (torch.logsumexp's
    convention); NaN propagates; nothing allowed gives lse = -inf."""
    # The max runs over order-preserving integer keys of the float64 values: an integer max
    # vectorises, a float one does not without nnan (measured 5x). A NaN lands above +inf or
    # below -inf; either way the sum below turns it into a NaN lse.
    key = _MIN_KEY
    for a in range(row.shape[0]):
        z = float(_scaled(row[a], s_r, lo, hi, it_r)) if allow(mask_row, a) else -_INF
        k = _order_key(z)
        key = k if k > key else key
    m = _f64_from_bits(_order_key_inverse(key))
    total = 0.0
    for a in range(row.shape[0]):
        z = float(_scaled(row[a], s_r, lo, hi, it_r)) if allow(mask_row, a) else -_INF
        e = vm.exp(z - m)  # for every element, then selected (see above _REASSOC)
        total += 0.0 if z == -_INF else (1.0 if z == m else e)
    lse = m + math.log(total)
    z_a = float(_scaled(row[a_r], s_r, lo, hi, it_r)) if allow(mask_row, a_r) else -_INF
    return lse, z_a - lse


@numba.njit(inline="always", cache=True, fastmath=_REASSOC)
def _grad_term(row, mask_row, allow, a, g_it, s_r, lo, hi, it_r, lse_r, a_r):
    """(live, d log_pi / d z_a times g inv_t): live where the action is allowed and its scaled
    logit is not clipped (the term is 0 elsewhere)."""
    x = row[a]
    y = s_r * x
    live = allow(mask_row, a) & (y >= lo) & (y <= hi)
    z = float(_scaled(x, s_r, lo, hi, it_r))
    return live, g_it * ((1.0 if a == a_r else 0.0) - vm.exp(z - lse_r))


@numba.njit(inline="always", cache=True, fastmath=_REASSOC)
def _row_log_prob_grad(row, mask_row, allow, g, s_r, lo, hi, it_r, lse_r, a_r, grad_row,
                       need_logits):
    """Writes d log_pi / d logits of one row (when need_logits) and returns d / d scale."""
    s_f, g_it = float(s_r), g * float(it_r)
    acc = 0.0
    for a in range(row.shape[0]):
        live, term = _grad_term(row, mask_row, allow, a, g_it, s_r, lo, hi, it_r, lse_r, a_r)
        value = term if live else 0.0
        acc += value * float(row[a]) if live else 0.0
        if need_logits:
            grad_row[a] = value * s_f
    if acc != acc:
        # NaN: again without the zero terms. An allowed -inf logit adds 0 * -inf = NaN, yet it
        # has no effect on log pi (probability 0 at every nearby scale). A second pass only for
        # such rows: the test in the loop above cost ~3% of the fused forward + backward.
        acc = 0.0
        for a in range(row.shape[0]):
            live, term = _grad_term(row, mask_row, allow, a, g_it, s_r, lo, hi, it_r, lse_r,
                                    a_r)
            if live and term != 0.0:
                acc += term * float(row[a])
    return acc


@numba.njit(parallel=True, cache=True, fastmath=_REASSOC)
def _log_prob_rows(logits, actions, mask, has_mask, packed, scale, inv_t, lo, hi, log_pi, lse_out):
    rows, width = logits.shape
    for r in numba.prange(rows):
        vm.wide_vectors()
        a_r = min(max(actions[r], 0), width - 1)
        if not has_mask:
            lse, lp = _row_log_prob(logits[r], mask[0], _allow_all, scale[r], lo, hi, inv_t[r],
                                    a_r)
        elif packed:
            lse, lp = _row_log_prob(logits[r], mask[r], _allow_bit, scale[r], lo, hi, inv_t[r],
                                    a_r)
        else:
            lse, lp = _row_log_prob(logits[r], mask[r], _allow_byte, scale[r], lo, hi, inv_t[r],
                                    a_r)
        lse_out[r] = lse
        log_pi[r] = lp


@numba.njit(parallel=True, cache=True, fastmath=_REASSOC)
def _log_prob_backward_rows(grad, logits, actions, mask, has_mask, packed, scale, inv_t, lo, hi,
                            lse, grad_logits, need_logits, grad_scale, need_scale):
    """d log_pi_r / d logits[r, a] = scale_r inv_t_r (1[a = a_r] - pi_ra) where the scaled logit
    is allowed and not clipped (0 elsewhere); d / d scale_r = sum_a inv_t_r (...) logits[r, a]."""
    for r in numba.prange(logits.shape[0]):
        vm.wide_vectors()
        out = grad_logits[np.int64(r) if need_logits else np.int64(0)]
        g, lse_r, a_r = float(grad[r]), float(lse[r]), actions[r]
        if not has_mask:
            acc = _row_log_prob_grad(logits[r], mask[0], _allow_all, g, scale[r], lo, hi,
                                     inv_t[r], lse_r, a_r, out, need_logits)
        elif packed:
            acc = _row_log_prob_grad(logits[r], mask[r], _allow_bit, g, scale[r], lo, hi,
                                     inv_t[r], lse_r, a_r, out, need_logits)
        else:
            acc = _row_log_prob_grad(logits[r], mask[r], _allow_byte, g, scale[r], lo, hi,
                                     inv_t[r], lse_r, a_r, out, need_logits)
        if need_scale:
            grad_scale[r] = acc


def _mask_view(mask: torch.Tensor | None) -> tuple[np.ndarray, bool]:
    if mask is None:
        return np.zeros((1, 1), dtype=np.uint8), False
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return mask.numpy(), True


def _clip(clip, dtype):
    np_type = np.float64 if dtype == torch.float64 else np.float32
    lo, hi = clip if clip is not None else (-_INF, _INF)
    return np_type(lo), np_type(hi)


def serial_sampling(rows: int, width: int) -> bool:
    """Whether sampling `rows` rows of `width` actions runs on the calling thread: counted in
    Philox blocks drawn, one per pair of actions and one coin, per row."""
    return rows * ((width + 3) >> 1) < _PARALLEL_MIN_BLOCKS


def sample_forward(logits, mask, packed, scale, inv_temperature, clip, epsilon, seed_words,
                   want_log_mu, want_entropy):
    """(actions [N] int64, log_pi, log_mu, entropy, lse), log-probs in the compute dtype; log_mu
    / entropy are empty tensors when not requested. `seed_words` = (seed_lo, seed_hi, off_lo,
    off_hi)."""
    rows = logits.shape[0]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    actions = torch.empty(rows, dtype=torch.int64, device="cpu")
    log_pi = torch.empty(rows, dtype=dtype, device="cpu")
    log_mu = torch.empty(rows if want_log_mu else 0, dtype=dtype, device="cpu")
    entropy = torch.empty(rows if want_entropy else 0, dtype=dtype, device="cpu")
    lse = torch.empty(rows, dtype=dtype, device="cpu")
    mask_np, has_mask = _mask_view(mask)
    lo, hi = _clip(clip, dtype)
    serial_if(_sample_rows, serial_sampling(rows, logits.shape[1]))(
        as_numpy(logits, dtype), mask_np, has_mask, packed, row_or(scale, rows, dtype, 1.0),
        row_or(inv_temperature, rows, dtype, 1.0), lo, hi,
        row_or(epsilon, rows, dtype, 0.0), *seed_words, actions.numpy(), log_pi.numpy(),
        log_mu.numpy(), want_log_mu, entropy.numpy(), want_entropy, lse.numpy())
    return actions, log_pi, log_mu, entropy, lse


def log_prob_forward(logits, actions, mask, packed, scale, inv_temperature, clip):
    """(log_pi [N], lse [N]) in the compute dtype."""
    rows = logits.shape[0]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_pi = torch.empty(rows, dtype=dtype, device="cpu")
    lse = torch.empty(rows, dtype=dtype, device="cpu")
    mask_np, has_mask = _mask_view(mask)
    lo, hi = _clip(clip, dtype)
    # serial_if(.., False): parallel, except in a forked child (cpu._common._SERIAL_ONLY)
    serial_if(_log_prob_rows, False)(
        as_numpy(logits, dtype), actions.numpy(), mask_np, has_mask, packed,
        row_or(scale, rows, dtype, 1.0), row_or(inv_temperature, rows, dtype, 1.0), lo, hi,
        log_pi.numpy(), lse.numpy())
    return log_pi, lse


def log_prob_backward(grad, logits, actions, mask, packed, scale, inv_temperature, clip, lse,
                      need_logits, need_scale):
    """(grad_logits like logits or None, grad_scale [N] in the compute dtype or None)."""
    rows = logits.shape[0]
    dtype = lse.dtype
    wide = logits.dtype if logits.dtype in (torch.float32, torch.float64) else dtype
    grad_logits = empty(logits.shape if need_logits else (1, 1), dtype=wide)
    grad_scale = torch.empty(rows if need_scale else 1, dtype=dtype, device="cpu")
    mask_np, has_mask = _mask_view(mask)
    lo, hi = _clip(clip, dtype)
    serial_if(_log_prob_backward_rows, False)(
        row_or(grad, rows, dtype, 0.0), as_numpy(logits, dtype), actions.numpy(), mask_np,
        has_mask, packed, row_or(scale, rows, dtype, 1.0),
        row_or(inv_temperature, rows, dtype, 1.0), lo, hi, lse.numpy(), grad_logits.numpy(),
        need_logits, grad_scale.numpy(), need_scale)
    if need_logits and wide != logits.dtype:
        grad_logits = grad_logits.to(logits.dtype)
    return (grad_logits if need_logits else None), (grad_scale if need_scale else None)
