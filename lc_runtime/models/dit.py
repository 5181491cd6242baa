"""LongCat-Video DiT (`LongCatVideoTransformer3DModel`), native and exportable (SPEC §1).

Attribute names mirror the checkpoint keys (SPEC §1.2), so loading is a strict identity map.

Precision policy (SPEC §0.10, §1.3): with bf16 weights the timestep is rounded to bf16, and the timestep MLP,
every adaLN modulation linear, the modulated LayerNorms, the gated residual adds, q/k RMSNorm statistics, RoPE
and the final layer run in fp32 (bf16 weights up-cast); everything else runs in bf16. With fp32 weights every
cast is a no-op and the model is plain fp32.

Three graphs (all plain functions of tensors, no data-dependent shapes, so ``torch.export`` works):
  * ``forward(latents, timestep, text_embeds, text_mask, num_cond_latents=nc)``: full / conditioned forward;
  * ``prefill(cond_latents)``: the conditioning frames alone at timestep 0 without text (SPEC §2.7), returning
    every block's K (RMS-normed and already roped at t = 0..nc-1) and V as one :class:`KVCache`;
  * ``forward(noise_latents, timestep, text_embeds, text_mask, kv_cache=kv)``: cached decode; new tokens are
    roped at t = nc.. and attend to [cache ; new] without copying the cache (``prefix_attention``).

Kernels: the memory-bound primitives (modulate, gated add, LayerNorm, q/k RMSNorm + RoPE, SwiGLU) and attention
come from one :class:`DiTOps` table shared by every module, chosen once by :meth:`LongCatDiT.use_kernels`:
``"torch"`` (default) is the reference math written below, ``"triton"`` the fused kernels of
``lc_runtime.ops.fused`` (same math within bf16 rounding) plus w1/w3 as one GEMM. The forward has no device
branches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BSAParams, DiTConfig
from ..ops.attention import attention, attention_with, get_attention_backend, prefix_attention, prefix_attention_with
from ..ops.rope import apply_rope, rope_cos_sin
from ..profiling import nvtx_range
from ..weights import init_random_  # noqa: F401  (re-exported: random weights of any flavour)

EPS = 1e-6


class KVCache(NamedTuple):
    """Self-attention K/V of the conditioning tokens, per block: k, v [depth, 1, H, Nc, D]; k is roped."""

    k: torch.Tensor
    v: torch.Tensor


class TextContext(NamedTuple):
    """Cross-attention K/V of the caption, per block: k, v [depth, B, H, L, D]; mask [B, L] bool or None."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


class Linear(nn.Linear):
    """``nn.Linear`` that can compute in fp32 (the reference's fp32-autocast islands) and carry unmerged LoRA
    adapters (``lc_runtime.lora``), which add ``Σ up(down(x)) · scale`` to the output."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, fp32: bool = False):
        super().__init__(in_features, out_features, bias=bias, device="meta")
        self.fp32 = fp32
        self.adapters: list = []

    def reset_parameters(self) -> None:  # built on meta and loaded; random init lives in init_random_
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            bias = None if self.bias is None else self.bias.float()
            y = F.linear(x.float(), self.weight.float(), bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        for adapter in self.adapters:
            y = y + adapter(x, fp32=self.fp32, weight_dtype=self.weight.dtype)
        return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm_FP32: statistics in fp32, cast back, then the gain multiply in x's dtype (SPEC §1.3)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * weight


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """fp32 LayerNorm (no affine) + per-frame ``x·(1+scale)+shift``; x [B, N, C], shift/scale [B, T, 1, C]."""
    B, N, C = x.shape
    xf = F.layer_norm(x.float().view(B, frames, N // frames, C), (C,), eps=EPS)
    return (xf * (1 + scale) + shift).to(x.dtype).view(B, N, C)


def gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, frames: int) -> torch.Tensor:
    """``x + gate·y`` in fp32, rounded to x's dtype; gate [B, T, 1, C] is per frame."""
    B, N, C = x.shape
    out = x.view(B, frames, N // frames, C).float() + gate * y.view(B, frames, N // frames, C).float()
    return out.to(x.dtype).view(B, N, C)


def layer_norm_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm_FP32 with affine weight/bias: fp32 math, rounded to x's dtype (SPEC §1.3)."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), EPS).to(x.dtype)


def qk_norm_rope(q, k, q_weight, k_weight, cos, sin):
    """RMSNorm then 3-D RoPE of q and k [B, H, N, D] (SPEC §1.6, §1.8)."""
    return apply_rope(rms_norm(q, q_weight), cos, sin), apply_rope(rms_norm(k, k_weight), cos, sin)


@dataclass(frozen=True)
class DiTOps:
    """The DiT's memory-bound primitives and attention, swapped as one table by :meth:`LongCatDiT.use_kernels`."""

    name: str = "torch"
    modulate: Callable = modulate  # (x, shift, scale, frames) -> x.dtype
    gated_add: Callable = gated_add  # (x, gate, y, frames) -> x.dtype
    layer_norm: Callable = layer_norm_fp32  # (x, weight, bias) -> x.dtype
    qk_norm_rope: Callable = qk_norm_rope  # (q, k, q_weight, k_weight, cos, sin) -> (q, k)
    head_rms_norm: Callable = rms_norm  # (x, weight)
    attention: Callable = attention  # (q, k, v, mask) [B, H, S, D]
    prefix_attention: Callable = prefix_attention  # (q, k, v, k_prefix, v_prefix)
    swiglu: Callable | None = None  # on the [w1; w3] GEMM output; None: the reference's two GEMMs
    linear_swiglu: Callable | None = None  # (x, w13) -> the [w1; w3] GEMM + swiglu as one op
    linear_add: Callable | None = None  # (a, w, bias, x) -> x + linear(a, w, bias) as one op


TORCH_OPS = DiTOps()


def kernel_table(kind: str, attention_backend: str | None = None) -> DiTOps:
    """The :class:`DiTOps` of ``kind`` ("torch" | "triton"); ``attention_backend`` binds a backend of
    ``lc_runtime.ops.attention`` (None: "torch" follows the process-wide choice, "triton" takes it now)."""
    if kind not in ("torch", "triton"):
        raise ValueError(f"unknown kernels {kind!r}; choose 'torch' or 'triton'")
    if kind == "torch":
        if attention_backend is None:
            return TORCH_OPS
        return replace(
            TORCH_OPS,
            attention=functools.partial(attention_with, attention_backend),
            prefix_attention=functools.partial(prefix_attention_with, attention_backend),
        )
    from ..ops import fused

    backend = attention_backend or get_attention_backend()
    return DiTOps(
        name="triton",
        modulate=fused.modulate,
        gated_add=fused.gated_add,
        layer_norm=fused.layer_norm,
        qk_norm_rope=fused.qk_norm_rope,
        head_rms_norm=fused.head_rms_norm,
        attention=functools.partial(attention_with, backend),
        prefix_attention=functools.partial(prefix_attention_with, backend, merge=fused.merge_attention),
        swiglu=fused.swiglu,
        linear_swiglu=fused.linear_swiglu,
        linear_add=fused.linear_add,
    )


class LayerNormFP32(nn.LayerNorm):
    ops = TORCH_OPS

    def __init__(self, dim: int):
        super().__init__(dim, eps=EPS, device="meta")

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, device="meta"), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, p, stride=p, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, C, T, h, w] -> [B, T*h*w, C], (t, h, w) raster


class TimestepEmbedder(nn.Module):
    """Sinusoidal [cos | sin] embedding -> Linear -> SiLU -> Linear, all in fp32."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.freq_dim = cfg.frequency_embedding_size
        d = cfg.adaln_tembed_dim
        self.mlp = nn.Sequential(Linear(self.freq_dim, d, fp32=True), nn.SiLU(), Linear(d, d, fp32=True))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class CaptionEmbedder(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c = cfg.hidden_size
        self.y_proj = nn.Sequential(Linear(cfg.caption_channels, c), nn.GELU(approximate="tanh"), Linear(c, c))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class SelfAttention(nn.Module):
    ops = TORCH_OPS
    bsa = None  # BSAParams while block-sparse attention is on (LongCatDiT.enable_bsa)

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c, self.heads = cfg.hidden_size, cfg.num_heads
        self.qkv = Linear(c, 3 * c)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim), RMSNorm(cfg.head_dim)
        self.proj = Linear(c, c)

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, N, C] -> q, k (RMS-normed and roped) and raw v, each [B, H, N, D] (qkv layout [q|k|v],
        head-major; v is a view of the GEMM output, the fused kernel writes q and k [B, N, H, D] in memory)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.ops.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, cos, sin)
        return q, k, v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        B, H, N, D = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, H * D))

    def forward(self, x, cos, sin, num_cond_tokens: int, grid: tuple[int, int, int] | None = None):
        q, k, v = self.qkv_heads(x, cos, sin)
        if self.bsa is not None and grid is not None and grid[0] > 1:
            return self._forward_bsa(q, k, v, num_cond_tokens, grid), k, v
        attn = self.ops.attention
        if num_cond_tokens == 0:
            return self.out(attn(q, k, v)), k, v
        nc = num_cond_tokens  # conditioning queries see only conditioning keys; noise queries see all keys
        o_cond = attn(q[:, :, :nc], k[:, :, :nc], v[:, :, :nc])
        o_noise = attn(q[:, :, nc:], k, v)
        o = torch.cat([o_cond.transpose(1, 2), o_noise.transpose(1, 2)], dim=1)  # [B, N, H, D]: proj's layout
        return self.proj(o.flatten(2)), k, v

    def _forward_bsa(self, q, k, v, num_cond_tokens: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """Block-sparse self-attention (SPEC §5), as the original: for every self-attention call when the
        latent grid has more than one frame, including both halves of a conditioned call."""
        from ..ops.block_sparse_attention import block_sparse_attention

        p = self.bsa
        T, H, W = grid

        def bsa(q_, k_, v_, tq, tk):
            return block_sparse_attention(
                q_, k_, v_, (tq, H, W), (tk, H, W), p.sparsity, p.cdf_threshold, p.chunk_3d_shape_q
            )

        if num_cond_tokens == 0:
            return self.out(bsa(q, k, v, T, T))
        nc, tc = num_cond_tokens, num_cond_tokens // (H * W)
        o_cond = bsa(q[:, :, :nc], k[:, :, :nc], v[:, :, :nc], tc, tc)
        o_noise = bsa(q[:, :, nc:], k, v, T - tc, T)
        return self.out(torch.cat([o_cond, o_noise], dim=2))

    def forward_cached(self, x, cos, sin, k_cache, v_cache):
        q, k, v = self.qkv_heads(x, cos, sin)
        return self.out(self.ops.prefix_attention(q, k, v, k_cache, v_cache))


class CrossAttention(nn.Module):
    ops = TORCH_OPS

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c, self.heads = cfg.hidden_size, cfg.num_heads
        self.q_linear, self.kv_linear, self.proj = Linear(c, c), Linear(c, 2 * c), Linear(c, c)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim), RMSNorm(cfg.head_dim)

    def text_kv(self, y: torch.Tensor):
        """y [B, L, C] -> normed k and v, each [B, H, L, D] (kv layout [k|v])."""
        B, L, C = y.shape
        k, v = self.kv_linear(y).view(B, L, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.k_norm(k), v

    def attend(self, x, k, v, mask):
        """The attention output before the output projection, [B, N, C]."""
        B, N, C = x.shape
        q = self.q_linear(x).view(B, N, self.heads, C // self.heads).transpose(1, 2)
        o = self.ops.attention(self.ops.head_rms_norm(q, self.q_norm.weight), k, v, mask)
        return o.transpose(1, 2).reshape(B, N, C)

    def forward(self, x, k, v, mask):
        return self.proj(self.attend(x, k, v, mask))


class FeedForwardSwiGLU(nn.Module):
    ops = TORCH_OPS

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c, h = cfg.hidden_size, cfg.ffn_hidden_size
        self.w1, self.w2, self.w3 = Linear(c, h, bias=False), Linear(h, c, bias=False), Linear(c, h, bias=False)
        # [w1; w3] [2h, c] once fused: a non-persistent buffer, so it is not in the state dict but an exported graph
        # names it by its path (blocks.N.ffn.w13), which lets an engine bind it (engines/aoti.py derived_constants)
        self.register_buffer("w13", None, persistent=False)

    def fuse_w13(self) -> None:
        """Store w1 and w3 as one [2h, c] tensor (one GEMM) and make ``w1.weight``/``w3.weight`` views of it: the
        state dict keeps the checkpoint's names and in-place LoRA merges/restores land in the fused weight.
        Moving the module (``.to``) afterwards breaks the aliasing; call again (``use_kernels``) after a move."""
        w1, w3 = self.w1.weight, self.w3.weight
        h = w1.shape[0]
        if self.w13 is not None and w1.data_ptr() == self.w13.data_ptr() and w3.data_ptr() == self.w13[h:].data_ptr():
            return
        w13 = torch.cat([w1.detach(), w3.detach()])
        self.w1.weight = nn.Parameter(w13[:h], requires_grad=False)
        self.w3.weight = nn.Parameter(w13[h:], requires_grad=False)
        self.w13 = w13

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(w1 x) · w3 x``, the input of w2."""
        if self.w13 is not None and not (self.w1.adapters or self.w3.adapters):
            if self.ops.linear_swiglu is not None:
                return self.ops.linear_swiglu(x, self.w13)
            if self.ops.swiglu is not None:
                return self.ops.swiglu(F.linear(x, self.w13))
        return F.silu(self.w1(x)) * self.w3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.hidden(x))


class Block(nn.Module):
    """`LongCatSingleStreamBlock` (SPEC §1.5)."""

    ops = TORCH_OPS

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c = cfg.hidden_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(cfg.adaln_tembed_dim, 6 * c, fp32=True))
        self.attn = SelfAttention(cfg)
        self.pre_crs_attn_norm = LayerNormFP32(c)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = FeedForwardSwiGLU(cfg)

    def forward(
        self, x, t, rope, text_kv, frames: int, num_cond_tokens: int = 0, kv_cache=None, grid=None, return_kv=False
    ):
        """x [B, N, C]; t [B, T, Ct] fp32; rope (cos, sin); text_kv (k, v, mask) or None to skip cross-attn;
        kv_cache (k, v) of this block or None; grid (T, H, W) tokens (for block-sparse attention).
        Returns (x, k, v) where k (roped), v are this call's keys when ``return_kv`` (else None, None)."""
        B, N, C = x.shape
        mods = self.adaLN_modulation(t).view(B, frames, 1, 6 * C).chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        # No local holds an activation longer than it is needed: the peak of a forward is this block's FFN, and
        # whatever else is alive then (the attention input and output; k and v, where v is a view of the whole
        # qkv GEMM output) adds to it, ~4 GB at 480p batch 2.
        xm = self.ops.modulate(x, shift_msa, scale_msa, frames)
        if kv_cache is None:
            a, k, v = self.attn(xm, *rope, num_cond_tokens, grid)
        else:
            a, k, v = self.attn.forward_cached(xm, *rope, *kv_cache), None, None
        del xm
        if not return_kv:
            k = v = None
        x = self.ops.gated_add(x, gate_msa, a, frames)
        del a
        if text_kv is not None:
            x = self._cross(x, text_kv, num_cond_tokens)
        x = self.ops.gated_add(x, gate_mlp, self.ffn(self.ops.modulate(x, shift_mlp, scale_mlp, frames)), frames)
        return x, k, v

    def _cross(self, x, text_kv, num_cond_tokens: int):
        """x + cross-attention; conditioning tokens get a zero output (SPEC §1.7)."""
        xn, ca = self.pre_crs_attn_norm(x), self.cross_attn
        if num_cond_tokens == 0:
            o = ca.attend(xn, *text_kv)
            if self.ops.linear_add is not None and not ca.proj.adapters:
                return self.ops.linear_add(o, ca.proj.weight, ca.proj.bias, x)
            return x + ca.proj(o)
        out = ca(xn[:, num_cond_tokens:], *text_kv)
        return x + torch.cat([out.new_zeros(out.shape[0], num_cond_tokens, out.shape[2]), out], dim=1)


class FinalLayer(nn.Module):
    ops = TORCH_OPS

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        c = cfg.hidden_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(cfg.adaln_tembed_dim, 2 * c, fp32=True))
        self.linear = Linear(c, cfg.patch_channels, fp32=True)

    def forward(self, x, t, frames: int):
        B, N, C = x.shape
        shift, scale = self.adaLN_modulation(t).view(B, frames, 1, 2 * C).chunk(2, dim=-1)
        return self.linear(self.ops.modulate(x, shift, scale, frames))  # fp32 [B, N, out*prod(patch)]


class LongCatDiT(nn.Module):
    """The LongCat-Video transformer. Build with :func:`load_dit` (checkpoint) or ``LongCatDiT(cfg)`` +
    :func:`init_random_` (random weights of any flavour); parameters start on the meta device."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.x_embedder = PatchEmbed(config)
        self.t_embedder = TimestepEmbedder(config)
        self.y_embedder = CaptionEmbedder(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self.lora = None  # a lc_runtime.lora.LoRAState once a LoRA is loaded

    @property
    def dtype(self) -> torch.dtype:
        return self.final_layer.linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.final_layer.linear.weight.device

    @property
    def kernels(self) -> str:
        """Which :class:`DiTOps` table the modules use ("torch" or "triton")."""
        return self.ops.name

    def enable_bsa(self, params: BSAParams | None = None) -> None:
        """Block-sparse self-attention (default: the config's ``bsa_params``), as the original's ``enable_bsa``:
        every self-attention call on a grid of more than one latent frame. Not used by the cached decode."""
        p = params or self.config.bsa_params
        if tuple(p.chunk_3d_shape_q) != tuple(p.chunk_3d_shape_k):
            raise ValueError(f"BSA needs equal q/k chunks, got {p.chunk_3d_shape_q} and {p.chunk_3d_shape_k}")
        for blk in self.blocks:
            blk.attn.bsa = p

    def disable_bsa(self) -> None:
        for blk in self.blocks:
            blk.attn.bsa = None

    @property
    def bsa_enabled(self) -> bool:
        return self.blocks[0].attn.bsa is not None

    def use_kernels(self, kind: str = "triton", *, attention: str | None = None) -> LongCatDiT:
        """Choose, once, how the memory-bound ops and attention run in every module (see :class:`DiTOps`).

        ``"torch"``: the reference math (any device). ``"triton"``: the fused ops of ``lc_runtime.ops.fused``
        (Triton kernels on CUDA, their references elsewhere), w1/w3 fused into one GEMM weight, attention bound
        to ``attention`` or the process-wide backend. Call after loading/moving the weights; LoRA merges
        (in place) keep working. Returns self.
        """
        if kind == "triton" and self.device.type == "cuda":
            from ..ops.fused import triton_available

            if not triton_available():
                raise RuntimeError("use_kernels('triton') on CUDA needs the triton package (pip install triton)")
        ops = kernel_table(kind, attention)
        if ops.swiglu is not None or ops.linear_swiglu is not None:
            for blk in self.blocks:
                blk.ffn.fuse_w13()
        return self.set_ops(ops)

    @property
    def ops(self) -> DiTOps:
        """The :class:`DiTOps` table every module runs (``use_kernels`` / ``set_ops`` set one for all)."""
        return self.final_layer.ops

    def set_ops(self, ops: DiTOps) -> LongCatDiT:
        """Make every module that runs a :class:`DiTOps` table use ``ops`` (no weight changes: a table with
        ``swiglu`` needs the fused [w1; w3] weight, which :meth:`use_kernels` makes). Returns self."""
        for m in self.modules():
            if isinstance(getattr(type(m), "ops", None), DiTOps):
                m.ops = ops
        return self

    # ------------------------------------------------------------------------------------------- pieces
    def grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        _, C, T, H, W = latents.shape
        _, ph, pw = self.config.patch_size
        if self.config.in_channels != C or H % ph or W % pw:
            raise ValueError(
                f"DiT latents must be [B, {self.config.in_channels}, T, H, W] with H % {ph} == 0 and W % {pw} == 0, "
                f"got {list(latents.shape)}"
            )
        return T, H // ph, W // pw

    def embed_timestep(self, timestep: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """timestep [B] or [B, T] -> per-frame embedding [B, T, Ct] fp32 (timestep rounded to the DiT dtype)."""
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)
        if timestep.dim() == 1:
            timestep = timestep[:, None].expand(batch, frames)
        if tuple(timestep.shape) != (batch, frames):
            raise ValueError(
                f"timestep must be [B]=[{batch}] or [B, T]=[{batch}, {frames}], got {list(timestep.shape)}"
            )
        t = timestep.to(self.dtype).float().reshape(-1)
        return self.t_embedder(t).view(batch, frames, -1)

    def prepare_text(self, text_embeds: torch.Tensor, text_mask: torch.Tensor | None) -> TextContext:
        """Caption MLP and every block's cross-attention K/V, computed once per generation.

        text_embeds [B, 1, L, Cc] or [B, L, Cc]; text_mask [B, L] (nonzero = valid) or None. With
        ``text_tokens_zero_pad`` the pad features are zeroed after the MLP and all L slots are attended
        (SPEC §0.5); otherwise pad slots are masked out of the attention.
        """
        y = text_embeds.flatten(1, -2) if text_embeds.dim() == 4 else text_embeds
        if y.dim() != 3 or y.shape[-1] != self.config.caption_channels:
            raise ValueError(
                f"text_embeds must be [B, 1, L, {self.config.caption_channels}], got {list(text_embeds.shape)}"
            )
        y = self.y_embedder(y.to(self.dtype))
        mask = None
        if text_mask is not None:
            if tuple(text_mask.shape) != tuple(y.shape[:2]):
                raise ValueError(f"text_mask must be [B, L] = {list(y.shape[:2])}, got {list(text_mask.shape)}")
            if self.config.text_tokens_zero_pad:
                y = y * text_mask[:, :, None].to(y.dtype)
            else:
                mask = text_mask != 0
        ks, vs = zip(*(blk.cross_attn.text_kv(y) for blk in self.blocks))
        return TextContext(torch.stack(ks), torch.stack(vs), mask)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, N, pt*ph*pw*C] (C fastest) -> [B, C, T*pt, H*ph, W*pw]."""
        B = x.shape[0]
        T, H, W = grid
        pt, ph, pw = self.config.patch_size
        C = self.config.out_channels
        x = x.view(B, T, H, W, pt, ph, pw, C).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, C, T * pt, H * ph, W * pw)

    # ------------------------------------------------------------------------------------------- graphs
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        num_cond_latents: int = 0,
        kv_cache: KVCache | None = None,
        text_context: TextContext | None = None,
    ) -> torch.Tensor:
        """Predicted velocity v ≈ x0 − ε, fp32 [B, C_out, T, H, W] (SPEC §1.4).

        latents [B, C_in, T, H, W]; timestep [B] or [B, T]; text (embeds + mask) or a prepared
        ``text_context``. ``num_cond_latents``: the first nc latent frames are conditioning (their queries
        see only themselves; their cross-attention output is zero). ``kv_cache``: the latents are noise
        frames that follow the cached conditioning frames (from :meth:`prefill`).
        """
        B = latents.shape[0]
        grid = self.grid(latents)
        T, H, W = grid
        if text_context is None:
            if text_embeds is None:
                raise ValueError("forward needs text_embeds (+ text_mask) or a prepared text_context")
            text_context = self.prepare_text(text_embeds, text_mask)
        t = self.embed_timestep(timestep, B, T)
        x = self.x_embedder(latents.to(self.dtype))
        if kv_cache is not None:
            nc = kv_cache.k.shape[3] // (H * W)
            rope = rope_cos_sin(grid, self.config.head_dim, t_offset=nc, device=x.device)
        else:
            rope = rope_cos_sin(grid, self.config.head_dim, device=x.device)
        cond_tokens = 0 if kv_cache is not None else num_cond_latents * H * W
        for i, blk in enumerate(self.blocks):
            cache_i = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i])
            text_i = (text_context.k[i], text_context.v[i], text_context.mask)
            with nvtx_range(f"dit block {i}"):
                x = blk(x, t, rope, text_i, T, cond_tokens, cache_i, grid)[0]
        return self.unpatchify(self.final_layer(x, t, T), grid).float()

    def prefill(self, cond_latents: torch.Tensor, *, return_output: bool = False):
        """KV cache of the conditioning latents [1, C, nc, H, W]: one pass at timestep 0, no text (SPEC §2.7).

        Returns a :class:`KVCache` (k roped at t = 0..nc-1), or ``(KVCache, output)`` when ``return_output``.
        """
        if cond_latents.shape[0] != 1:
            raise ValueError(f"prefill takes the conditioning latents at batch 1, got {list(cond_latents.shape)}")
        grid = self.grid(cond_latents)
        T = grid[0]
        t = self.embed_timestep(torch.zeros(1, T, device=cond_latents.device), 1, T)
        x = self.x_embedder(cond_latents.to(self.dtype))
        rope = rope_cos_sin(grid, self.config.head_dim, device=x.device)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            with nvtx_range(f"dit prefill block {i}"):
                x, k, v = blk(x, t, rope, None, T, return_kv=True)
            ks.append(k)
            vs.append(v)
        cache = KVCache(torch.stack(ks), torch.stack(vs))
        if return_output:
            return cache, self.unpatchify(self.final_layer(x, t, T), grid).float()
        return cache

    # ------------------------------------------------------------------------------------------- LoRA
    def load_lora(self, path: str | Path, name: str) -> None:
        """Read an original-format LoRA file (SPEC §7) and keep it under ``name`` (not yet applied)."""
        from ..lora import LoRAState

        if self.lora is None:
            self.lora = LoRAState(self)
        self.lora.load(path, name)

    def set_loras(self, loras: dict[str, float], *, merged: bool = True) -> None:
        """Apply ``{name: multiplier}`` (summed); ``{}`` restores the base model. ``merged`` folds them into
        the weights (fast; base weights restored exactly on change), else they run beside them (original)."""
        from ..lora import LoRAState

        if self.lora is None:
            if not loras:
                return
            self.lora = LoRAState(self)
        self.lora.apply(loras, merged=merged)

    @property
    def active_loras(self) -> dict[str, float]:
        return {} if self.lora is None else dict(self.lora.active)


def load_dit(path: str | Path, device="cpu", dtype: torch.dtype = torch.bfloat16) -> LongCatDiT:
    """Load the DiT from a checkpoint's ``dit/`` folder (config.json + sharded safetensors), strictly,
    each tensor read straight onto ``device`` in ``dtype``."""
    from ..weights import load_into, shard_files

    folder = Path(path)
    cfg = DiTConfig.from_json(folder / "config.json")
    model = LongCatDiT(cfg)
    load_into(model, shard_files(folder), device=device, dtype=dtype)
    return model.eval()
