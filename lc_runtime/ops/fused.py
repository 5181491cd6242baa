"""Fused DiT ops: a Triton kernel on CUDA and a pure-PyTorch reference beside each (STYLE #7, #8).

Every op is a ``torch.library.custom_op`` in the ``lc_runtime`` namespace with a ``register_fake``, so it works
eagerly, inside CUDA graphs, under ``torch.compile`` and in ``torch.export``. Its default implementation (CPU and
any other device) is the reference, copied into the layout the fake promises; on CUDA it launches the kernel in
``triton_kernels.py`` (imported lazily: triton is only needed on GPU machines).

========================= ================================================ =====================================
op                        semantics (exactly the DiT's, SPEC §1.3/§1.5)    output
========================= ================================================ =====================================
``fused_modulate``        fp32 LayerNorm (no affine) + per-frame             [B, N, C] x.dtype, contiguous
                          ``x·(1+scale)+shift``, one rounding
``fused_layer_norm``      fp32 affine LayerNorm, one rounding                [B, N, C] x.dtype, contiguous
``fused_gated_add``       ``x + gate·y`` in fp32, per-frame gate             [B, N, C] x.dtype, contiguous
``fused_qk_norm_rope``    RMSNorm_FP32 of q and k (+gain in bf16) + 3-D      2 x [B, H, N, D], memory [B, N, H, D]
                          RoPE in fp32 from cos/sin [N, D]
``fused_head_rms_norm``   RMSNorm_FP32 per head (cross-attention q)          [B, H, N, D], memory [B, N, H, D]
``fused_swiglu``          ``silu(h[..., :F]) · h[..., F:]`` ([w1;w3] GEMM)   [..., F] h.dtype, contiguous
``fused_linear_swiglu``   the [w1; w3] GEMM + swiglu (Hopper: one Triton     [..., F] a.dtype, contiguous
                          GEMM, SwiGLU in its epilogue, triton_gemm.py)
``fused_linear_add``      ``x + linear(a, w, bias)`` (Hopper: one Triton     [B, N, C] x.dtype, contiguous
                          GEMM, the add in its epilogue)
``fused_merge_attention`` LSE merge of two partial attentions                [B, H, N, D], memory [B, N, H, D]
========================= ================================================ =====================================

The ``*_ref`` functions equal the DiT's own functions bit for bit on CPU (tests/ops/test_fused.py); the kernels
agree with them within the precision bound of STYLE #9.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .attention import merge_attention_ref
from .registry import defer_dynamo_import
from .rope import apply_rope

EPS = 1e-6


def triton_available() -> bool:
    """Whether the CUDA kernels can run: triton importable and a CUDA device present."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


@functools.cache
def _kernels():
    from . import triton_kernels

    return triton_kernels


# ---------------------------------------------------------------------------------------------- references
def modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, C]; shift, scale [B, T, 1, C] fp32 (frame f = tokens f·N/T ..): fp32 LN + modulation -> x.dtype."""
    B, N, C = x.shape
    T = shift.shape[1]
    xf = F.layer_norm(x.float().view(B, T, N // T, C), (C,), eps=EPS)
    return (xf * (1 + scale) + shift).to(x.dtype).view(B, N, C)


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fp32 LayerNorm with affine weight/bias over the last dim, rounded to x.dtype (LayerNorm_FP32)."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), EPS).to(x.dtype)


def gated_add_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y [B, N, C]; gate [B, T, 1, C] fp32: ``x + gate·y`` in fp32, rounded to x.dtype."""
    B, N, C = x.shape
    T = gate.shape[1]
    out = x.view(B, T, N // T, C).float() + gate * y.view(B, T, N // T, C).float()
    return out.to(x.dtype).view(B, N, C)


def head_rms_norm_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm_FP32 over the last dim: fp32 statistics, rounded to x.dtype, then the gain multiply in x.dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * weight


def qk_norm_rope_ref(q, k, q_weight, k_weight, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, N, D] -> RMSNorm then RoPE (cos, sin [N, D] fp32) of each, in q's dtype."""
    return (
        apply_rope(head_rms_norm_ref(q, q_weight), cos, sin),
        apply_rope(head_rms_norm_ref(k, k_weight), cos, sin),
    )


def swiglu_ref(h: torch.Tensor) -> torch.Tensor:
    """h [..., 2F] = [w1 x | w3 x] -> ``silu(w1 x) · w3 x`` [..., F], in h's dtype."""
    a, g = h.chunk(2, dim=-1)
    # contiguous: PyTorch's CPU silu takes a vectorised exp only on dense inputs, as the DiT's w1(x) output is
    return F.silu(a.contiguous()) * g


def linear_swiglu_ref(a: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    """``silu(a @ w1.T) · (a @ w3.T)`` from the fused weight w13 = [w1; w3] [2F, K] (one GEMM, then SwiGLU)."""
    return swiglu_ref(F.linear(a, w13))


def linear_add_ref(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``x + (a @ w.T + bias)``: a projection (rounded to x's dtype) added to the residual stream x."""
    return x + F.linear(a, w, bias)


# ---------------------------------------------------------------------------------------------- layouts
def _rows_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _nhd_like(x: torch.Tensor) -> torch.Tensor:
    """An empty [B, H, N, D] tensor stored [B, N, H, D] (what FlashAttention reads without a copy)."""
    B, H, N, D = x.shape
    return torch.empty(B, N, H, D, dtype=x.dtype, device=x.device).transpose(1, 2)


def _swiglu_out(h: torch.Tensor) -> torch.Tensor:
    return torch.empty(*h.shape[:-1], h.shape[-1] // 2, dtype=h.dtype, device=h.device)


# ---------------------------------------------------------------------------------------------- ops
@torch.library.custom_op("lc_runtime::fused_modulate", mutates_args=())
def _modulate_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _rows_like(x).copy_(modulate_ref(x, shift, scale))


@_modulate_op.register_kernel("cuda")
def _(x, shift, scale):
    return _kernels().norm_rows(x, _rows_like(x), shift=shift, scale=scale, eps=EPS)


@_modulate_op.register_fake
def _(x, shift, scale):
    return _rows_like(x)


@torch.library.custom_op("lc_runtime::fused_layer_norm", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _rows_like(x).copy_(layer_norm_ref(x, weight, bias))


@_layer_norm_op.register_kernel("cuda")
def _(x, weight, bias):
    return _kernels().norm_rows(x, _rows_like(x), weight=weight, bias=bias, eps=EPS)


@_layer_norm_op.register_fake
def _(x, weight, bias):
    return _rows_like(x)


@torch.library.custom_op("lc_runtime::fused_gated_add", mutates_args=())
def _gated_add_op(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _rows_like(x).copy_(gated_add_ref(x, gate, y))


@_gated_add_op.register_kernel("cuda")
def _(x, gate, y):
    return _kernels().gated_add_rows(x, gate, y, _rows_like(x))


@_gated_add_op.register_fake
def _(x, gate, y):
    return _rows_like(x)


@torch.library.custom_op("lc_runtime::fused_qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    rq, rk = qk_norm_rope_ref(q, k, q_weight, k_weight, cos, sin)
    return _nhd_like(q).copy_(rq), _nhd_like(k).copy_(rk)


@_qk_norm_rope_op.register_kernel("cuda")
def _(q, k, q_weight, k_weight, cos, sin):
    kern = _kernels()
    return (
        kern.head_norm_rope(q, q_weight, _nhd_like(q), cos, sin, eps=EPS),
        kern.head_norm_rope(k, k_weight, _nhd_like(k), cos, sin, eps=EPS),
    )


@_qk_norm_rope_op.register_fake
def _(q, k, q_weight, k_weight, cos, sin):
    return _nhd_like(q), _nhd_like(k)


@torch.library.custom_op("lc_runtime::fused_head_rms_norm", mutates_args=())
def _head_rms_norm_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _nhd_like(x).copy_(head_rms_norm_ref(x, weight))


@_head_rms_norm_op.register_kernel("cuda")
def _(x, weight):
    return _kernels().head_norm_rope(x, weight, _nhd_like(x), eps=EPS)


@_head_rms_norm_op.register_fake
def _(x, weight):
    return _nhd_like(x)


@torch.library.custom_op("lc_runtime::fused_swiglu", mutates_args=())
def _swiglu_op(h: torch.Tensor) -> torch.Tensor:
    return _swiglu_out(h).copy_(swiglu_ref(h))


@_swiglu_op.register_kernel("cuda")
def _(h):
    out = _swiglu_out(h)
    _kernels().swiglu_rows(h.reshape(-1, h.shape[-1]), out.view(-1, out.shape[-1]))
    return out


@_swiglu_op.register_fake
def _(h):
    return _swiglu_out(h)


def _gemm_kernels():
    from . import triton_gemm

    return triton_gemm


@torch.library.custom_op("lc_runtime::fused_linear_swiglu", mutates_args=())
def _linear_swiglu_op(a: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    return linear_swiglu_ref(a, w13)


@_linear_swiglu_op.register_kernel("cuda")
def _(a, w13):
    a2 = a.reshape(-1, a.shape[-1])
    out = torch.empty(*a.shape[:-1], w13.shape[0] // 2, dtype=a.dtype, device=a.device)
    G, o2 = _gemm_kernels(), out.view(-1, out.shape[-1])
    if not G.try_gemm(a2, w13, epilogue="swiglu", out=o2):
        _kernels().swiglu_rows(F.linear(a2, w13), o2)  # other GPUs: cuBLAS, then the SwiGLU row kernel
    return out


@_linear_swiglu_op.register_fake
def _(a, w13):
    return a.new_empty(*a.shape[:-1], w13.shape[0] // 2)


@torch.library.custom_op("lc_runtime::fused_linear_add", mutates_args=())
def _linear_add_op(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return linear_add_ref(a, w, bias, x).contiguous()


@_linear_add_op.register_kernel("cuda")
def _(a, w, bias, x):
    a2, x2 = a.reshape(-1, a.shape[-1]), x.reshape(-1, x.shape[-1])
    G, out = _gemm_kernels(), _rows_like(x)
    o2 = out.view(-1, out.shape[-1])
    if G.try_gemm(a2, w, bias, epilogue="gated", x=x2, out=o2):
        return out
    return out.copy_(linear_add_ref(a, w, bias, x))


@_linear_add_op.register_fake
def _(a, w, bias, x):
    return _rows_like(x)


@torch.library.custom_op("lc_runtime::fused_merge_attention", mutates_args=())
def _merge_op(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    return _nhd_like(o_a).copy_(merge_attention_ref(o_a, lse_a, o_b, lse_b))


@_merge_op.register_kernel("cuda")
def _(o_a, lse_a, o_b, lse_b):
    return _kernels().merge_rows(o_a, lse_a, o_b, lse_b, _nhd_like(o_a))


@_merge_op.register_fake
def _(o_a, lse_a, o_b, lse_b):
    return _nhd_like(o_a)


for _op in (
    _modulate_op, _layer_norm_op, _gated_add_op, _qk_norm_rope_op, _head_rms_norm_op, _swiglu_op, _linear_swiglu_op,
    _linear_add_op, _merge_op,
):  # fmt: skip
    defer_dynamo_import(_op)


# ---------------------------------------------------------------------------------------------- wrappers
def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """:func:`modulate_ref` through the fused op (``frames`` is implied by shift [B, T, 1, C])."""
    return _modulate_op(_unit_last(x), _unit_last(shift), _unit_last(scale))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _layer_norm_op(_unit_last(x), weight, bias)


def gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    return _gated_add_op(_unit_last(x), _unit_last(gate), _unit_last(y))


def qk_norm_rope(q, k, q_weight, k_weight, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    return _qk_norm_rope_op(_unit_last(q), _unit_last(k), q_weight, k_weight, cos, sin)


def head_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _head_rms_norm_op(_unit_last(x), weight)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    return _swiglu_op(h.contiguous())


def linear_swiglu(a: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    """:func:`linear_swiglu_ref` through the fused op (on Hopper: SwiGLU in the GEMM's epilogue)."""
    return _linear_swiglu_op(a.contiguous(), w13.contiguous())


def linear_add(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """:func:`linear_add_ref` through the fused op (on Hopper: the residual add in the GEMM's epilogue)."""
    return _linear_add_op(a.contiguous(), w.contiguous(), bias, x.contiguous())


def merge_attention(o_a, lse_a, o_b, lse_b) -> torch.Tensor:
    return _merge_op(_unit_last(o_a), lse_a, _unit_last(o_b), lse_b)


OPS = {
    "modulate": torch.ops.lc_runtime.fused_modulate.default,
    "layer_norm": torch.ops.lc_runtime.fused_layer_norm.default,
    "gated_add": torch.ops.lc_runtime.fused_gated_add.default,
    "qk_norm_rope": torch.ops.lc_runtime.fused_qk_norm_rope.default,
    "head_rms_norm": torch.ops.lc_runtime.fused_head_rms_norm.default,
    "swiglu": torch.ops.lc_runtime.fused_swiglu.default,
    "linear_swiglu": torch.ops.lc_runtime.fused_linear_swiglu.default,
    "linear_add": torch.ops.lc_runtime.fused_linear_add.default,
    "merge_attention": torch.ops.lc_runtime.fused_merge_attention.default,
}
