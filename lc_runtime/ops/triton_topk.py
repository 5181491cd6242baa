"""Triton top-k selection of block-sparse attention (SPEC §5 step 3, topk mode), ascending indices out.

What it replaces: ``torch.topk`` (unsorted) followed by an ascending ``torch.sort`` of the selected indices (the
order the BSA kernel visits key blocks in). One program per score row: the row's scores are mapped to integer keys
with the same order as the floats; a search over the keys finds a threshold with exactly k keys at or above it, or
else the k-th largest key; the selected columns are compacted in ascending order with a prefix sum. One read of the
scores, one write of the indices; no sort. Two searches (``topk_ascending(method=...)``), the same indices:

- "radix" (``_topk_ascending_kernel``): two bits per step, at most 16 steps, stopping early once exactly k keys lie
  at or above the candidate. A step counts three candidates at once (three compares per score, one packed int64
  reduction). Measured on the H200 at the 720p refine shape (84,480 rows of 2,640 scores, k = 165): 2.8-3.0 ms at 4
  warps per row (1, 2, 8, 16 warps: 7.0, 4.2, 3.1, 4.5 ms), against 4.2 ms for ``torch.topk`` alone and 10.7 ms for
  it plus the sort. Tried and dropped (commit 6db842b): a search one byte per step through ``tl.histogram`` (256
  bins, at most 4 steps): the same indices, 5.0-5.5 ms (bench/results/bsa_nvidia-h200_20261122-0219-topk-histogram.md).
- "interp" (``_topk_interp_kernel``, the default): one threshold per step, one compare and one int32 count reduction
  per score. The bracket [lo, hi) starts at the row's smallest key and one past its largest (two reductions); each
  guess interpolates the count k + 0.5 between the bracket's ends in float value, on a log-odds scale of the counts
  (Illinois-weighted against a stalled end), and is projected into the part of the bracket that keeps the worst case
  a bisection's (at most ``INTERP_MAX_STEPS`` = 33 steps; the projection never binds on realistic rows). It stops at
  a count of exactly k, at one key too many above lo or one too few above hi (then one int64 reduction of (key,
  column) pairs finishes), or at a bracket one key wide. Steps on rows of 2,640 scores, k = 165 (CPU, interpreter):
  4.8 on average (at most 9-10) for Gaussian scores and dot products of Gaussian means, against 9.0 (at most 13) for
  the radix search; a step is about 200 instructions per thread against the radix step's 330 (sm_90 SASS at 4
  warps). Tie-heavy rows (few distinct values) take up to 33 steps. Its row is a [BLOCK / 32, 32] tile
  (``INTERP_GROUP``): the final prefix sum runs within rows of 32 columns plus once over the 128 rows' counts,
  instead of over one 4,096-long vector, whose scan cost ~1 ms. On the H200 at the 720p refine shape, on the op's
  scores (bench/bsa_op_probe.py, results/bsa_op_probe_nvidia-h200_20261122-s12c): 1.2-1.3 ms at 4 warps per row
  (groups of 16 / 32 / 64: 1.3 / 1.2 / 1.3 ms; at 8 warps 1.6-1.7 ms), against 2.3-2.4 ms as one vector (group 0)
  and 3.0 ms for the radix search (s12b), same indices. Rows of at most 3/4 of a power of two are held as two tiles,
  half the power of two and the rest rounded up (``INTERP_SPLIT``, ``TAIL``: 2,640 columns as 2,048 + 1,024 instead of
  4,096), at half the warps: every step compares and counts a quarter fewer columns. Session 15, same run
  (results/bsa_op_probe_nvidia-h200_20261122-s15c): 1.3 ms against 1.7 ms as one tile, the same indices.

Ties: when several columns share the k-th largest score, the lowest-numbered ones are taken (as a stable descending
sort would); ``topk_ascending_ref`` is that rule in PyTorch. -0.0 and +0.0 count as equal (as in float comparison).
NaN scores are not supported (the selection of a NaN row is unspecified, as with ``torch.topk``).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _row_keys(row_ptr, cols, n_cols):
    """int32 keys of a row's columns ``cols`` and which columns exist. The keys are ordered as the floats:
    non-negative floats keep their bits, negative ones (sign set: a larger magnitude has larger bits) get their 31 low
    bits flipped; -0.0 counts as +0.0. Padding: INT_MIN, below every candidate threshold of both searches."""
    inside = cols < n_cols
    x = tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32) + 0.0  # -0.0 -> +0.0
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(inside, bits ^ ((bits >> 31) & 0x7FFFFFFF), -2147483648), inside


@triton.jit
def _compact(out_row, take, cols, before, k_sel, GROUP: tl.constexpr):
    """Stores the taken columns of a tile at positions ``before`` + their rank among the taken; returns how many."""
    taken = take.to(tl.int32)
    if GROUP:  # prefix sums within each group of GROUP columns, plus the groups' exclusive prefix sum
        per_group = tl.sum(taken, axis=1)
        pos = tl.cumsum(taken, axis=1) + (tl.cumsum(per_group, axis=0) - per_group)[:, None] + (before - 1)
        total = tl.sum(per_group, axis=0)
    else:
        pos = tl.cumsum(taken, axis=0) + (before - 1)
        total = tl.sum(taken, axis=0)
    tl.store(out_row + pos, cols, mask=take & (pos < k_sel))
    return total


@triton.jit
def _topk_ascending_kernel(scores_ptr, out_ptr, n_cols, k_sel, stride_s, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    key, inside = _row_keys(scores_ptr + row * stride_s, cols, n_cols)
    # Radix search, two bits per step: t is the largest value found so far with count(key >= t) >= k (n_ge of
    # them). Each step counts the keys at or above t + j * 2^lo (j = 1, 2, 3) in one packed int64 reduction
    # (21 bits per count) and keeps the largest candidate that still has >= k keys at or above it. It stops when
    # exactly k keys are at or above t (the selection is then key >= t), or after the last bit, where t is the
    # k-th largest key (ties at it are resolved below). The first step's candidates are -2^30, 0 and 2^30.
    t = tl.full((), -2147483648, tl.int32)
    n_ge = n_cols
    lo = 30
    while (lo >= 0) & (n_ge > k_sel):
        unit = tl.full((), 1, tl.int32) << lo
        c1 = t + unit
        c2 = c1 + unit
        c3 = c2 + unit
        packed = (key >= c1).to(tl.int64) + ((key >= c2).to(tl.int64) << 21) + ((key >= c3).to(tl.int64) << 42)
        total = tl.sum(packed, axis=0)
        n1 = (total & 0x1FFFFF).to(tl.int32)
        n2 = ((total >> 21) & 0x1FFFFF).to(tl.int32)
        n3 = (total >> 42).to(tl.int32)
        t = tl.where(n3 >= k_sel, c3, tl.where(n2 >= k_sel, c2, tl.where(n1 >= k_sel, c1, t)))
        n_ge = tl.where(n3 >= k_sel, n3, tl.where(n2 >= k_sel, n2, tl.where(n1 >= k_sel, n1, n_ge)))
        lo -= 2
    above = key > t
    tied = (key == t) & inside
    need = k_sel - tl.sum(above.to(tl.int32), axis=0)  # tied columns to take, lowest-numbered first
    take = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= need))
    _compact(out_ptr + row * stride_o, take, cols, 0, k_sel, 0)


# Steps of the interpolation search at most. The bracket starts at most 2^32 keys wide (kmax + 1 - kmin); every guess
# is projected so that after step j (from 0) the bracket is at most 2^(32 - j) keys wide, one key after step 32. A
# bisection in key space needs 32; the one step of slack leaves the first guesses free on rows whose keys span more
# than 2^31 (e.g. scores beyond +-4 on both sides), where a bound of 32 would force the first guess near 0.0.
INTERP_MAX_STEPS = 33


@triton.jit
def _log2_approx(x):
    """log2 of a positive float, linear between powers of two (error < 0.09): its exponent and mantissa bits."""
    return (x.to(tl.int32, bitcast=True) - 0x3F800000).to(tl.float32) * 1.1920928955078125e-07


@triton.jit
def _count_logit(c, n):
    """The scale the search interpolates counts on: log odds of c keys of n at or above a threshold (c + 0.5 of n + 1
    on both sides, so that 0 and n are finite)."""
    return _log2_approx(c + 0.5) - _log2_approx(n - c + 0.5)


@triton.jit
def _key_value(key):
    """The float whose key (``_row_keys``) is ``key`` (int32), +-inf as +-FLT_MAX (no inf - inf)."""
    v = (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    return tl.minimum(tl.maximum(v, -3.4028234663852886e38), 3.4028234663852886e38)


@triton.jit
def _columns(BLOCK: tl.constexpr, GROUP: tl.constexpr):
    """Column numbers 0..BLOCK-1: a vector, or (GROUP > 0) rows of GROUP consecutive columns [BLOCK // GROUP, GROUP]."""
    if GROUP:
        return tl.arange(0, BLOCK // GROUP)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    else:
        return tl.arange(0, BLOCK)


@triton.jit
def _count(hit, hit_t, TAIL: tl.constexpr):
    """How many entries of ``hit`` (and, with a tail tile, of ``hit_t``) are true."""
    c = tl.sum(hit.to(tl.int32), axis=None)
    if TAIL:
        c += tl.sum(hit_t.to(tl.int32), axis=None)
    return c


@triton.jit
def _topk_interp_kernel(
    scores_ptr,
    out_ptr,
    n_cols,
    k_sel,
    stride_s,
    stride_o,
    BLOCK: tl.constexpr,
    MAX_STEPS: tl.constexpr,
    GROUP: tl.constexpr = 0,
    TAIL: tl.constexpr = 0,
    TAIL_GROUP: tl.constexpr = 0,
):
    # The row: columns [0, BLOCK) in one tile and, with TAIL > 0, columns [BLOCK, BLOCK + TAIL) in a second one
    # (2,640 columns as 2,048 + 1,024 instead of 4,096: a quarter less work per step). Every count, min and max
    # below covers both tiles (``_count``; ``if TAIL`` otherwise).
    row = tl.program_id(0).to(tl.int64)
    row_ptr = scores_ptr + row * stride_s
    cols = _columns(BLOCK, GROUP)
    key, inside = _row_keys(row_ptr, cols, n_cols)
    if TAIL:
        cols_t = BLOCK + _columns(TAIL, TAIL_GROUP)
        key_t, inside_t = _row_keys(row_ptr, cols_t, n_cols)
    else:
        cols_t, key_t, inside_t = cols, key, inside  # (not read)
    # The bracket [lo, hi) of keys (int64: hi may be 2^31, widths 2^32): c_lo = count(key >= lo) > k and
    # c_hi = count(key >= hi) < k, with the float values lo_v, hi_v of its ends and their count logits f_lo, f_hi.
    kmin = tl.min(tl.where(inside, key, 2147483647), axis=None)
    kmax = tl.max(key, axis=None)
    if TAIL:
        kmin = tl.minimum(kmin, tl.min(tl.where(inside_t, key_t, 2147483647), axis=None))
        kmax = tl.maximum(kmax, tl.max(key_t, axis=None))
    lo = kmin.to(tl.int64)
    hi = kmax.to(tl.int64) + 1
    lo_v = _key_value(kmin)
    hi_v = _key_value(kmax)
    n_i = tl.full((), 0, tl.int32) + n_cols  # (tensors: n_cols or k_sel may be specialised to constants)
    c = n_i  # the last count, here lo's
    c_lo = n_i
    c_hi = tl.full((), 0, tl.int32)
    n_f = n_i.to(tl.float32)
    k_f = (c_hi + k_sel).to(tl.float32)
    f_lo = _count_logit(n_f, n_f)
    f_hi = _count_logit(n_f * 0.0, n_f)
    f_target = _log2_approx(k_f + 1.0) - _log2_approx(tl.maximum(n_f - k_f, 0.5))  # _count_logit(k + 0.5, n)
    w_lo = tl.full((), 1.0, tl.float32)  # Illinois weights of the ends
    w_hi = tl.full((), 1.0, tl.float32)
    side = tl.full((), 0, tl.int32)  # the end the last guess replaced: 1 lo, -1 hi
    half = tl.full((), 1 << (MAX_STEPS - 1), tl.int64)  # after this step the bracket is at most this wide
    t = kmin  # the last guess (here lo)
    searching = (c_lo != k_sel) & (hi - lo > 1) & (c_lo != k_sel + 1) & (c_hi != k_sel - 1)
    while searching:
        # Guess: interpolate the count k + 0.5 between the ends (counts on the log-odds scale, the distances of the
        # ends weighted as in the Illinois method; float values), take its key, project it into the part of the
        # bracket that leaves at most `half` keys on either side (ITP's projection: a bisection's worst case) and
        # strictly inside the bracket. Then count the keys at or above it and move one end there.
        a = (f_lo - f_target) * w_lo  # > 0
        b = (f_target - f_hi) * w_hi  # > 0
        frac = tl.fdiv(a, a + b)
        guess = lo_v * (1.0 - frac) + hi_v * frac
        gbits = guess.to(tl.int32, bitcast=True)
        g = (gbits ^ ((gbits >> 31) & 0x7FFFFFFF)).to(tl.int64)
        g = tl.minimum(tl.maximum(g, tl.maximum(lo + 1, hi - half)), tl.minimum(hi - 1, lo + half))
        t = g.to(tl.int32)
        c = _count(key >= t, key_t >= t, TAIL)
        f_c = _count_logit(c.to(tl.float32), n_f)
        g_v = _key_value(t)
        up = c > k_sel
        # Illinois: when the same end moves twice in a row, halve the other end's weight
        w_hi = tl.where(up, tl.where(side == 1, w_hi * 0.5, w_hi), 1.0)
        w_lo = tl.where(up, 1.0, tl.where(side == -1, w_lo * 0.5, w_lo))
        side = tl.where(up, 1, -1)
        lo = tl.where(up, g, lo)
        c_lo = tl.where(up, c, c_lo)
        f_lo = tl.where(up, f_c, f_lo)
        lo_v = tl.where(up, g_v, lo_v)
        hi = tl.where(up, hi, g)
        c_hi = tl.where(up, c_hi, c)
        f_hi = tl.where(up, f_hi, f_c)
        hi_v = tl.where(up, hi_v, g_v)
        half = half >> 1
        searching = (c != k_sel) & (hi - lo > 1) & (c_lo != k_sel + 1) & (c_hi != k_sel - 1)
    # The selection: all keys above a threshold key thr, and the columns <= cb of those equal to it.
    thr = t  # exactly k keys at or above the last guess t (c and t: the last step's): all of them
    cb = n_i - 1
    exact = c == k_sel
    one_over = (c_lo == k_sel + 1) & ~exact
    one_under = (c_hi == k_sel - 1) & ~exact & ~one_over
    if one_over | one_under:
        # One key too many at or above lo, or one too few at or above hi: one reduction of (key, column) pairs finds
        # the smallest key at or above lo (the largest below hi) and the highest (lowest) of its columns, the one
        # the tie rule drops (adds). Below hi, keys are flipped (~key: the order reversed, no overflow) and columns
        # too, so that both are the same min-reduction. Padding (INT_MIN) lies below lo (lo >= the row's smallest
        # key > INT_MIN: only NaN bits map to INT_MIN) and flips to INT_MAX, above every flipped score below hi.
        flip = tl.where(one_under, -1, 0)
        SPAN: tl.constexpr = 2 * BLOCK if TAIL else BLOCK  # (columns < SPAN, a power of two)
        col_flip = tl.where(one_under, 0, SPAN - 1)
        bound = tl.where(one_under, (hi - 1).to(tl.int32), lo.to(tl.int32)) ^ flip  # (hi may be 2^31)
        packed = ((key ^ flip).to(tl.int64) << 32) | (cols ^ col_flip).to(tl.int64)
        p = tl.min(tl.where((key ^ flip) >= bound, packed, 9223372036854775807), axis=None)
        if TAIL:
            packed_t = ((key_t ^ flip).to(tl.int64) << 32) | (cols_t ^ col_flip).to(tl.int64)
            p = tl.minimum(p, tl.min(tl.where((key_t ^ flip) >= bound, packed_t, 9223372036854775807), axis=None))
        thr = (p >> 32).to(tl.int32) ^ flip
        col = p.to(tl.int32) ^ col_flip  # the low word
        cb = tl.where(one_under, col, col - 1)
    elif ~exact:
        # The bracket is one key wide: the k-th largest key is lo, above it are c_hi < k keys; cb: the column of
        # its (k - c_hi)-th occurrence, by bisection on the column (at most log2(n) counts; a prefix sum would take
        # more registers than the rest of the kernel). Rows end here only when four or more columns
        # share the k-th largest score (c_lo >= k + 2, c_hi <= k - 2).
        thr = lo.to(tl.int32)
        need = k_sel - c_hi
        c_a = tl.full((), -1, tl.int32)  # fewer than need occurrences in columns <= c_a, at least need in <= c_b
        c_b = n_i - 1
        while c_b - c_a > 1:
            mid = (c_a + c_b) // 2
            enough = _count((key == thr) & (cols <= mid), (key_t == thr) & (cols_t <= mid), TAIL) >= need
            c_a = tl.where(enough, c_a, mid)
            c_b = tl.where(enough, mid, c_b)
        cb = c_b
    # out_cols: the columns again, plus program_id(1) (0: the grid is one-dimensional) so that the compiler does not
    # keep the load's 64-bit column offsets alive through the search for the store (150 registers at 4 warps, not 164)
    out_cols = _columns(BLOCK, GROUP) + tl.program_id(1)
    out_row = out_ptr + row * stride_o
    before = _compact(out_row, (key > thr) | ((key == thr) & (out_cols <= cb)), out_cols, 0, k_sel, GROUP)
    if TAIL:
        out_cols_t = BLOCK + _columns(TAIL, TAIL_GROUP) + tl.program_id(1)
        _compact(out_row, (key_t > thr) | ((key_t == thr) & (out_cols_t <= cb)), out_cols_t, before, k_sel, TAIL_GROUP)


# A row lives in one program's registers; the radix search's packed counts would allow 2^21 - 1 columns. The 720p
# refine of a 93-frame video has 2,640 key blocks.
MAX_COLS = 1 << 16


def _num_warps(block: int) -> int:
    return max(4, min(16, block // 1024))


METHODS = ("interp", "radix")
# The interpolation search's row layout: rows of INTERP_GROUP consecutive columns (a [BLOCK / G, G] tile; its final
# prefix sum runs within groups, plus one over the groups' counts), or 0: one vector of BLOCK columns.
INTERP_GROUP = 32
# The interpolation search's row as two tiles (half the power of two and the rest, rounded up) where that saves a
# quarter or more of the columns (``topk_ascending(split=...)``), at half the warps of one tile: 2,640 columns as
# 2,048 + 1,024 at 2 warps. At the 720p refine shape on an H200, same run (bench/bsa_op_probe.py,
# results/bsa_op_probe_nvidia-h200_20261122-s15c): 1.3 ms against 1.7 ms as one tile of 4,096 at 4 warps (two tiles
# at 4 warps: 1.4 ms, at 8: 1.8-1.9 ms), the same indices.
INTERP_SPLIT = True


def topk_ascending(
    scores: torch.Tensor,
    k: int,
    dtype: torch.dtype = torch.int64,
    *,
    num_warps: int | None = None,
    method: str = "interp",
    group: int | None = None,
    split: bool | None = None,
) -> torch.Tensor:
    """Columns of the ``k`` largest entries of each row of ``scores`` [..., N], in ascending column order.

    Returns [..., k] of ``dtype`` (int32 or int64). Ties at the k-th largest value take the lowest columns.
    ``num_warps``: per program (one row each); default by row length (bench/bench_bsa.py times the choices).
    ``method``: "interp" (the interpolation search, ``_topk_interp_kernel``) or "radix" (the radix search,
    ``_topk_ascending_kernel``); both return the same indices. ``group``: the interpolation search's column groups
    (0 or a power of two; default ``INTERP_GROUP``); any gives the same indices. ``split``: the interpolation
    search's row as two tiles where that saves a quarter of the columns or more (default ``INTERP_SPLIT``); the same
    indices.
    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. Raises ValueError for k outside [1, N] and for
    an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"topk_ascending: method must be one of {METHODS}; got {method!r}")
    if group is not None and (group < 0 or group & (group - 1)):
        raise ValueError(f"topk_ascending: group must be 0 or a power of two; got {group}")
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"topk_ascending: k must be in [1, {n}] for rows of {n} scores; got {k}")
    if n > MAX_COLS:
        raise ValueError(f"topk_ascending: rows of at most {MAX_COLS} scores (one row per program); got {n}")
    if dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ascending: dtype must be torch.int32 or torch.int64; got {dtype}")
    rows = scores.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], k, dtype=dtype, device=scores.device)
    if rows.shape[0]:
        block = triton.next_power_of_2(n)
        args = (rows, out, n, k, rows.stride(0), out.stride(0))
        warps = num_warps or _num_warps(block)
        if method == "radix":
            _topk_ascending_kernel[(rows.shape[0],)](*args, BLOCK=block, num_warps=warps)
        else:
            group = INTERP_GROUP if group is None else group
            tail = 0
            if (INTERP_SPLIT if split is None else split) and block >= 8 and 4 * n <= 3 * block:
                block //= 2  # the row as half the power of two plus a tail tile of the rest (rounded up)
                tail = triton.next_power_of_2(n - block)
                warps = num_warps or max(2, warps // 2)  # as many columns per thread as one tile of 2 x block
            _topk_interp_kernel[(rows.shape[0],)](
                *args, BLOCK=block, MAX_STEPS=INTERP_MAX_STEPS, GROUP=min(group, block), TAIL=tail,
                TAIL_GROUP=min(group, tail), num_warps=warps,
            )  # fmt: skip
    return out.view(*scores.shape[:-1], k)
