"""Block-sparse attention (lc_runtime.ops.block_sparse_attention) on one GPU: validate, then time (STYLE #11).

Run from the repository root on the GPU machine (H100/H200, torch 2.11 + CUDA 13, Triton 3.6):

    python bench/bench_bsa.py [--out DIR] [--quick]

Writes DIR/bsa_<gpu>.json (every number) and DIR/bsa_<gpu>.md (summary); DIR is --out, else $OUT, else
bench/results. Both are rewritten after every phase, so a crash still leaves what was measured. About 2-3 minutes of
GPU time, most of it Triton compiling the swept configs (--quick: 3 configs).

1. Goldens (tests/fixtures/golden/bsa.*, the original Triton kernel on an H200): the selection computed on the GPU
   must equal the golden indices exactly; the kernel output (every swept config, one and two key-range passes,
   output poisoned with NaN first) must lie within bf16 precision of the fp32 reference: max and mean |err| <= 2x
   those of a bf16 torch computation of the same attention (STYLE #9). The distance to the original kernel's
   output is reported.
2. Random small shapes for every config, one and three passes: different q/k grids, topk / cdf / cdf+topk,
   [B, S, H, D] storage.
3. The 720p refine shape: 32 heads x (48, 44, 80) tokens = 168,960, bf16, D = 128, sparsity 0.9375 (K_sel = 165 of
   2640 key blocks). Every timed config first passes a spot check of sampled query blocks against a gathered fp32
   reference. CUDA-event timings (warm-up, L2 flushed before each rep, median): selection (pool + scores + top-k),
   the ascending sort, the op's selection (pool + scores + the ascending Triton top-k) and its parts (the top-k's
   radix and interpolation searches per warp count; whether their indices are the same), the sm_90 prep
   (k's block-major copy + block means in one Triton pass, v's copy, q's means; the op makes the copies only where
   the Gluon kernel cannot read K/V boxes from the raster layout; how many means and selection rows differ from
   torch's pooling), the kernel per config (auto key-range passes), then for the best config every
   pass count and the original's schedule (one pass, score order), the whole op, dense SDPA (flash, cuDNN) and FA3
   (`fa3_fwd_interface` or `flash_attn_interface`) when one imports. Inputs: iid normal (selections scattered over
   the whole key range: the worst case for L2 reuse) and "rope" (a per-head content vector plus noise, rotated by a
   3-D RoPE: scores fall off with distance, neighbouring query blocks pick overlapping key blocks, as in real DiT
   heads).
   TFLOP/s counts the selected blocks only: 4 * Sq * K_sel * 64 * D * H; K/V GB/s = gathered K/V bytes / time.

--smoke runs the same flow at toy sizes (on CPU with TRITON_INTERPRET=1 when no GPU is present) to test the script.
"""

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lc_runtime.ops.block_sparse_attention import (  # noqa: E402
    _topk_ascending,
    ascending_selection,
    block_scores,
    block_sparse_attention,
    group_selection,
    num_selected_blocks,
    raster_block_means,
    reorder_from_blocks,
    reorder_to_blocks,
    select_blocks_raster,
    sparse_attention_ref,
)

CHUNK = (4, 4, 4)
TOPK_WARPS = (1, 2, 4, 8, 16)  # warps per row of the Triton top-k's radix search, timed side by side
TOPK_INTERP_WARPS = (2, 4, 8)  # the same for its interpolation search (triton_topk.py: method "interp")
BLOCK = 64
# (n_sub, num_warps, num_stages[, group_h, group_w]); sm_90 compile of Triton 3.6: stages <= 4 double-buffer K/V one
# iteration ahead (82 KB smem at n_sub 1: 2 programs/SM), stages 5 triple-buffer two iterations ahead (115 KB: 1
# program/SM). Grouped configs (query blocks per program: group_h x group_w, 64 rows each) need a warpgroup (4 warps)
# per 64 rows for Hopper's m64 wgmma tiles.
SWEEP = [(1, 4, 3), (1, 8, 3), (1, 4, 5), (1, 8, 5), (2, 4, 3), (2, 8, 3), (2, 8, 5)]
SWEEP += [(1, 8, 3, 1, 2), (1, 8, 4, 1, 2), (2, 8, 3, 1, 2), (1, 16, 3, 2, 2), (1, 16, 3, 1, 4)]
QUICK_SWEEP = [(1, 4, 3), (1, 8, 3, 1, 2), (1, 8, 4, 1, 2), (1, 16, 3, 2, 2)]
PASS_SWEEP = [1, 2, 3, 4, 6]
# TMA variant (one key block per iteration, no groups): (num_warps, num_stages, warp_specialize). --sweep tma times
# these beside the default gathered config.
# Measured on an H200 (bench/results/bsa_nvidia-h200_20261121-1805-tma.md): warp specialization with 4 warps does
# not compile in Triton 3.6, with 8 warps it is no faster than without; key-range passes only slow the TMA kernel.
# (num_warps, num_stages, maxnreg): stages 1 = no software pipeline, 48 KB of shared memory, up to 4 programs per SM.
# (n_sub, num_warps, num_stages, maxnreg); n_sub 2: pairs of key blocks per softmax update.
TMA_SWEEP = [(1, 4, 4, None), (1, 4, 1, 128), (2, 4, 1, None), (2, 4, 2, None), (2, 4, 3, None), (2, 8, 2, None)]
TMA_SWEEP += [(2, 8, 3, None)]
QUICK_TMA_SWEEP = [(1, 4, 4, None), (1, 4, 1, 128)]


def log(*args):
    print(*args, flush=True)


def cfg_name(cfg) -> str:
    passes = "auto" if cfg.kv_passes is None else cfg.kv_passes
    group = f" group={cfg.group_h}x{cfg.group_w}" if cfg.group > 1 else ""
    tma = (" tma" + (" ws" if cfg.warp_specialize else "")) if cfg.tma else ""
    tma += f" maxnreg={cfg.maxnreg}" if cfg.maxnreg else ""
    tma += f" gluon v{cfg.gluon}" if cfg.gluon else ""
    tma += f" rotate={cfg.rotate}" if cfg.rotate else ""
    tma += " raster" if cfg.raster else ""
    return f"n_sub={cfg.n_sub} warps={cfg.num_warps} stages={cfg.num_stages} passes={passes}{group}{tma}"


# ------------------------------------------------------------------------------------------------ checks


def precision_check(out, ref32, ref16, k=2.0) -> dict:
    """STYLE #9: |out - ref32| <= k * |ref16 - ref32| for the max and the mean; NaN (poison left) never passes."""
    err = (out.float() - ref32).abs()
    base = (ref16.float() - ref32).abs()
    finite = bool(torch.isfinite(out).all())
    rec = dict(max_err=err.max().item(), mean_err=err.mean().item(), max_bf16=base.max().item(),
               mean_bf16=base.mean().item(), rel_l2=((out.float() - ref32).norm() / ref32.norm()).item(),
               finite=finite)  # fmt: skip
    rec["ok"] = finite and rec["max_err"] <= k * rec["max_bf16"] and rec["mean_err"] <= k * rec["mean_bf16"]
    return rec


def reference_pair(q, k, v, lq, lk, idx, counts):
    """fp32 reference and the bf16 torch computation of the same selection, raster order."""
    qb, kb, vb = reorder_to_blocks(q, lq), reorder_to_blocks(k, lk), reorder_to_blocks(v, lk)
    ref32 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, counts), lq)
    ref16 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, counts, upcast=False), lq)
    return ref32, ref16


def run_kernel(q, k, v, idx, counts, lq, lk, cfg, order="sort"):
    from lc_runtime.ops.triton_bsa import bsa_forward

    out = torch.full_like(q, float("nan"))  # poison: every element must be written
    return bsa_forward(q, k, v, idx, counts, lq, lk, CHUNK, cfg, out=out, order=order)


def with_passes(cfg, passes):
    """``cfg`` in ``passes`` key-range passes (rotated walks need one: more passes drop them)."""
    return dataclasses.replace(cfg, kv_passes=passes, rotate=cfg.rotate if passes == 1 else 0)


def failed_run(e: Exception, **where) -> dict:
    log(f"[validate] {where}: {type(e).__name__}: {str(e)[:300]}")
    return dict(where, ok=False, error=f"{type(e).__name__}: {str(e)[:300]}", max_err=float("nan"),
                max_bf16=float("nan"), max_vs_original=float("nan"), selection_exact=False)  # fmt: skip


def validate_goldens(configs, device) -> list[dict]:
    from safetensors.torch import load_file

    golden = load_file(str(REPO / "tests/fixtures/golden/bsa.safetensors"))
    meta = json.loads((REPO / "tests/fixtures/golden/bsa.json").read_text())
    records = []
    for name, m in meta.items():
        q, k, v = (golden[f"{name}.{n}"].to(device) for n in "qkv")
        lq, lk = m["latent_shape_q"], m["latent_shape_k"]
        idx, counts = select_blocks_raster(q, k, lq, lk, m["sparsity"], m["cdf_threshold"], CHUNK)
        gold_idx = golden[f"{name}.block_indices"]
        gold_counts = golden[f"{name}.block_indices_lens"]
        selection_exact = torch.equal(idx.cpu(), gold_idx) and torch.equal(counts.cpu(), gold_counts)
        # the op's own selection (ascending order; the Triton top-k on CUDA in topk mode): the same sets
        asc, _ = select_blocks_raster(q, k, lq, lk, m["sparsity"], m["cdf_threshold"], CHUNK, order="ascending")
        selection_exact &= torch.equal(asc.cpu(), ascending_selection(gold_idx, gold_counts))
        ref32, ref16 = reference_pair(q, k, v, lq, lk, gold_idx.to(device), counts)
        gold_out = golden[f"{name}.out"].to(device)
        original = precision_check(gold_out, ref32, ref16)
        runs = [(cfg_name(c), run_kernel, c, p) for c in configs for p in (1, 2)]
        runs.append(("op (default config)", None, None, None))
        for label, _, cfg, passes in runs:
            try:
                if cfg is None:
                    out = block_sparse_attention(q, k, v, lq, lk, m["sparsity"], m["cdf_threshold"], CHUNK)
                else:
                    out = run_kernel(q, k, v, idx, counts, lq, lk, with_passes(cfg, passes))
            except Exception as e:  # a config may not compile (e.g. warp specialization): record it, go on
                records.append(failed_run(e, case=name, config=label, passes=passes))
                continue
            rec = precision_check(out, ref32, ref16)
            rec.update(case=name, config=label, passes=passes, selection_exact=selection_exact)
            rec["max_vs_original"] = (out.float() - gold_out.float()).abs().max().item()
            rec["original_max_err"] = original["max_err"]
            rec["ok"] = rec["ok"] and selection_exact
            records.append(rec)
    return records


def validate_random(configs, device, smoke) -> list[dict]:
    heads, d = (2, 32) if smoke else (4, 128)
    lq, lk = ((4, 8, 8), (8, 8, 16)) if smoke else ((8, 16, 16), (16, 16, 16))
    gen = torch.Generator(device="cpu").manual_seed(0)
    records = []
    for layout in ("bhsd", "bshd"):
        for sparsity, cdf in ((0.875, None), (None, 0.3), (0.9375, 0.2)):

            def make(lat, layout=layout):
                s = math.prod(lat)
                shape = (1, s, heads, d) if layout == "bshd" else (1, heads, s, d)
                x = torch.randn(shape, generator=gen).to(device=device, dtype=torch.bfloat16)
                return x.transpose(1, 2) if layout == "bshd" else x

            q, k, v = make(lq), make(lk), make(lk)
            idx, counts = select_blocks_raster(q, k, lq, lk, sparsity, cdf, CHUNK)
            ref32, ref16 = reference_pair(q, k, v, lq, lk, idx, counts)
            for cfg in configs:
                for passes in (1, 3):
                    case = f"{layout} sparsity={sparsity} cdf={cdf}"
                    try:
                        out = run_kernel(q, k, v, idx, counts, lq, lk, with_passes(cfg, passes))
                    except Exception as e:
                        records.append(failed_run(e, case=case, config=cfg_name(cfg), passes=passes))
                        continue
                    rec = precision_check(out, ref32, ref16)
                    rec.update(case=case, config=cfg_name(cfg), passes=passes)
                    rec["counts"] = [int(counts.min()), int(counts.max())]
                    records.append(rec)
    return records


def spot_check(q, k, v, out, idx, counts, lat, samples, gen) -> dict:
    """Compare sampled (head, query block) rows of a full-size output with a gathered fp32 reference."""
    s, d = q.shape[2], q.shape[3]
    tokens = reorder_to_blocks(torch.arange(s, device=q.device).view(1, 1, s, 1), lat).view(-1, BLOCK)
    outs, refs32, refs16 = [], [], []
    for _ in range(samples):
        h = int(torch.randint(q.shape[1], (1,), generator=gen))
        i = int(torch.randint(tokens.shape[0], (1,), generator=gen))
        rows = tokens[i]
        keys = tokens[idx[0, h, i, : int(counts[0, h, i])]].flatten()
        for dtype, acc in ((torch.float32, refs32), (torch.bfloat16, refs16)):
            scores = (q[0, h, rows].to(dtype) @ k[0, h, keys].to(dtype).T) / math.sqrt(d)
            acc.append(torch.softmax(scores, dim=-1) @ v[0, h, keys].to(dtype))
        outs.append(out[0, h, rows])
    return precision_check(torch.cat(outs), torch.cat(refs32), torch.cat(refs16).float())


# ------------------------------------------------------------------------------------------------ timing


class Timer:
    """Median time of fn: CUDA events with a 256 MB L2 flush before each rep (perf_counter on CPU)."""

    def __init__(self, device, flush_bytes=256 << 20):
        self.cuda = torch.device(device).type == "cuda"
        self.flush = torch.empty(flush_bytes if self.cuda else 1, dtype=torch.uint8, device=device)

    def __call__(self, fn, reps, warmup=1) -> dict:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            self.flush.zero_()
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times), reps=reps, times=times)


def rope_inputs(heads, lat, d, device, gen):
    """q, k, v [1, H, S, D] bf16: per-head content + 0.5 noise, q and k rotated by a 3-D RoPE (t:h:w pairs 2:3:3)."""
    pairs = d // 2
    split = (pairs // 4, 3 * pairs // 8, pairs - pairs // 4 - 3 * pairs // 8)
    angles = []
    for axis, (n, size) in enumerate(zip(split, lat)):
        freq = 10000.0 ** (-torch.arange(n, dtype=torch.float64) / n)
        a = torch.arange(size, dtype=torch.float64)[:, None] * freq[None, :]
        shape = [1, 1, 1, n]
        shape[axis] = size
        angles.append(a.view(shape).expand(*lat, n))
    angle = torch.cat(angles, dim=-1).reshape(-1, pairs).to(device=device, dtype=torch.float32)
    cos, sin = angle.cos(), angle.sin()
    s = math.prod(lat)
    out = []
    for role in range(3):
        x = torch.empty(1, heads, s, d, device=device, dtype=torch.bfloat16)
        for h in range(heads):
            content = torch.randn(1, d, generator=gen, device=device)
            xh = content + 0.5 * torch.randn(s, d, generator=gen, device=device)
            if role < 2:  # q and k get the rotation; v is content plus noise
                even, odd = xh[:, 0::2], xh[:, 1::2]
                xh = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(1)
            x[0, h] = xh.to(torch.bfloat16)
        out.append(x)
    return out


def selection_overlap(idx, nk) -> float:
    """Mean share of key blocks that query blocks i and i+1 (same head) both select: ~K_sel/Nk for iid inputs."""
    mask = torch.zeros(idx.shape[1], idx.shape[2], nk, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, idx[0], True)
    return ((mask[:, :-1] & mask[:, 1:]).sum(-1).float() / idx.shape[-1]).mean().item()


def bench_full(args, configs, device, results, save):
    heads, lat, d = (2, (8, 8, 16), 32) if args.smoke else (32, (48, 44, 80), 128)
    sparsity = 0.9375
    s = math.prod(lat)
    nk = s // BLOCK
    k_sel = num_selected_blocks(nk, sparsity)
    shape = dict(batch=1, heads=heads, latent_shape=list(lat), tokens=s, head_dim=d, dtype="bfloat16")
    shape.update(sparsity=sparsity, key_blocks=nk, k_sel=k_sel, flops_selected=4 * s * k_sel * BLOCK * d * heads)
    shape.update(flops_dense=4 * s * s * d * heads, kv_bytes_gathered=2 * nk * k_sel * BLOCK * d * 2 * heads)
    full = results.setdefault("full", {})
    full["shape"] = shape
    timer = Timer(device)
    gen = torch.Generator(device="cpu").manual_seed(1)  # spot-check sampling
    gen_inputs = torch.Generator(device=device).manual_seed(2)  # inputs drawn on the device (GBs)
    for kind in ("iid", "rope"):
        log(f"[full:{kind}] inputs")
        if kind == "iid":
            qkv = [
                torch.randn(1, heads, s, d, generator=gen_inputs, device=device, dtype=torch.bfloat16) for _ in "qkv"
            ]
            sweep = configs
        else:
            qkv = rope_inputs(heads, lat, d, device, gen_inputs)
            sweep = results.get("_rope_configs", configs[:1])
        full[kind] = bench_inputs(args, qkv, lat, shape, sweep, timer, gen, results, kind)
        save()
        if kind == "iid":
            reps = 1 if args.smoke else 2
            full[kind]["dense"] = dense_baselines(*qkv, timer, reps, shape["flops_dense"], device)
            save()
        qkv.clear()
        if device == "cuda":
            torch.cuda.empty_cache()


def selection_parts(q, k, lat, k_sel, timer, reps) -> dict:
    """Times of the op's selection steps on their own: pooling, scores, top-k (torch, unsorted) or the Triton
    ascending top-k (its default search, then each search per warp count; whether the two searches' indices agree)."""
    from lc_runtime.ops.triton_topk import topk_ascending

    parts = dict(time_pool=timer(lambda: (raster_block_means(q, lat), raster_block_means(k, lat)), reps))
    q_mean, k_mean = raster_block_means(q, lat), raster_block_means(k, lat)
    parts["time_scores"] = timer(lambda: torch.matmul(q_mean, k_mean.transpose(-1, -2)), reps)
    parts["time_scores_op"] = timer(lambda: block_scores(q_mean, k_mean, q.dtype), reps)  # bf16 GEMM on CUDA
    scores = torch.matmul(q_mean, k_mean.transpose(-1, -2))
    parts["time_topk_unsorted"] = timer(lambda: torch.topk(scores, k_sel, dim=-1, sorted=False), reps)
    parts["topk_default_method"] = inspect.signature(topk_ascending).parameters["method"].default
    parts["time_topk_ascending_triton"] = timer(lambda: topk_ascending(scores, k_sel), reps)
    for warps in TOPK_WARPS:
        parts[f"time_topk_ascending_triton_w{warps}"] = timer(
            lambda w=warps: topk_ascending(scores, k_sel, num_warps=w, method="radix"), reps
        )
    for warps in TOPK_INTERP_WARPS:
        parts[f"time_topk_ascending_triton_interp_w{warps}"] = timer(
            lambda w=warps: topk_ascending(scores, k_sel, num_warps=w, method="interp"), reps
        )
    radix, interp = (topk_ascending(scores, k_sel, method=m) for m in ("radix", "interp"))
    parts["topk_interp_equals_radix"] = bool(torch.equal(radix, interp))
    parts["topk_interp_rows_differing"] = [int((radix != interp).any(-1).sum()), radix[..., 0].numel()]
    del radix, interp
    if q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        # the op's sm_90 path: k's block-major copy + its means in one pass, v's copy, q's means (triton_bsa.py)
        from lc_runtime.ops.triton_bsa import blocks_and_means

        parts["time_prep_k_copy_and_means"] = timer(lambda: blocks_and_means(k, lat, CHUNK), reps)
        parts["time_prep_v_copy"] = timer(lambda: blocks_and_means(k, lat, CHUNK, pool=False), reps)
        parts["time_prep_q_means"] = timer(lambda: blocks_and_means(q, lat, CHUNK, store=False), reps)
        parts["time_torch_k_copy"] = timer(lambda: reorder_to_blocks(k, lat).contiguous(), reps)
        fused_k, fused_q = blocks_and_means(k, lat, CHUNK)[1], blocks_and_means(q, lat, CHUNK, store=False)[1]
        parts["prep_means_equal_torch_pooling"] = bool(torch.equal(fused_k, k_mean) and torch.equal(fused_q, q_mean))
        diff = torch.cat([(fused_k != k_mean).flatten(), (fused_q != q_mean).flatten()])
        parts["prep_means_differing"] = [int(diff.sum()), diff.numel()]
        ulp = torch.cat([(fused_k - k_mean).abs().flatten(), (fused_q - q_mean).abs().flatten()])
        rel = ulp / torch.cat([k_mean.abs().flatten(), q_mean.abs().flatten()]).clamp_min(1e-30)
        parts["prep_means_max_rel_diff"] = float(rel.max())  # bf16: one ulp is 2^-8 .. 2^-7 relative
        asc = _topk_ascending(torch.matmul(fused_q, fused_k.transpose(-1, -2)), k_sel)  # as the op selects
        ref = _topk_ascending(scores, k_sel)
        parts["prep_selection_rows_differing"] = [int((asc != ref).any(-1).sum()), asc[..., 0].numel()]
    return parts


def bench_inputs(args, qkv, lat, shape, sweep, timer, gen, results, kind) -> dict:
    """Selection, kernel sweep (each config spot-checked first), pass counts, score order and op on one input set."""
    from lc_runtime.ops import triton_bsa
    from lc_runtime.ops.triton_bsa import auto_kv_passes, bsa_forward

    q, k, v = qkv
    sparsity = shape["sparsity"]
    reps = 2 if args.smoke else (3 if args.quick else 5)
    entry = dict(auto_kv_passes=auto_kv_passes(k))
    idx, counts = select_blocks_raster(q, k, lat, lat, sparsity, None, CHUNK)
    idx_asc = ascending_selection(idx, counts)
    entry["selection_overlap_neighbours"] = selection_overlap(idx, shape["key_blocks"])
    entry["time_selection"] = timer(lambda: select_blocks_raster(q, k, lat, lat, sparsity, None, CHUNK), reps)
    entry["time_selection_unordered"] = timer(
        lambda: select_blocks_raster(q, k, lat, lat, sparsity, None, CHUNK, order="any"), reps
    )
    entry["time_ascending_sort"] = timer(lambda: ascending_selection(idx, counts), reps)
    # the op's selection: ascending indices from one Triton pass over the scores (triton_topk.py); its parts
    sel_asc = lambda: select_blocks_raster(q, k, lat, lat, sparsity, None, CHUNK, order="ascending")  # noqa: E731
    entry["selection_ascending_exact"] = torch.equal(sel_asc()[0], idx_asc)
    entry["time_selection_ascending"] = timer(sel_asc, reps)
    entry.update(selection_parts(q, k, lat, shape["k_sel"], timer, reps))
    q_blocks = [n // c for n, c in zip(lat, CHUNK)]
    unions = {}  # (group_h, group_w) -> (union, bits, union counts), built once per group shape
    for cfg in sweep:
        key = (cfg.group_h, cfg.group_w)
        if cfg.group > 1 and key not in unions:
            unions[key] = group_selection(idx, counts, q_blocks, key)
            entry[f"time_group_union_{key[0]}x{key[1]}"] = timer(
                lambda key=key: group_selection(idx, counts, q_blocks, key), reps
            )
            entry[f"union_size_{key[0]}x{key[1]}"] = unions[key][2].float().mean().item() / shape["k_sel"]
    out = torch.empty_like(q)

    def timed_kernel(cfg, order):
        indices = idx if order == "as_given" else idx_asc
        kw = dict(order=order)
        if cfg.group > 1:  # time the kernel alone: the union is prebuilt (its cost is timed above)
            indices, bits, n = unions[(cfg.group_h, cfg.group_w)]
            kw = dict(bits=bits)
        else:
            n = counts
        fn = lambda: bsa_forward(q, k, v, indices, n, lat, lat, CHUNK, cfg, out=out, **kw)  # noqa: E731
        rec = dict(config=cfg_name(cfg), order="score" if order == "as_given" else "ascending")
        try:
            checked = torch.full_like(q, float("nan"))  # poison: every element must be written
            checked = bsa_forward(q, k, v, indices, n, lat, lat, CHUNK, cfg, out=checked, **kw)
            rec["spot_check"] = spot_check(q, k, v, checked, idx, counts, lat, 4 if args.smoke else 16, gen)
            del checked
            if not rec["spot_check"]["ok"]:
                raise RuntimeError(f"spot check failed: {rec['spot_check']}")
            t = rec["time"] = timer(fn, reps)
            t["tflops"] = shape["flops_selected"] / t["median_s"] / 1e12
            t["kv_gbps"] = shape["kv_bytes_gathered"] / t["median_s"] / 1e9
        except Exception as e:  # a config may not fit (shared memory) or fail: record it, go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"[full:{kind}] {rec['config']} {rec['order']}: {rec.get('time', rec.get('error'))}")
        return rec

    entry["configs"] = [timed_kernel(cfg, "sorted") for cfg in sweep]
    timed = [r for r in entry["configs"] if "time" in r]
    if not timed:
        return entry
    best = min(timed, key=lambda r: r["time"]["median_s"])
    best_cfg = sweep[entry["configs"].index(best)]
    if kind == "iid":
        passes = [timed_kernel(with_passes(best_cfg, p), "sorted") for p in PASS_SWEEP]
        entry["pass_sweep"] = passes
        timed_p = [r for r in passes if "time" in r]
        if timed_p and min(r["time"]["median_s"] for r in timed_p) < best["time"]["median_s"]:
            best = min(timed_p, key=lambda r: r["time"]["median_s"])
            best_cfg = with_passes(best_cfg, PASS_SWEEP[passes.index(best)])
        if best_cfg.group == 1:
            one_pass = dataclasses.replace(with_passes(best_cfg, 1), rotate=0)  # (score order: no rotated walk)
            entry["original_schedule"] = timed_kernel(one_pass, "as_given")
        # rope: every validated config (grouped ones win there) with the iid pass count when it helped
        results["_rope_configs"] = list(dict.fromkeys([best_cfg, *sweep]))
    entry["best_config"] = best["config"]
    entry["op_total_default_config"] = timer(lambda: block_sparse_attention(q, k, v, lat, lat, sparsity), reps)
    # the op with the fastest validated config as its default (selection unordered + sort / union + kernel)
    old = triton_bsa.set_default_config(best_cfg)
    try:
        entry["op_total_best_config"] = timer(lambda: block_sparse_attention(q, k, v, lat, lat, sparsity), reps)
        checked = block_sparse_attention(q, k, v, lat, lat, sparsity)
        entry["op_best_spot_check"] = spot_check(q, k, v, checked, idx, counts, lat, 4 if args.smoke else 16, gen)
        del checked
    finally:
        triton_bsa.set_default_config(old)
    entry["op_best_config"] = best["config"]
    sel_t = entry["time_selection_ascending"]["median_s"]
    if best_cfg.group > 1:
        sel_t += entry[f"time_group_union_{best_cfg.group_h}x{best_cfg.group_w}"]["median_s"]
    entry["total_best_s"] = sel_t + best["time"]["median_s"]
    log(f"[full:{kind}] best {best['config']} {best['time']['median_s']:.4f}s; selection+sort/union {sel_t:.4f}s; "
        f"op with it {entry['op_total_best_config']['median_s']:.4f}s")  # fmt: skip
    return entry


def dense_baselines(q, k, v, timer, reps, dense_flops, device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention
    res = {}
    backends = [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]
    if device != "cuda":
        backends = [("sdpa_math", SDPBackend.MATH)]
    for name, backend in backends:
        try:

            def run(b=backend):
                with sdpa_kernel([b]):
                    sdpa(q, k, v)

            res[name] = timer(run, reps)
            res[name]["tflops"] = dense_flops / res[name]["median_s"] / 1e12
        except Exception as e:
            res[name] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
        log(f"[dense] {name}: {res[name]}")
    from lc_runtime.ops.attention import fa3_interface

    fa3 = fa3_interface()  # fa3-fwd (fa3_fwd_interface) or upstream FA3 (flash_attn_interface)
    try:
        if fa3 is None:
            raise ImportError
        bshd = [x.transpose(1, 2).contiguous() for x in (q, k, v)]  # FA3 wants [B, S, H, D]
        res["fa3"] = timer(lambda: fa3.flash_attn_func(*bshd), reps)
        res["fa3"]["tflops"] = dense_flops / res["fa3"]["median_s"] / 1e12
        bshd.clear()
    except ImportError:
        res["fa3"] = dict(error="neither fa3_fwd_interface nor flash_attn_interface imports")
    except Exception as e:
        res["fa3"] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
    log(f"[dense] fa3: {res['fa3']}")
    return res


# ------------------------------------------------------------------------------------------------ report


def environment(device) -> dict:
    import triton

    env = dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(), device=device)
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                   l2_mb=round(getattr(p, "L2_cache_size", 0) / 2**20, 1), cuda=torch.version.cuda,
                   capability=f"{p.major}.{p.minor}")  # fmt: skip
    else:
        env.update(gpu="cpu (TRITON_INTERPRET=1)")
    return env


def _row(kind, what, t=None, tflops=None, gbps=None, text=None) -> str:
    cells = [kind, what, f"{t:.4f}" if t is not None else (text or ""), f"{tflops:.0f}" if tflops else ""]
    return "| " + " | ".join([*cells, f"{gbps:.0f}" if gbps else ""]) + " |"


def summary_markdown(results) -> str:
    env = results["environment"]
    lines = [
        f"# Block-sparse attention on {env['gpu']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env.get('cuda')}, {env.get('sm_count')} SMs, "
        f"L2 {env.get('l2_mb')} MB; `bench/bench_bsa.py`, {results['date']}.",
        "",
        f"Validation: goldens {'PASS' if results.get('golden_ok') else 'FAIL'}, random shapes "
        f"{'PASS' if results.get('random_ok') else 'FAIL'} (bound: 2x the bf16-torch error vs the fp32 reference).",
    ]
    full = results.get("full", {})
    if "shape" in full:
        sh = full["shape"]
        lines += [
            "",
            f"Shape: B=1, H={sh['heads']}, grid {tuple(sh['latent_shape'])} = {sh['tokens']} tokens, "
            f"D={sh['head_dim']}, bf16, sparsity {sh['sparsity']}: K_sel {sh['k_sel']} of {sh['key_blocks']}.",
            "",
            "| input | what | median s | TFLOP/s (selected) | K/V GB/s |",
            "|---|---|---|---|---|",
        ]
    for kind in ("iid", "rope"):
        e = full.get(kind)
        if not e:
            continue
        lines.append(_row(kind, "selection (pool + scores + top-k)", e["time_selection"]["median_s"]))
        if "time_selection_unordered" in e:
            lines.append(_row(kind, "selection, top-k unsorted", e["time_selection_unordered"]["median_s"]))
        lines.append(_row(kind, "ascending sort of the selection", e["time_ascending_sort"]["median_s"]))
        if "time_selection_ascending" in e:
            same = "same indices as top-k + sort" if e["selection_ascending_exact"] else "**DIFFERS** from top-k + sort"
            what = f"selection, ascending Triton top-k (the op; {same})"
            lines.append(_row(kind, what, e["time_selection_ascending"]["median_s"]))
            parts = [("pool", "pool q and k"), ("scores", "scores (fp32 matmul)")]
            parts += [("scores_op", "scores as the op computes them (bf16 GEMM, fp32 out, on CUDA)")]
            parts += [("topk_unsorted", "torch.topk")]
            default = e.get("topk_default_method", "radix")
            parts += [("topk_ascending_triton", f"Triton ascending top-k (the op's: {default} search, its warps)")]
            parts += [(f"topk_ascending_triton_w{w}", f"Triton ascending top-k, radix search, {w} warps")
                      for w in TOPK_WARPS]  # fmt: skip
            parts += [(f"topk_ascending_triton_interp_w{w}", f"Triton ascending top-k, interpolation search, {w} warps")
                      for w in TOPK_INTERP_WARPS]  # fmt: skip
            for key, what in parts:
                if f"time_{key}" in e:  # (results of older runs lack the interpolation search)
                    lines.append(_row(kind, f"  part: {what}", e[f"time_{key}"]["median_s"]))
            if "topk_interp_equals_radix" in e:
                rows, total = e["topk_interp_rows_differing"]
                same = "yes" if e["topk_interp_equals_radix"] else f"**NO**: {rows} of {total} rows differ"
                lines.append(_row(kind, "  Triton top-k: interpolation search's indices == radix search's", text=same))
        if "time_prep_k_copy_and_means" in e:
            nd, nm = e.get("prep_means_differing", (0, 0))
            same = "same means as" if e["prep_means_equal_torch_pooling"] else f"{nd} of {nm} means differ from"
            prep = [("prep_k_copy_and_means", f"k: block-major copy + means, one pass ({same} PyTorch pooling)")]
            prep += [("prep_v_copy", "v: block-major copy (timed on k: same shape)"), ("prep_q_means", "q: means")]
            prep += [("torch_k_copy", "for comparison: k's block-major copy by PyTorch (permute + contiguous)")]
            for key, what in prep:
                lines.append(_row(kind, f"op's sm_90 prep: {what}", e[f"time_{key}"]["median_s"]))
            if "prep_selection_rows_differing" in e:
                rows, total = e["prep_selection_rows_differing"]
                what = f"selection rows that differ: fused-prep means vs PyTorch pooling (max rel diff of a mean " \
                       f"{e['prep_means_max_rel_diff']:.2e})"  # fmt: skip
                lines.append(_row(kind, what, text=f"{rows} of {total}"))
        for key in [x for x in e if x.startswith("time_group_union_")]:
            g = key.rsplit("_", 1)[1]
            lines.append(_row(kind, f"group union {g} (sort + merge)", e[key]["median_s"]))
            lines.append(_row(kind, f"union size {g} / K_sel", text=f"{e[f'union_size_{g}']:.3f}"))
        for r in e.get("configs", []) + e.get("pass_sweep", []) + [e.get("original_schedule") or {}]:
            if not r:
                continue
            what = f"kernel {r['config']} ({r['order']})"
            if "time" in r:
                lines.append(_row(kind, what, r["time"]["median_s"], r["time"]["tflops"], r["time"]["kv_gbps"]))
            else:
                lines.append(_row(kind, what, text=r.get("error", "?")[:70]))
        if "op_total_default_config" in e:
            lines.append(_row(kind, "op total (default config)", e["op_total_default_config"]["median_s"]))
            lines.append(_row(kind, f"selection + sort/union + best kernel ({e['best_config']})", e["total_best_s"]))
        if "op_total_best_config" in e:
            ok = "spot check PASS" if e["op_best_spot_check"]["ok"] else "spot check FAIL"
            what = f"op total with the best config ({e['op_best_config']}; {ok})"
            lines.append(_row(kind, what, e["op_total_best_config"]["median_s"]))
        for name, r in e.get("dense", {}).items():
            if "median_s" in r:
                lines.append(_row(kind, f"dense {name}", r["median_s"], r["tflops"]))
            else:
                lines.append(_row(kind, f"dense {name}", text=r["error"][:70]))
        lines.append(_row(kind, "neighbour selection overlap (share)", text=f"{e['selection_overlap_neighbours']:.3f}"))
    for kind in ("iid", "rope"):
        if full.get(kind, {}).get("best_config"):
            lines += ["", f"Fastest validated kernel config on {kind} inputs: `{full[kind]['best_config']}`."]
    if full.get("iid", {}).get("best_config"):
        lines += ["", f"Fastest kernel config on iid inputs: `{full['iid']['best_config']}` (candidate for "
                  "`TMA_CONFIG` / `DEFAULT_CONFIG` in lc_runtime/ops/triton_bsa.py; 'auto' passes = "
                  f"{full['iid']['auto_kv_passes']} here)."]  # fmt: skip
    lines += ["", "Reference points (DESIGN.md, H200): original BSA 0.106 s, dense FA3 0.666 s; target <= 0.060 s."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def install_interpreter_shims():
    """CPU smoke runs only: the Triton-interpreter workarounds of the kernel tests (tests/ops/interpreter_shims.py)."""
    sys.path.insert(0, str(REPO / "tests/ops"))
    from interpreter_shims import install_interpreter_shims as install

    install()


def _tma_configs(text: str) -> list[tuple]:
    """'1,4,2,128;1,4,3,0' -> [(1, 4, 2, 128), (1, 4, 3, None)] (n_sub, warps, stages, maxnreg; 0 = no cap)."""
    try:
        rows = [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]
    except ValueError:
        rows = []
    if not rows or any(len(r) != 4 for r in rows):
        raise argparse.ArgumentTypeError(f"expected 'n_sub,warps,stages,maxnreg;...', got {text!r}")
    return [(n, w, st, r or None) for n, w, st, r in rows]


def _gluon_configs(text: str) -> list[tuple]:
    """'2,3x3,v2:2x3,v3:3r2,v3:3r2c' -> [(1, 2, 1, 0, True), (1, 3, 3, 0, True), (2, 2, 3, 0, True),
    (3, 3, 1, 2, True), (3, 3, 1, 2, False)] (kernel version, ring depth, key-range passes, rotated walks: R programs
    per SM, 0 = none, rotation takes one pass; K/V boxes from the raster layout, or with a trailing 'c' from
    block-major copies)."""
    rows = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            copies = part.endswith("c")
            version, _, rest = part.removesuffix("c").rpartition(":")
            rest, _, rotate = rest.partition("r")
            stages, passes = (int(v) for v in (rest + "x1").split("x")[:2])
            rows.append((int(version.lstrip("v") or 1), stages, passes, int(rotate or 0), not copies))
    except ValueError:
        rows = []
    if not rows or any(v not in (1, 2, 3, 4) or st < 2 or p < 1 or r < 0 or (r and p > 1) for v, st, p, r, _ in rows):
        raise argparse.ArgumentTypeError(
            f"expected '[v1:..v4:]stages[xpasses|rR][c],...' (stages >= 2; rotation R in one pass), got {text!r}"
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench/results"))
    parser.add_argument("--quick", action="store_true", help="3 configs, fewer reps")
    parser.add_argument(
        "--sweep", choices=("gathered", "tma", "all"), default="all",
        help="kernel configs: the gathered-load sweep, the TMA variant (beside the default gathered config), or both",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="toy sizes; CPU + TRITON_INTERPRET=1 without a GPU")
    parser.add_argument(
        "--tma-configs", type=_tma_configs, default=None, metavar="N,W,S,R;...",
        help="TMA configs to sweep instead of the built-in lists: n_sub, warps, stages, maxnreg (0: none) per config",
    )  # fmt: skip
    parser.add_argument(
        "--gluon", type=_gluon_configs, default=[], metavar="[vV:]S[xP],...",
        help="also sweep the Gluon kernel (lc_runtime/ops/gluon_bsa.py): version V (1), ring depth S, passes P (1) "
        "or rotated walks (rR: R programs per SM per turn, one pass); K/V boxes from the raster layout (5-D TMA), or "
        "with a trailing c from block-major copies",
    )  # fmt: skip
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
            sys.exit("no CUDA device: run on the GPU machine, or use --smoke with TRITON_INTERPRET=1")
        install_interpreter_shims()
    from lc_runtime.ops.triton_bsa import BsaKernelConfig

    quick = args.quick or args.smoke
    sweep = QUICK_SWEEP if quick else SWEEP
    configs = [BsaKernelConfig(n_sub=a, num_warps=b, num_stages=c, group_h=g[0], group_w=g[1])
               for a, b, c, *g in ((*x, 1, 1) if len(x) == 3 else x for x in sweep)]  # fmt: skip
    tma = [BsaKernelConfig(n_sub=n, num_warps=w, num_stages=s, tma=True, maxnreg=r, kv_passes=1)
           for n, w, s, r in (args.tma_configs or (QUICK_TMA_SWEEP if quick else TMA_SWEEP))]  # fmt: skip
    tma += [BsaKernelConfig(num_stages=st, tma=True, kv_passes=p, gluon=ver, rotate=r, raster=ra)
            for ver, st, p, r, ra in args.gluon]  # fmt: skip
    configs = {"gathered": configs, "tma": [BsaKernelConfig(), *tma], "all": configs + tma}[args.sweep]
    env = environment(device)
    tag = re.sub(r"[^a-z0-9]+", "_", env["gpu"].lower().replace("nvidia", "")).strip("_") or "gpu"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(environment=env, date=time.strftime("%Y-%m-%d %H:%M"), sweep=[cfg_name(c) for c in configs])

    def save():
        dump = {k: v for k, v in results.items() if not k.startswith("_")}
        (out_dir / f"bsa_{tag}.json").write_text(json.dumps(dump, indent=1))
        (out_dir / f"bsa_{tag}.md").write_text(summary_markdown(results))

    log(f"env: {env}")
    t0 = time.time()
    results["golden"] = validate_goldens(configs, device)
    # configs that failed to compile or launch are left out of the timings, not counted as wrong results
    results["golden_ok"] = all(r["ok"] for r in results["golden"] if "error" not in r)
    for r in results["golden"]:
        log(f"[golden] {r['case']} {r['config']} passes={r['passes']}: ok={r['ok']} sel={r['selection_exact']} "
            f"max {r['max_err']:.2e} (bf16 {r['max_bf16']:.2e}) vs original {r['max_vs_original']:.2e}")  # fmt: skip
    results["random"] = validate_random(configs, device, args.smoke)
    results["random_ok"] = all(r["ok"] for r in results["random"] if "error" not in r)
    results["failed_to_run"] = sorted({r["config"] for r in results["golden"] + results["random"] if "error" in r})
    for r in results["random"]:
        log(f"[random] {r['case']} {r['config']} passes={r['passes']}: ok={r['ok']} "
            f"max {r['max_err']:.2e} (bf16 {r['max_bf16']:.2e})")  # fmt: skip
    save()
    checks = results["golden"] + results["random"]
    valid = [c for c in configs if all(r["ok"] for r in checks if r["config"] == cfg_name(c))]
    if len(valid) < len(configs):
        log(f"configs failing validation (not timed): {[cfg_name(c) for c in configs if c not in valid]}")
    if valid:
        bench_full(args, valid, device, results, save)
    results["wall_s"] = time.time() - t0
    save()
    log(summary_markdown(results))
    if not (results["golden_ok"] and results["random_ok"]):
        sys.exit("VALIDATION FAILED (see the JSON)")


if __name__ == "__main__":
    main()
