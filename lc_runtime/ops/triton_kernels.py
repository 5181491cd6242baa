"""Triton kernels of the DiT's memory-bound ops; the ops, their fakes and PyTorch references live in fused.py.

Design note
-----------
What they fuse. Each kernel replaces a chain of eager PyTorch ops that writes fp32 intermediates to HBM:

* ``norm_rows``: fp32 LayerNorm (no affine) + per-frame ``x·(1+scale)+shift`` -> bf16 (adaLN modulate), or an
  affine fp32 LayerNorm -> bf16 (the cross-attention pre-norm). Eager: ~6 passes with fp32 temporaries; here 1 read
  of x, 1 write.
* ``gated_add_rows``: ``x + gate·y`` in fp32 with a per-frame gate, rounded once to bf16 (the residual adds).
* ``head_norm_rope``: per-head RMSNorm (fp32 statistics, rounded to bf16, bf16 gain multiply, exactly as the
  reference) + interleaved-pair 3-D RoPE from the fp32 cos/sin tables (whose temporal rows already carry the
  cached decode's offset), read from the strided q/k views of the fused qkv GEMM output and written [B, S, H, D]
  contiguous, the layout FlashAttention-3 reads; ``ROPE=False`` gives the cross-attention q norm. Rows are loaded
  whole (vectorised) and the pair rotation is a register split/join, not strided loads.
* ``swiglu_rows``: ``silu(a)·b`` on the [w1;w3] GEMM output [M, 2F] (a = first F columns), rounded as the
  reference (silu rounded to bf16, then the bf16 product).
* ``merge_rows``: two partial attentions merged by their log-sum-exps (the cached decode's prefix + new keys).

Memory traffic at the 480p batch-2 shape (M = 74,880 tokens, C = 4096, bf16 x = 613 MB): norm 2x, gated add 3x,
qk norm+rope 4x, swiglu 8x (the [M, 22016] GEMM output dominates); all are bandwidth-bound, ~27x = 17 GB per block.

Launch shapes. Row kernels (norm_rows, gated_add_rows): a program takes ROWS consecutive token rows of C features
as a [ROWS, BLOCK_C] tile (BLOCK_C = next power of two >= C, 4-16 warps, per-row statistics), ROWS = 4 or 2 when
it divides both N and the tokens of a frame, so a program's rows share one batch entry and one frame and the fp32
per-frame vectors (shift/scale, gate) and the affine weight/bias are loaded once per program and broadcast over
its rows instead of once per row; otherwise ROWS = 1 (one program per row, as before). The tile is capped at 32
fp32 values per thread. head_norm_rope / merge: BLOCK_R (token, head) rows of D features per program, rows in
(b, s, h) order so the stores are contiguous. Measured on the H200 at the 480p batch-2 shape
(bench/row_kernel_probe.py, results/row_kernel_probe_nvidia-h200.json): norm_rows (modulate) with 4 rows per
program and 16 warps takes 0.372 ms against 0.596 ms with one row (bitwise the same output); head_norm_rope with
16 rows and 4 warps, 0.365 ms. Loading one cos/sin row per program when its rows are heads of one token was
slower there (0.487 ms) and was taken out; 32 rows per program was no faster (0.363 ms).
swiglu: grid (M, cdiv(F, BLOCK)). Offsets are int64 (the 720p batch-2 qkv output has more than 2^31
elements).

Numerics. All math in fp32; roundings to the storage dtype happen where the reference rounds (documented per
kernel). Reduction order differs from PyTorch (tree vs. vectorised sums) and Triton may contract a*b+c into an
FMA, so results agree with the references to an ulp of fp32 before the final bf16 rounding: tests compare against
the fp32 truth with the STYLE #9 bound. Limits: the feature dim must be unit-stride; D even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _row_warps(block: int) -> int:
    return max(1, min(16, block // 256))


# ---------------------------------------------------------------------------------------------- LayerNorm rows
@triton.jit
def _norm_rows_kernel(
    X, OUT, W, BIAS, SHIFT, SCALE,
    N, C, tokens_per_frame,
    sx_b, sx_n, so_b, so_n, ssh_b, ssh_t, ssc_b, ssc_t,
    eps,
    AFFINE: tl.constexpr, MODULATE: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # ROWS consecutive token rows of one batch entry (and, with MODULATE, of one frame): N % ROWS == 0 and
    # tokens_per_frame % ROWS == 0 (_rows_per_program), so there is no tail and b, f are program scalars.
    row0 = tl.program_id(0).to(tl.int64) * ROWS
    b = row0 // N
    n = row0 % N + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    m = cm[None, :]  # no row mask: the grid covers B·N / ROWS whole programs
    x = tl.load(X + (b * sx_b + n * sx_n)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(m, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C
    y = xc * (1.0 / tl.sqrt(var + eps))[:, None]
    if AFFINE:  # loaded once per program, broadcast over its rows
        w = tl.load(W + cols, mask=cm, other=0.0).to(tl.float32)
        bias = tl.load(BIAS + cols, mask=cm, other=0.0).to(tl.float32)
        y = y * w[None, :] + bias[None, :]
    if MODULATE:  # one frame per program: shift/scale loaded once, broadcast over its rows
        f = (row0 % N) // tokens_per_frame
        shift = tl.load(SHIFT + b * ssh_b + f * ssh_t + cols, mask=cm, other=0.0)
        scale = tl.load(SCALE + b * ssc_b + f * ssc_t + cols, mask=cm, other=0.0)
        y = y * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(OUT + (b * so_b + n * so_n)[:, None] + cols[None, :], y.to(OUT.dtype.element_ty), mask=m)


def _rows_per_program(block: int, n: int, tokens_per_frame: int) -> int:
    """Token rows per program of the row kernels: the largest of 4, 2, 1 dividing both N and the tokens of a frame
    (so a program's rows share the batch entry and the frame) whose [ROWS, BLOCK_C] fp32 tile stays <= 32 values
    per thread (headroom under the 128 registers a thread of a 16-warp program can have)."""
    for rows in (4, 2):
        if n % rows == 0 and tokens_per_frame % rows == 0 and rows * block <= 32 * 32 * _row_warps(block):
            return rows
    return 1


def norm_rows(x, out, *, weight=None, bias=None, shift=None, scale=None, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dim of x [B, N, C] (fp32 math) into ``out`` [B, N, C]; with weight/bias (affine)
    or shift/scale [B, T, 1, C] fp32 (per-frame modulation, frame = token // (N / T))."""
    B, N, C = x.shape
    affine, modulate = weight is not None, shift is not None
    frames = shift.shape[1] if modulate else 1
    sh = shift if modulate else x
    sc = scale if modulate else x
    block = _pow2(C)
    rows = _rows_per_program(block, N, N // frames)
    _norm_rows_kernel[(B * N // rows,)](
        x, out, weight if affine else x, bias if affine else x, sh, sc,
        N, C, N // frames,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        sh.stride(0), sh.stride(1) if modulate else 0, sc.stride(0), sc.stride(1) if modulate else 0,
        eps,
        AFFINE=affine, MODULATE=modulate, ROWS=rows, BLOCK_C=block, num_warps=_row_warps(block),
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- gated residual
@triton.jit
def _gated_add_rows_kernel(
    X, GATE, Y, OUT,
    N, C, tokens_per_frame,
    sx_b, sx_n, sy_b, sy_n, so_b, so_n, sg_b, sg_t,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # ROWS consecutive token rows of one batch entry and one frame (as _norm_rows_kernel): the gate is loaded once.
    row0 = tl.program_id(0).to(tl.int64) * ROWS
    b = row0 // N
    n = row0 % N + tl.arange(0, ROWS)
    f = (row0 % N) // tokens_per_frame
    cols = tl.arange(0, BLOCK_C)
    cm = cols < C
    m = cm[None, :]
    x = tl.load(X + (b * sx_b + n * sx_n)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    y = tl.load(Y + (b * sy_b + n * sy_n)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    g = tl.load(GATE + b * sg_b + f * sg_t + cols, mask=cm, other=0.0)
    out = (x + g[None, :] * y).to(OUT.dtype.element_ty)
    tl.store(OUT + (b * so_b + n * so_n)[:, None] + cols[None, :], out, mask=m)


def gated_add_rows(x, gate, y, out) -> torch.Tensor:
    """``out = x + gate·y`` (fp32 math, one rounding); x, y, out [B, N, C]; gate [B, T, 1, C] fp32."""
    B, N, C = x.shape
    block = _pow2(C)
    rows = _rows_per_program(block, N, N // gate.shape[1])
    _gated_add_rows_kernel[(B * N // rows,)](
        x, gate, y, out,
        N, C, N // gate.shape[1],
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1),
        gate.stride(0), gate.stride(1),
        ROWS=rows, BLOCK_C=block, num_warps=_row_warps(block),
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- q/k norm + RoPE
@triton.jit
def _head_norm_rope_kernel(
    X, W, OUT, COS, SIN,
    rows, N, H, D,
    sx_b, sx_h, sx_n, so_b, so_h, so_n, sc_n,
    eps,
    ROPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = r % H
    n = (r // H) % N
    b = r // (H * N)
    d = tl.arange(0, BLOCK_D)
    m = (r < rows)[:, None] & (d < D)[None, :]
    x = tl.load(X + (b * sx_b + h * sx_h + n * sx_n)[:, None] + d[None, :], mask=m, other=0.0).to(tl.float32)
    # RMSNorm_FP32: statistics in fp32, rounded to the storage dtype, then the gain multiply rounded again.
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
    dt = X.dtype.element_ty
    w = tl.load(W + d, mask=d < D, other=0.0).to(tl.float32)
    y = ((x * rstd[:, None]).to(dt).to(tl.float32) * w[None, :]).to(dt).to(tl.float32)
    if ROPE:  # y·cos + rotate_pairs(y)·sin in fp32, rotate_pairs: (y0, y1, ...) -> (-y1, y0, ...)
        tab = (n * sc_n)[:, None] + d[None, :]
        cos = tl.load(COS + tab, mask=m, other=0.0)
        sin = tl.load(SIN + tab, mask=m, other=0.0)
        ye, yo = tl.split(tl.reshape(y, (BLOCK_R, BLOCK_D // 2, 2)))
        rot = tl.reshape(tl.join(-yo, ye), (BLOCK_R, BLOCK_D))
        y = y * cos + rot * sin
    tl.store(OUT + (b * so_b + h * so_h + n * so_n)[:, None] + d[None, :], y.to(OUT.dtype.element_ty), mask=m)


def head_norm_rope(x, weight, out, cos=None, sin=None, eps: float = 1e-6) -> torch.Tensor:
    """Per-head RMSNorm (+ RoPE when cos/sin [N, D] fp32 are given) of x [B, H, N, D] (any strides, unit D
    stride) into ``out`` [B, H, N, D] (any strides, unit D stride)."""
    B, H, N, D = x.shape
    rope = cos is not None
    block_r = 16
    rows = B * H * N
    _head_norm_rope_kernel[(triton.cdiv(rows, block_r),)](
        x, weight, out, cos if rope else x, sin if rope else x,
        rows, N, H, D,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        cos.stride(0) if rope else 0,
        eps,
        ROPE=rope, BLOCK_R=block_r, BLOCK_D=_pow2(D), num_warps=4,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- SwiGLU
@triton.jit
def _swiglu_kernel(Hh, OUT, F, sh_m, so_m, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cm = cols < F
    a = tl.load(Hh + m * sh_m + cols, mask=cm, other=0.0).to(tl.float32)
    g = tl.load(Hh + m * sh_m + F + cols, mask=cm, other=0.0).to(tl.float32)
    dt = OUT.dtype.element_ty
    s = (a / (1.0 + tl.exp(-a))).to(dt).to(tl.float32)  # F.silu on a bf16 tensor rounds its result
    tl.store(OUT + m * so_m + cols, (s * g).to(dt), mask=cm)


def swiglu_rows(h, out) -> torch.Tensor:
    """``out = silu(h[:, :F]) · h[:, F:]``; h [M, 2F] (unit column stride), out [M, F]."""
    M, F2 = h.shape
    block = 1024
    _swiglu_kernel[(M, triton.cdiv(F2 // 2, block))](h, out, F2 // 2, h.stride(0), out.stride(0), BLOCK=block)
    return out


# ---------------------------------------------------------------------------------------------- LSE merge
@triton.jit
def _merge_kernel(
    OA, LA, OB, LB, OUT,
    rows, N, H, D,
    sa_b, sa_h, sa_n, sb_b, sb_h, sb_n, so_b, so_h, so_n,
    sla_b, sla_h, sla_n, slb_b, slb_h, slb_n,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = r < rows
    h = r % H
    n = (r // H) % N
    b = r // (H * N)
    d = tl.arange(0, BLOCK_D)
    m = rm[:, None] & (d < D)[None, :]
    la = tl.load(LA + b * sla_b + h * sla_h + n * sla_n, mask=rm, other=0.0)
    lb = tl.load(LB + b * slb_b + h * slb_h + n * slb_n, mask=rm, other=0.0)
    wa = 1.0 / (1.0 + tl.exp(lb - la))  # exp(la - logaddexp(la, lb))
    wb = 1.0 / (1.0 + tl.exp(la - lb))
    oa = tl.load(OA + (b * sa_b + h * sa_h + n * sa_n)[:, None] + d[None, :], mask=m, other=0.0).to(tl.float32)
    ob = tl.load(OB + (b * sb_b + h * sb_h + n * sb_n)[:, None] + d[None, :], mask=m, other=0.0).to(tl.float32)
    o = oa * wa[:, None] + ob * wb[:, None]
    tl.store(OUT + (b * so_b + h * so_h + n * so_n)[:, None] + d[None, :], o.to(OUT.dtype.element_ty), mask=m)


def merge_rows(o_a, lse_a, o_b, lse_b, out) -> torch.Tensor:
    """Merge two partial attentions o [B, H, N, D] with lse [B, H, N] (any strides, unit D stride) into out."""
    B, H, N, D = o_a.shape
    block_r = 16
    rows = B * H * N
    _merge_kernel[(triton.cdiv(rows, block_r),)](
        o_a, lse_a, o_b, lse_b, out,
        rows, N, H, D,
        *o_a.stride()[:3], *o_b.stride()[:3], *out.stride()[:3],
        *lse_a.stride(), *lse_b.stride(),
        BLOCK_R=block_r, BLOCK_D=_pow2(D), num_warps=4,
    )  # fmt: skip
    return out
