"""DiT forward benchmark at LongCat's real shapes, random full-size bf16 weights, everything in ONE process.

Sections (``--sections``, comma-separated; ``all`` adds the opt-in ``720p``):

  floor       GEMMs (qkv, proj, cross q/proj, [w1;w3], w2) and attention (self, cross) timed alone at the model's
              own shapes -> the kernel-bound floor of one forward = depth x (sum of GEMMs + attention)
  kernels     each fused Triton op checked against its PyTorch reference at the real shape, then timed against
              the eager PyTorch ops it replaces (GB/s)
  fast        the fast path: fused kernels + best attention + the forward as a CUDA graph (GraphDenoiser);
              warm-up (Triton JIT + one eager forward + capture) timed separately
  eager       the plain eager baseline: our DiT with kernels="torch" = the original's math (same attention
              backend as the fast path: the original's yardstick ran FlashAttention-3)
  compiled    the "compiled original" proxy: each block of the eager baseline torch.compile'd (compile time too)
  cond_cached video continuation at batch 2: conditioned forward (4 cond + 20 noise latents, one sequence) and the
              cached decode (KV cache of 4 latents + 20 noise latents): fast path, our eager path, and an
              "original-style" eager cached step that repeats the cache, concatenates and re-ropes it every block
  agreement   depth-2, full-width model: fast path and eager bf16 vs an fp32 run of the same weights (STYLE #9)
  720p        refine-size grid 48x44x80 (168,960 tokens), batch 1, a few blocks timed and extrapolated (opt-in):
              fast path with dense attention, fast path with block-sparse attention (the refinement's), eager

Writes ``<out>/bench_dit_<gpu>_<date>.json`` and ``.md`` after every section; prints the summary table last.
Run: ``python bench/bench_dit.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GB,
    Budget,
    Report,
    attention_flops,
    build_dit,
    cuda_times,
    dit_forward_flops,
    free_memory,
    linear_flops,
    median,
    peak_bf16_flops,
    ratio,
    timed,
    wall,
)

from lc_runtime.config import LONGCAT_13B  # noqa: E402
from lc_runtime.graphs import GraphDenoiser, eager_capture  # noqa: E402
from lc_runtime.models import dit as dit_mod  # noqa: E402
from lc_runtime.ops import attention as A  # noqa: E402
from lc_runtime.ops.rope import apply_rope, rope_cos_sin  # noqa: E402

GRID_480 = (24, 30, 52)  # latent tokens (T, h, w): 480x832, 93 frames -> latents [B, 16, 24, 60, 104]
GRID_720 = (48, 44, 80)  # refine-size grid: 168,960 tokens
DEV = torch.device("cuda")
DEFAULT_SECTIONS = "floor,kernels,fast,fast_unfused,eager,cond_cached,agreement,compiled"  # compile last: longest
YARDSTICK = {"original_eager_fa3_b2_s": 8.01, "original_eager_fa3_b1_s": 3.98, "compiled_original_b2_s": 5.91}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=DEFAULT_SECTIONS, help=f"comma list or 'all' (default {DEFAULT_SECTIONS})")
    p.add_argument("--batches", default="2,1", help="batch sizes of the full forward (default 2,1)")
    p.add_argument("--iters", type=int, default=2, help="timed forwards per measurement (after warm-up)")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds for all sections (default 420)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--attention", default=None, help="attention backend (default: the best available)")
    p.add_argument("--depth", type=int, default=48, help="DiT depth (48 = LongCat 13.6B; less for smoke runs)")
    p.add_argument("--no-graph", action="store_true", help="fast path without the CUDA graph")
    p.add_argument("--cond-latents", type=int, default=4)
    p.add_argument("--noise-latents", type=int, default=20)
    p.add_argument("--blocks-720", type=int, default=2, help="blocks timed at the 720p shape (then x depth)")
    p.add_argument("--agree-frames", type=int, default=24, help="latent frames of the agreement check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="CPU run of every section at toy sizes (checks the script)")
    args = p.parse_args(argv)
    args.sections = DEFAULT_SECTIONS + ",720p" if args.sections == "all" else args.sections
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


# ---------------------------------------------------------------------------------------------- inputs
def latents(batch: int, grid, seed: int) -> torch.Tensor:
    T, h, w = grid
    g = torch.Generator(DEV.type).manual_seed(seed)
    return torch.randn(batch, 16, T, 2 * h, 2 * w, generator=g, device=DEV, dtype=torch.bfloat16)


def text_inputs(batch: int, cfg, seed: int):
    g = torch.Generator(DEV.type).manual_seed(seed + 100)
    y = torch.randn(batch, 1, 512, cfg.caption_channels, generator=g, device=DEV, dtype=torch.bfloat16)
    return y, torch.ones(batch, 512, dtype=torch.long, device=DEV)


def tokens(grid) -> int:
    return grid[0] * grid[1] * grid[2]


def perf(rec: dict, flops: float) -> dict:
    """Add TFLOP/s and MFU to a timing record."""
    peak = peak_bf16_flops(torch.cuda.get_device_name(0)) if DEV.type == "cuda" else None
    rec["tflops"] = flops / rec["s"] / 1e12
    rec["mfu"] = None if peak is None else flops / rec["s"] / peak
    return rec


# ---------------------------------------------------------------------------------------------- floor
def _time_op(fn, iters: int = 5) -> float:
    fn()
    return median(cuda_times(fn, iters))


def nhd_qkv(b: int, s: int, h: int, d: int, seed: int):
    g = torch.Generator(DEV.type).manual_seed(seed)
    return torch.randn(b, s, h, d, generator=g, device=DEV, dtype=torch.bfloat16).transpose(1, 2)


def measure_floor(cfg, backend: str, batch: int, n_tok: int, *, cond: int = 0, cache: int = 0, sustained_iters=2):
    """Per-kernel times at the model's shapes and the kernel-bound floor of one forward (seconds).

    ``floor_s`` sums each kernel timed alone (5 calls in a row, so every one runs in a short burst, at the clocks
    a cool GPU reaches). ``sustained_floor_s`` (when ``sustained_iters``) runs the same kernels back to back in
    block order, ``depth`` times, as one forward would: the same work under the sustained power draw of a whole
    forward. The second is reported beside the first; the targets use the first."""
    c, f, h, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads, cfg.head_dim
    m = batch * n_tok
    gemms = {"qkv": (c, 3 * c, True), "proj": (c, c, True), "cross_q": (c, c, True), "cross_proj": (c, c, True)}
    gemms |= {"w13": (c, 2 * f, False), "w2": (f, c, False)}
    rec: dict = {"tokens": n_tok, "batch": batch, "gemm": {}, "attention": {}}
    x_c = torch.randn(m, c, device=DEV, dtype=torch.bfloat16)
    x_f = torch.randn(m, f, device=DEV, dtype=torch.bfloat16)
    calls = {}
    for name, (k, n, bias) in gemms.items():
        w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * k**-0.5
        b = torch.randn(n, device=DEV, dtype=torch.bfloat16) if bias else None
        x = x_c if k == c else x_f
        calls[name] = lambda x=x, w=w, b=b: F.linear(x, w, b)
        s = _time_op(calls[name])
        rec["gemm"][name] = {"s": s, "tflops": linear_flops(m, k, n) / s / 1e12, "shape": [m, k, n]}
    q = nhd_qkv(batch, n_tok, h, d, 1)
    kv_len = n_tok + cache
    k, v = nhd_qkv(batch, kv_len, h, d, 2), nhd_qkv(batch, kv_len, h, d, 3)
    if cond:
        self_calls = [
            lambda: A.attention_with(backend, q[:, :, :cond], k[:, :, :cond], v[:, :, :cond]),
            lambda: A.attention_with(backend, q[:, :, cond:], k, v),
        ]
        fl = attention_flops(batch, h, cond, cond, d) + attention_flops(batch, h, n_tok - cond, n_tok, d)
    else:
        self_calls, fl = [lambda: A.attention_with(backend, q, k, v)], attention_flops(batch, h, n_tok, kv_len, d)
    s_self = sum(_time_op(fn) for fn in self_calls)
    rec["attention"]["self"] = {"s": s_self, "tflops": fl / s_self / 1e12, "kv_tokens": kv_len}
    kt, vt = nhd_qkv(batch, 512, h, d, 4), nhd_qkv(batch, 512, h, d, 5)
    qx = q[:, :, cond:]
    cross = lambda: A.attention_with(backend, qx, kt, vt)  # noqa: E731
    s_x = _time_op(cross)
    rec["attention"]["cross"] = {"s": s_x, "tflops": attention_flops(batch, h, qx.shape[2], 512, d) / s_x / 1e12}
    block = sum(g["s"] for g in rec["gemm"].values()) + s_self + s_x
    rec["floor_block_s"] = block
    rec["floor_s"] = cfg.depth * block
    if sustained_iters:
        order = [calls["qkv"], *self_calls, calls["proj"], calls["cross_q"], cross, calls["cross_proj"]]
        order += [calls["w13"], calls["w2"]]

        def forward():
            for _ in range(cfg.depth):
                for fn in order:
                    fn()

        forward()
        rec["sustained_floor_s"] = median(cuda_times(forward, sustained_iters))
        rec["sustained_over_floor"] = rec["sustained_floor_s"] / rec["floor_s"]
    return rec


# ---------------------------------------------------------------------------------------------- kernels
def kernel_section(cfg, backend: str, batch: int) -> dict:
    """Validate each fused op against its reference at the 480p shape, then time both (STYLE #11)."""
    from lc_runtime.ops import fused

    c, f, h, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads, cfg.head_dim
    T = GRID_480[0]
    n = tokens(GRID_480)
    x = torch.randn(batch, n, c, device=DEV, dtype=torch.bfloat16)
    y = torch.randn(batch, n, c, device=DEV, dtype=torch.bfloat16)
    mods = torch.randn(batch, T, 1, 6 * c, device=DEV).chunk(6, dim=-1)
    w, bias = torch.randn(c, device=DEV, dtype=torch.bfloat16), torch.randn(c, device=DEV, dtype=torch.bfloat16)
    qkv = torch.randn(batch, n, 3, h, d, device=DEV, dtype=torch.bfloat16)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    wq = torch.randn(d, device=DEV, dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(GRID_480, d, device=DEV)
    hh = torch.randn(batch, n, 2 * f, device=DEV, dtype=torch.bfloat16)
    o_a, o_b = nhd_qkv(batch, n, h, d, 7), nhd_qkv(batch, n, h, d, 8)
    l_a, l_b = (torch.randn(batch, h, n, device=DEV) for _ in range(2))
    xb = x.nbytes
    cases = {  # name: (fused, reference = the eager ops it replaces, args, bytes moved, calls per block)
        "modulate": (fused.modulate, fused.modulate_ref, (x, mods[0], mods[1]), 2 * xb, 2),
        "gated_add": (fused.gated_add, fused.gated_add_ref, (x, mods[2], y), 3 * xb, 2),
        "layer_norm": (fused.layer_norm, fused.layer_norm_ref, (x, w, bias), 2 * xb, 1),
        "qk_norm_rope": (fused.qk_norm_rope, fused.qk_norm_rope_ref, (q, k, wq, wq, cos, sin), 4 * xb, 1),
        "head_rms_norm": (fused.head_rms_norm, fused.head_rms_norm_ref, (q, wq), 2 * xb, 1),
        "swiglu": (fused.swiglu, fused.swiglu_ref, (hh,), hh.nbytes * 3 // 2, 1),
        "merge_attention": (fused.merge_attention, A.merge_attention_ref, (o_a, l_a, o_b, l_b), 3 * xb, 0),
    }
    rec: dict = {"batch": batch, "tokens": n}
    saved = 0.0
    for name, (fast, ref, args, nbytes, per_block) in cases.items():
        got, want = fast(*args), ref(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want))
        mism = max((a != b).float().mean().item() for a, b in zip(got, want))
        del got, want
        t_fast = _time_op(lambda fast=fast, args=args: fast(*args))
        t_ref = _time_op(lambda ref=ref, args=args: ref(*args))
        rec[name] = {
            "max_abs_diff_vs_ref": diff,
            "mismatch_fraction": mism,
            "fused_s": t_fast,
            "eager_s": t_ref,
            "fused_gbps": nbytes / t_fast / GB,
            "speedup": t_ref / t_fast,
        }
        saved += per_block * (t_ref - t_fast)
        free_memory()
    rec["saved_per_forward_s"] = cfg.depth * saved
    return rec


# ---------------------------------------------------------------------------------------------- original cached step
def original_cached_forward(dit, noise, timestep, y, mask, cache_k, cache_v):
    """The original's cached decode (SPEC §1.6 forward_with_kv_cache), eager: every block repeats the batch-1
    cache to the batch, concatenates it with the new K/V, pads Q to the full length and re-ropes Q and K on the
    whole (nc + T) grid, then attends. The caption MLP and cross K/V are recomputed every step, as the original
    does. ``cache_k``/``cache_v`` [depth, 1, H, Nc, D] stand for the pre-RoPE cache (values do not matter)."""
    B = noise.shape[0]
    T, H, W = dit.grid(noise)
    nc = cache_k.shape[3] // (H * W)
    cos, sin = rope_cos_sin((T + nc, H, W), dit.config.head_dim, device=noise.device)
    text = dit.prepare_text(y, mask)
    t = dit.embed_timestep(timestep, B, T)
    x = dit.x_embedder(noise.to(dit.dtype))
    for i, blk in enumerate(dit.blocks):
        x = _original_cached_block(blk, x, t, cos, sin, (text.k[i], text.v[i], text.mask), T, cache_k[i], cache_v[i])
    return dit.unpatchify(dit.final_layer(x, t, T), (T, H, W)).float()


def _original_cached_block(blk, x, t, cos, sin, text_i, frames, kc, vc):
    B, N, C = x.shape
    mods = blk.adaLN_modulation(t).view(B, frames, 1, 6 * C).chunk(6, dim=-1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
    attn = blk.attn
    xm = dit_mod.modulate(x, shift_msa, scale_msa, frames)
    q, k, v = attn.qkv(xm).view(B, N, 3, attn.heads, C // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = dit_mod.rms_norm(q, attn.q_norm.weight), dit_mod.rms_norm(k, attn.k_norm.weight)
    kc, vc = kc.repeat(B, 1, 1, 1), vc.repeat(B, 1, 1, 1)
    K, V = torch.cat([kc, k], dim=2), torch.cat([vc, v], dim=2)
    Q = torch.cat([torch.empty_like(kc), q], dim=2)
    Q, K = apply_rope(Q, cos, sin), apply_rope(K, cos, sin)
    o = A.attention(Q[:, :, -N:], K, V)
    x = dit_mod.gated_add(x, gate_msa, attn.out(o), frames)
    x = blk._cross(x, text_i, 0)  # x + cross-attention
    return dit_mod.gated_add(x, gate_mlp, blk.ffn(dit_mod.modulate(x, shift_mlp, scale_mlp, frames)), frames)


# ---------------------------------------------------------------------------------------------- sections
def make_denoiser(dit, args, max_graphs: int = 4) -> GraphDenoiser:
    """The runtime's CUDA-graph denoiser (on CPU smoke runs: the same static-buffer protocol, eagerly)."""
    capture = None if DEV.type == "cuda" else eager_capture
    return GraphDenoiser(dit, use_cuda_graph=not args.no_graph, max_graphs=max_graphs, capture=capture)


class Bench:
    def __init__(self, args, report: Report, dit, backend: str):
        self.args, self.report, self.dit, self.backend = args, report, dit, backend
        self.cfg = dit.config
        self.den = None
        self.results: dict = {}

    def denoiser(self) -> GraphDenoiser:
        if self.den is None:
            self.den = make_denoiser(self.dit, self.args, max_graphs=8)
        return self.den

    def forward_flops(self, batch, grid=GRID_480, **kw) -> float:
        return dit_forward_flops(self.cfg, batch, tokens(grid), **kw)

    def floor(self, rec):
        n = tokens(GRID_480)
        nc = self.args.cond_latents * GRID_480[1] * GRID_480[2]
        nn_ = self.args.noise_latents * GRID_480[1] * GRID_480[2]
        for b in self.args.batches:
            rec[f"b{b}"] = measure_floor(self.cfg, self.backend, b, n)
            free_memory()
        bmax = max(self.args.batches)
        rec[f"cond_b{bmax}"] = measure_floor(self.cfg, self.backend, bmax, n, cond=nc, sustained_iters=0)
        rec[f"cached_b{bmax}"] = measure_floor(self.cfg, self.backend, bmax, nn_, cache=nc)
        self.results["floor"] = rec

    def kernels(self, rec):
        rec |= kernel_section(self.cfg, self.backend, max(self.args.batches))

    def fast(self, rec):
        self.dit.use_kernels("triton", attention=self.backend)
        den = self.denoiser()
        for b in self.args.batches:
            x, t = latents(b, GRID_480, self.args.seed), torch.full((b,), 700.0, device=DEV)
            ctx = self.dit.prepare_text(*text_inputs(b, self.cfg, self.args.seed))
            warm = wall(lambda x=x, t=t, ctx=ctx: den(x, t, ctx, 0, None))
            r = perf(timed(lambda x=x, t=t, ctx=ctx: den(x, t, ctx, 0, None), self.args.iters), self.forward_flops(b))
            rec[f"b{b}"] = {"warmup_s": warm, **r}
            del x, ctx
            free_memory()
        b = max(self.args.batches)
        x, t = latents(b, GRID_480, self.args.seed), torch.full((b,), 700.0, device=DEV)
        ctx = self.dit.prepare_text(*text_inputs(b, self.cfg, self.args.seed))
        with torch.no_grad():
            rec[f"b{b}_no_graph"] = timed(lambda: self.dit(x, t, text_context=ctx), 1)
        self.results["fast"] = rec

    def fast_unfused(self, rec):
        """The fast path with the GEMM-epilogue ops off (cuBLAS GEMMs, then the SwiGLU row kernel and a torch add),
        batch max(--batches), its own CUDA graph: what the epilogues save, measured in the same process."""
        from dataclasses import replace

        self.dit.use_kernels("triton", attention=self.backend)
        self.dit.set_ops(replace(self.dit.ops, linear_swiglu=None, linear_add=None))
        b = max(self.args.batches)

        def measure():  # its graph and inputs are freed when it returns
            den = make_denoiser(self.dit, self.args, max_graphs=2)
            x, t = latents(b, GRID_480, self.args.seed), torch.full((b,), 700.0, device=DEV)
            ctx = self.dit.prepare_text(*text_inputs(b, self.cfg, self.args.seed))
            wall(lambda: den(x, t, ctx, 0, None))
            return perf(timed(lambda: den(x, t, ctx, 0, None), self.args.iters), self.forward_flops(b))

        rec[f"b{b}"] = measure()
        self.dit.use_kernels("triton", attention=self.backend)
        free_memory()
        self.results["fast_unfused"] = rec

    def _baseline(self, rec, prefix: str, first_call_key: str):
        for b in self.args.batches:
            x, t = latents(b, GRID_480, self.args.seed), torch.full((b,), 700.0, device=DEV)
            y, mask = text_inputs(b, self.cfg, self.args.seed)
            with torch.no_grad():
                first = wall(lambda x=x, t=t, y=y, mask=mask: self.dit(x, t, y, mask))
                r = perf(timed(lambda x=x, t=t, y=y, mask=mask: self.dit(x, t, y, mask), self.args.iters),
                         self.forward_flops(b))  # fmt: skip
            rec[f"{prefix}b{b}"] = {first_call_key: first, **r}
            if first_call_key == "first_call_s":
                rec[f"{prefix}b{b}"]["compile_s"] = first - r["s"]
            del x, y
            free_memory()

    def eager(self, rec):
        self.dit.use_kernels("torch", attention=self.backend)
        self._baseline(rec, "", "warmup_s")
        self.results["eager"] = rec

    def compiled(self, rec):
        import torch._dynamo

        # 48 blocks x 2 batch sizes of one code object: keep dynamo from falling back to eager after 8 recompiles
        dyn = torch._dynamo.config
        dyn.cache_size_limit = max(dyn.cache_size_limit, 64)
        if hasattr(dyn, "accumulated_cache_size_limit"):
            dyn.accumulated_cache_size_limit = max(dyn.accumulated_cache_size_limit, 512)
        self.dit.use_kernels("torch", attention=self.backend)
        blocks = self.dit.blocks
        self.dit.blocks = nn.ModuleList(torch.compile(b, dynamic=False) for b in blocks)
        try:
            self._baseline(rec, "", "first_call_s")
        finally:
            self.dit.blocks = blocks
            torch._dynamo.reset()
        self.results["compiled"] = rec

    def cond_cached(self, rec):
        a, cfg = self.args, self.cfg
        b = max(a.batches)
        nc, nn_ = a.cond_latents, a.noise_latents
        grid = (nc + nn_, GRID_480[1], GRID_480[2])
        x_full = latents(b, grid, a.seed)
        t_full = torch.full((b, nc + nn_), 700.0, device=DEV)
        t_full[:, :nc] = 0
        noise, t_noise = x_full[:, :, nc:], torch.full((b,), 700.0, device=DEV)
        y, mask = text_inputs(b, cfg, a.seed)
        den = self.denoiser()
        self.dit.use_kernels("triton", attention=self.backend)
        ctx = self.dit.prepare_text(y, mask)
        with torch.no_grad():
            kv = self.dit.prefill(x_full[:1, :, :nc])
            rec["prefill_s"] = wall(lambda: self.dit.prefill(x_full[:1, :, :nc]))
            fl_cond = self.forward_flops(b, grid, cond_tokens=nc * grid[1] * grid[2])
            fl_cached = dit_forward_flops(cfg, b, nn_ * grid[1] * grid[2], cache_tokens=nc * grid[1] * grid[2])
            rec["fast_cond"] = {"warmup_s": wall(lambda: den(x_full, t_full, ctx, nc, None))}
            rec["fast_cond"] |= perf(timed(lambda: den(x_full, t_full, ctx, nc, None), a.iters), fl_cond)
            rec["fast_cached"] = {"warmup_s": wall(lambda: den(noise, t_noise, ctx, 0, kv))}
            rec["fast_cached"] |= perf(timed(lambda: den(noise, t_noise, ctx, 0, kv), a.iters), fl_cached)
            self.dit.use_kernels("torch", attention=self.backend)
            for name, fn, fl in (
                ("eager_cond", lambda: self.dit(x_full, t_full, y, mask, num_cond_latents=nc), fl_cond),
                ("eager_cached", lambda: self.dit(noise, t_noise, y, mask, kv_cache=kv), fl_cached),
                ("original_cached", lambda: original_cached_forward(self.dit, noise, t_noise, y, mask, kv.k, kv.v),
                 fl_cached),
            ):  # fmt: skip
                rec[name] = {"warmup_s": wall(fn)}
                rec[name] |= perf(timed(fn, max(1, a.iters - 1)), fl)
                free_memory()
        self.results["cond_cached"] = rec

    def agreement(self, rec):
        a = self.args
        cfg2 = replace(self.cfg, depth=2)
        m16 = build_dit(cfg2, device=DEV, seed=a.seed + 1)
        m32 = dit_mod.LongCatDiT(cfg2)
        m32.load_state_dict({k: v.float() for k, v in m16.state_dict().items()}, assign=True)
        m32.eval()
        nc = a.cond_latents
        grid = (a.agree_frames, GRID_480[1], GRID_480[2])
        x = latents(1, grid, a.seed + 2)
        t = torch.full((1,), 700.0, device=DEV)
        y, mask = text_inputs(1, cfg2, a.seed + 3)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                m32.use_kernels("torch", attention="efficient")
                ref = m32(x, t, y, mask)
                kv32 = m32.prefill(x[:, :, :nc])
                ref_c = m32(x[:, :, nc:], t, y, mask, kv_cache=kv32)
                del kv32
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del m32
        free_memory()
        with torch.no_grad():
            m16.use_kernels("torch", attention=self.backend)
            eager = m16(x, t, y, mask)
            eager_c = m16(x[:, :, nc:], t, y, mask, kv_cache=m16.prefill(x[:, :, :nc]))
            m16.use_kernels("triton", attention=self.backend)
            den = make_denoiser(m16, a)
            ctx = m16.prepare_text(y, mask)
            fast = den(x, t, ctx, 0, None)
            fast_c = den(x[:, :, nc:], t, ctx, 0, m16.prefill(x[:, :, :nc]))
        for name, f_out, e_out, r_out in (("full", fast, eager, ref), ("cached", fast_c, eager_c, ref_c)):
            ef, ee = (f_out - r_out).abs(), (e_out - r_out).abs()
            ok = bool(ef.max() <= 2 * ee.max() + 1e-6 and ef.mean() <= 2 * ee.mean() + 1e-6)
            rec[name] = {
                "fast_max_err": ef.max().item(),
                "fast_mean_err": ef.mean().item(),
                "eager_bf16_max_err": ee.max().item(),
                "eager_bf16_mean_err": ee.mean().item(),
                "fast_rel_l2": ((f_out - r_out).norm() / r_out.norm()).item(),
                "eager_rel_l2": ((e_out - r_out).norm() / r_out.norm()).item(),
                "bound": "fast <= 2 x eager-bf16 (max and mean abs error vs fp32)",
                "ok": ok,
            }
        self.results["agreement"] = rec

    def p720(self, rec):
        a = self.args
        n = a.blocks_720
        blocks = self.dit.blocks
        self.dit.blocks = blocks[:n]
        rec["blocks_timed"] = n
        try:
            x, t = latents(1, GRID_720, a.seed), torch.full((1,), 700.0, device=DEV)
            y, mask = text_inputs(1, self.cfg, a.seed)
            with torch.no_grad():
                self.dit.use_kernels("triton", attention=self.backend)
                ctx = self.dit.prepare_text(y, mask)
                den = make_denoiser(self.dit, a)
                rec["fast_warmup_s"] = wall(lambda: den(x, t, ctx, 0, None))
                rec["fast"] = timed(lambda: den(x, t, ctx, 0, None), 1)
                den.release()  # frees its graph pool before the next run
                # the refinement's setting: block-sparse self-attention (the config's bsa_params), fast path
                self.dit.enable_bsa()
                try:
                    den = make_denoiser(self.dit, a)
                    rec["fast_bsa_warmup_s"] = wall(lambda: den(x, t, ctx, 0, None))
                    rec["fast_bsa"] = timed(lambda: den(x, t, ctx, 0, None), 1)
                    den.release()
                finally:
                    self.dit.disable_bsa()
                self.dit.use_kernels("torch", attention=self.backend)
                rec["eager_warmup_s"] = wall(lambda: self.dit(x, t, y, mask))
                rec["eager"] = timed(lambda: self.dit(x, t, y, mask), 1)
            for key in ("fast", "fast_bsa", "eager"):
                rec[key]["per_block_s"] = rec[key]["s"] / n
                rec[key]["extrapolated_forward_s"] = rec[key]["s"] / n * self.cfg.depth
            h, d = self.cfg.num_heads, self.cfg.head_dim
            q = nhd_qkv(1, tokens(GRID_720), h, d, 1)
            s = _time_op(lambda: A.attention_with(self.backend, q, q, q), 2)
            rec["dense_self_attention_s"] = s
            rec["dense_self_attention_tflops"] = attention_flops(1, h, q.shape[2], q.shape[2], d) / s / 1e12
        finally:
            self.dit.blocks = blocks
        self.results["720p"] = rec


# ---------------------------------------------------------------------------------------------- summary
def summarize(report: Report, res: dict, batches: list[int]) -> None:
    def get(section, *keys):
        cur = res.get(section)
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    for b in batches:
        fast, floor = get("fast", f"b{b}", "s"), get("floor", f"b{b}", "floor_s")
        comp, eager = get("compiled", f"b{b}", "s"), get("eager", f"b{b}", "s")
        report.add_summary(f"fast forward b{b} (s)", fast, note=f"MFU {fmt_pct(get('fast', f'b{b}', 'mfu'))}")
        report.add_summary(f"eager baseline b{b} (s)", eager, note=f"yardstick (H200, FA3): "
                           f"{YARDSTICK.get(f'original_eager_fa3_b{b}_s', '-')} s")  # fmt: skip
        report.add_summary(f"compiled original b{b} (s)", comp,
                           note=f"compile {fmt_s(get('compiled', f'b{b}', 'compile_s'))}")  # fmt: skip
        report.add_summary(f"kernel-bound floor b{b} (s)", floor)
        sustained = get("floor", f"b{b}", "sustained_floor_s")
        report.add_summary(f"the floor's kernels back to back, one forward's worth b{b} (s)", sustained)
        r = ratio(fast, comp)
        report.add_summary(f"fast / compiled b{b}", r, target="<= 0.93", ok=None if r is None else r <= 0.93)
        r = ratio(fast, floor)
        report.add_summary(f"fast / floor b{b}", r, target="<= 1.05", ok=None if r is None else r <= 1.05)
        report.add_summary(f"fast / floor's kernels back to back b{b}", ratio(fast, sustained))
        r = ratio(fast, eager)
        report.add_summary(f"fast / eager b{b}", r)
        w = get("fast", f"b{b}", "warmup_s")
        report.add_summary(f"fast warm-up b{b} (s)", w, target="<= 20", ok=None if w is None else w <= 20)
        unfused = get("fast_unfused", f"b{b}", "s")
        if unfused is not None:
            report.add_summary(f"fast without GEMM epilogues b{b} (s)", unfused, note="same process")
            report.add_summary(f"fast / fast without GEMM epilogues b{b}", ratio(fast, unfused))
    b = max(batches)
    cached, cond = get("cond_cached", "fast_cached", "s"), get("cond_cached", "fast_cond", "s")
    orig = get("cond_cached", "original_cached", "s")
    report.add_summary(f"cached step fast b{b} (s)", cached)
    report.add_summary(f"conditioned step fast b{b} (s)", cond)
    report.add_summary(f"original-style eager cached b{b} (s)", orig)
    r = ratio(cached, orig)
    report.add_summary("cached fast / original eager cached", r, target="<= 0.67", ok=None if r is None else r <= 0.67)
    r = ratio(cached, cond)
    report.add_summary("cached fast / conditioned fast", r, target="<= 1.0", ok=None if r is None else r <= 1.0)
    r = ratio(cached, get("floor", f"cached_b{b}", "floor_s"))
    report.add_summary("cached fast / cached floor", r)
    r = ratio(cached, get("floor", f"cached_b{b}", "sustained_floor_s"))
    report.add_summary("cached fast / cached floor's kernels back to back", r)
    for mode in ("full", "cached"):
        ok = get("agreement", mode, "ok")
        report.add_summary(f"agreement {mode}: fast err / eager-bf16 err (max)",
                           ratio(get("agreement", mode, "fast_max_err"), get("agreement", mode, "eager_bf16_max_err")),
                           target="<= 2", ok=ok)  # fmt: skip
    if res.get("720p"):
        report.add_summary("720p fast forward, extrapolated (s)", get("720p", "fast", "extrapolated_forward_s"))
        bsa = get("720p", "fast_bsa", "extrapolated_forward_s")
        report.add_summary("720p fast forward with block-sparse attention, extrapolated (s)", bsa)
        report.add_summary("720p eager forward, extrapolated (s)", get("720p", "eager", "extrapolated_forward_s"))


def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_s(x) -> str:
    return "-" if x is None else f"{x:.1f} s"


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    global DEV, GRID_480, GRID_720
    args = parse_args(argv)
    cfg = replace(LONGCAT_13B, depth=args.depth)
    if args.smoke:  # toy sizes on the CPU: exercises every code path of the script, measures nothing
        DEV, GRID_480, GRID_720 = torch.device("cpu"), (6, 4, 6), (8, 4, 8)
        cfg = replace(cfg, hidden_size=128, num_heads=4, depth=2, caption_channels=32, adaln_tembed_dim=32)
        args.cond_latents, args.noise_latents, args.agree_frames, args.iters = 2, 4, 6, 1
    elif not torch.cuda.is_available():
        print("bench_dit needs a CUDA GPU (or --smoke for a CPU check of the script)", file=sys.stderr)
        return 2
    budget = Budget(args.time_budget)
    backend = A.select_attention_backend(args.attention, DEV)
    config = dict(vars(args), attention_backend=backend, dit=asdict(cfg), grid_480=GRID_480, grid_720=GRID_720)
    config["yardstick_h200"] = YARDSTICK
    report = Report("bench_dit", args.out, config, budget)
    print(f"attention backend: {backend}; building the DiT (depth {cfg.depth}) on the GPU ...", flush=True)
    built: dict = {}
    with report.section("build") as rec:
        rec["build_s"] = wall(lambda: built.setdefault("dit", build_dit(cfg, device=DEV, seed=args.seed)))
        rec["params"] = sum(p.numel() for p in built["dit"].parameters())
        rec["weights_gb"] = torch.cuda.memory_allocated() / GB if DEV.type == "cuda" else None
    dit = built.get("dit")
    if dit is None:
        report.print_summary()
        return 1
    bench = Bench(args, report, dit, backend)
    estimates = {"floor": 80, "kernels": 30, "fast": 60, "fast_unfused": 40, "eager": 50, "compiled": 150,
                 "cond_cached": 90, "agreement": 40, "720p": 150}  # fmt: skip
    methods = {"720p": bench.p720}
    for name in args.sections:
        fn = methods.get(name) or getattr(bench, name, None)
        if fn is None:
            print(f"unknown section {name!r}; known: {', '.join(estimates)}", file=sys.stderr)
            continue
        with report.section(name, estimates.get(name, 0)) as rec:
            if rec is not None:
                fn(rec)
    summarize(report, bench.results, args.batches)
    report.print_summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
