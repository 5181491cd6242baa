"""Triton GEMMs ``y = a @ w.T (+ bias)`` with a memory-bound follow-up of the DiT block fused into the epilogue
(Hopper, TMA descriptors; GPU only: ``lc_runtime.ops.fused`` wraps them as ops with PyTorch references).

Epilogues (each rounds where the unfused path rounds, so it equals "cuBLAS GEMM, then the row kernel" up to the
GEMM's own accumulation order):

* ``none``: ``bf16(acc + bias)``.
* ``swiglu``: ``w`` = [w1; w3] [2F, K] (the DiT's fused ``w13``); a program computes the w1 and the w3 columns of
  the same output tile (two accumulators, one A tile) and stores ``bf16(bf16(silu(bf16(acc_1))) * bf16(acc_3))``
  into an [M, F] output. Saves the [M, 2F] GEMM output's write and the swiglu kernel's read of it.
* ``gated``: ``bf16(x + gate[b, frame] * bf16(acc + bias))``; without a gate, the plain residual add
  ``bf16(x + bf16(acc + bias))`` (the cross-attention's output projection).

Tiles: BM x BN output tiles, BK-deep k steps; programs walk the tiles in GROUP_M-row groups (L2 reuse of w);
``persistent`` launches one program per SM striding over the tiles (Triton's interpreter cannot run that loop: it
takes loop bounds from program_id; the one-tile-per-program launch is what the CPU tests run).

Measured on the H200 at the 480p batch-2 shapes (M = 74,880, C = 4096, F = 11,008; bench/gemm_epilogue_probe.py,
results/gemm_epilogue_probe_nvidia-h200_*.md), against cuBLAS + the row kernel, same run:

* the plain Triton GEMM runs at cuBLAS speed (0.96-1.02x with persistent 128x256x64 tiles);
* ``swiglu`` (two accumulators, unflattened persistent loop): 19.76 ms against 20.3-22.1 ms unfused (-2344); the
  flattened loop was 23.9 ms. A row-interleaved [w1; w3] with one 128x256 accumulator was 19.3-19.7 ms against
  20.3-20.9 ms (-2322, -2325), but its strided w1/w3 views broke engines that bind w1 and w3 by reference;
* residual add on the cross-attention projection: 3.86-3.90 ms against 4.05-4.36 ms (0.89-0.94x);
* in the whole forward (bench_dit ``fast_unfused``, same process): 5.980 s with both against 6.053 s without;
* ``gated`` with the per-frame gate on w2 and on the attention projection: 1.04-1.19x, slower, not used. The
  [BM, BN] fp32 gate tile (gathered per row, or two frame rows selected per row) and x on top of the accumulator
  cost more than the separate pass saves;
* q/k RMSNorm + RoPE in the qkv epilogue (tried and removed): 13.4 ms against 11.7 ms, slower: the per-head
  reshapes and the pair rotation of a 128x256 accumulator are layout shuffles through shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

EPILOGUES = ("none", "swiglu", "gated")


@dataclass(frozen=True)
class GemmConfig:
    bm: int = 128
    bn: int = 256
    bk: int = 64
    stages: int = 3
    warps: int = 8
    group_m: int = 8
    persistent: bool = False
    warp_specialize: bool = False
    flatten: bool = True

    def key(self) -> str:
        p = "p" if self.persistent else "g"
        w = "ws" if self.warp_specialize else "sw"
        f = "" if self.flatten or not self.persistent else "-nf"
        return f"{self.bm}x{self.bn}x{self.bk}-s{self.stages}-w{self.warps}-g{self.group_m}-{p}-{w}{f}"


@triton.jit
def _tile(tile, num_m, num_n, GROUP_M: tl.constexpr):
    in_group = GROUP_M * num_n
    first_m = (tile // in_group) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % in_group) % rows, (tile % in_group) // rows


@triton.jit
def _tile_body(
    tile, a_desc, b_desc, c_desc, X, sx_m, BIAS, GATE,
    M, N, tokens, tokens_per_frame, s_gate_b, s_gate_t,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    K_TILES: tl.constexpr,
):  # fmt: skip
    dt = c_desc.dtype
    pid_m, pid_n = _tile(tile, tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    off_m = pid_m * BM
    off_n = pid_n * BN
    cols = off_n + tl.arange(0, BN)
    if EPILOGUE == 1:  # swiglu: the w1 rows [off_n, +BN) and the w3 rows [N + off_n, +BN) of w13 = [w1; w3]
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(K_TILES):
            a = a_desc.load([off_m, ki * BK])
            acc_g = tl.dot(a, b_desc.load([off_n, ki * BK]).T, acc_g)
            acc_u = tl.dot(a, b_desc.load([N + off_n, ki * BK]).T, acc_u)
        g = acc_g.to(dt).to(tl.float32)  # the GEMM's bf16 output, both halves
        s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)  # F.silu on a bf16 tensor rounds its result
        c_desc.store([off_m, off_n], (s * acc_u.to(dt).to(tl.float32)).to(dt))
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(K_TILES):
            a = a_desc.load([off_m, ki * BK])
            acc = tl.dot(a, b_desc.load([off_n, ki * BK]).T, acc)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        y = acc.to(dt).to(tl.float32)  # the GEMM's bf16 output
        if EPILOGUE == 0:
            c_desc.store([off_m, off_n], y.to(dt))
        elif EPILOGUE == 2:  # x + gate[b, frame] * y (x through registers: a TMA load would need another smem tile)
            rows = off_m + tl.arange(0, BM)
            m = (rows < M)[:, None] & (cols < N)[None, :]
            x = tl.load(X + rows.to(tl.int64)[:, None] * sx_m + cols[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_GATE:
                grow = (rows // tokens) * s_gate_b + ((rows % tokens) // tokens_per_frame) * s_gate_t
                gate = tl.load(GATE + grow[:, None] + cols[None, :], mask=m, other=0.0)
                y = gate * y
            c_desc.store([off_m, off_n], (x + y).to(dt))


@triton.jit
def _gemm_kernel(
    a_desc, b_desc, c_desc, X, sx_m, BIAS, GATE,
    M, N, tokens, tokens_per_frame, s_gate_b, s_gate_t,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    K_TILES: tl.constexpr, PERSISTENT: tl.constexpr, NUM_PROGRAMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    FLATTEN: tl.constexpr,
):  # fmt: skip
    # one tile per program, or (persistent) NUM_PROGRAMS programs striding over the tiles; the persistent loop runs
    # on GPUs only (Triton's interpreter cannot take loop bounds from program_id)
    if PERSISTENT:
        tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
        for tile in tl.range(tl.program_id(0), tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
            _tile_body(
                tile, a_desc, b_desc, c_desc, X, sx_m, BIAS, GATE,
                M, N, tokens, tokens_per_frame, s_gate_b, s_gate_t,
                EPILOGUE, HAS_BIAS, HAS_GATE, BM, BN, BK, GROUP_M, K_TILES,
            )  # fmt: skip
    else:
        _tile_body(
            tl.program_id(0), a_desc, b_desc, c_desc, X, sx_m, BIAS, GATE,
            M, N, tokens, tokens_per_frame, s_gate_b, s_gate_t,
            EPILOGUE, HAS_BIAS, HAS_GATE, BM, BN, BK, GROUP_M, K_TILES,
        )  # fmt: skip


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# Measured on the H200 (bench/gemm_epilogue_probe.py, results/gemm_epilogue_probe_*.md): persistent launches with
# the unflattened tile loop (the flattened one runs out of shared memory with the residual tile and was 20% slower
# with swiglu's two accumulators).
SWIGLU_CONFIG = GemmConfig(128, 128, 64, 3, 8, group_m=16, persistent=True, flatten=False)
ADD_CONFIG = GemmConfig(128, 256, 64, 3, 8, persistent=True, flatten=False)


_FAILED: set = set()  # (epilogue, K, N, dtype) whose kernel did not fit this GPU (Triton OutOfResources)


def try_gemm(a: torch.Tensor, w: torch.Tensor, *args, epilogue: str, out: torch.Tensor, **kwargs) -> bool:
    """:func:`gemm` into ``out`` when the operands are :func:`supported` and the kernel compiles for this GPU, else
    False (the caller then runs the unfused path). A kernel that does not fit raises at its first launch, before
    anything is enqueued, and is not tried again in this process."""
    operands = [t for t in (a, w, out, kwargs.get("x")) if t is not None]
    key = (epilogue, a.shape[-1], w.shape[0], a.dtype)
    if key in _FAILED or not supported(*operands):
        return False
    try:
        gemm(a, w, *args, epilogue=epilogue, out=out, **kwargs)
    except triton.runtime.errors.OutOfResources:
        _FAILED.add(key)
        return False
    return True


def supported(*tensors: torch.Tensor) -> bool:
    """Whether :func:`gemm` runs on these 2-D operands: a Hopper GPU (what was measured), bf16/fp16, unit column
    stride, TMA-legal (16-byte aligned base and row stride)."""
    t0 = tensors[0]
    if not t0.is_cuda or torch.cuda.get_device_capability(t0.device)[0] != 9:
        return False
    for t in tensors:
        if t.dtype not in (torch.bfloat16, torch.float16) or t.dim() != 2 or t.stride(1) != 1:
            return False
        if t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    return True


def gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    epilogue: str = "none",
    out: torch.Tensor | None = None,
    x: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    tokens: int | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """a [M, K] @ w[N, K].T with ``epilogue`` (module doc) into ``out`` (new when None; [M, N/2] for swiglu).
    With ``swiglu``, ``config.bn`` is the output tile's width (each of the two accumulators').
    ``gated``: x [M, N] the residual stream (unit column stride), gate [B, T, 1, N] fp32 per frame or None (plain
    residual add), tokens = rows per batch entry."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; choose one of {EPILOGUES}")
    M, K = a.shape
    N = w.shape[0] // 2 if epilogue == "swiglu" else w.shape[0]  # output columns
    cfg = config or (SWIGLU_CONFIG if epilogue == "swiglu" else ADD_CONFIG)
    if out is None:
        out = torch.empty(M, N, device=a.device, dtype=a.dtype)
    if epilogue == "gated" and (x is None or x.shape != (M, N) or x.stride(1) != 1):
        raise ValueError(f"the gated epilogue needs x [{M}, {N}] with unit column stride")
    a_desc = TensorDescriptor.from_tensor(a, [cfg.bm, cfg.bk])
    b_desc = TensorDescriptor.from_tensor(w, [cfg.bn, cfg.bk])
    c_desc = TensorDescriptor.from_tensor(out, [cfg.bm, cfg.bn])
    tokens = tokens or M
    tiles = triton.cdiv(M, cfg.bm) * triton.cdiv(N, cfg.bn)
    programs = min(tiles, _sm_count(a.device)) if cfg.persistent else tiles
    _gemm_kernel[(programs,)](
        a_desc, b_desc, c_desc,
        x if x is not None else out, x.stride(0) if x is not None else 0,
        bias if bias is not None else out, gate if gate is not None else out,
        M, N,
        tokens, tokens // gate.shape[1] if gate is not None else 1,
        gate.stride(0) if gate is not None else 0, gate.stride(1) if gate is not None else 0,
        EPILOGUE=EPILOGUES.index(epilogue), HAS_BIAS=bias is not None, HAS_GATE=gate is not None,
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP_M=cfg.group_m, K_TILES=triton.cdiv(K, cfg.bk),
        PERSISTENT=cfg.persistent, NUM_PROGRAMS=programs, WARP_SPECIALIZE=cfg.warp_specialize, FLATTEN=cfg.flatten,
        num_warps=cfg.warps, num_stages=cfg.stages,
    )  # fmt: skip
    return out
