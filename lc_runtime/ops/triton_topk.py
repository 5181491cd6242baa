"""Triton top-k selection of block-sparse attention (SPEC §5 step 3, topk mode), ascending indices out.

What it replaces: ``torch.topk`` (unsorted) followed by an ascending ``torch.sort`` of the selected indices (the
order the BSA kernel visits key blocks in). One program per score row: the row's scores are mapped to integer keys
with the same order as the floats; a radix search, two bits per step (at most 16 steps of one reduction each,
stopping early once exactly k keys lie at or above the candidate), finds a threshold with exactly k keys at or above
it, or else the k-th largest key; the selected columns are compacted in ascending order with a prefix sum.
One read of the scores, one write of the indices; no sort.

Measured on the H200 at the 720p refine shape (84,480 rows of 2,640 scores, k = 165): 2.8-3.0 ms at 4 warps per row
(1, 2, 8, 16 warps: 7.0, 4.2, 3.1, 4.5 ms), against 4.2 ms for ``torch.topk`` alone and 10.7 ms for it plus the sort.
Tried and dropped (commit 6db842b): a search one byte per step through ``tl.histogram`` (256 bins, at most 4 steps):
the same indices, 5.0-5.5 ms (bench/results/bsa_nvidia-h200_20261122-0219-topk-histogram.md).

Ties: when several columns share the k-th largest score, the lowest-numbered ones are taken (as a stable descending
sort would); ``topk_ascending_ref`` is that rule in PyTorch. -0.0 and +0.0 count as equal (as in float comparison).
NaN scores are not supported (the selection of a NaN row is unspecified, as with ``torch.topk``).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _topk_ascending_kernel(scores_ptr, out_ptr, n_cols, k_sel, stride_s, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(scores_ptr + row * stride_s + cols, mask=inside, other=0.0).to(tl.float32) + 0.0  # -0.0 -> +0.0
    bits = x.to(tl.int32, bitcast=True)
    # int32 keys ordered as the floats: non-negative floats keep their bits, negative ones (sign set: a larger
    # magnitude has larger bits) get their 31 low bits flipped. Padding: INT_MIN, below every candidate below.
    key = tl.where(inside, bits ^ ((bits >> 31) & 0x7FFFFFFF), -2147483648)
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
    pos = tl.cumsum(take.to(tl.int32), axis=0) - 1
    tl.store(out_ptr + row * stride_o + pos, cols, mask=take)


# A row lives in one program's registers; the packed counts would allow 2^21 - 1 columns. The 720p refine of a
# 93-frame video has 2,640 key blocks.
MAX_COLS = 1 << 16


def _num_warps(block: int) -> int:
    return max(4, min(16, block // 1024))


def topk_ascending(
    scores: torch.Tensor, k: int, dtype: torch.dtype = torch.int64, *, num_warps: int | None = None
) -> torch.Tensor:
    """Columns of the ``k`` largest entries of each row of ``scores`` [..., N], in ascending column order.

    Returns [..., k] of ``dtype`` (int32 or int64). Ties at the k-th largest value take the lowest columns.
    ``num_warps``: per program (one row each); default by row length (bench/bench_bsa.py times the choices).
    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1. Raises ValueError for k outside [1, N].
    """
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
        _topk_ascending_kernel[(rows.shape[0],)](
            rows, out, n, k, rows.stride(0), out.stride(0), BLOCK=block, num_warps=num_warps or _num_warps(block)
        )
    return out.view(*scores.shape[:-1], k)
