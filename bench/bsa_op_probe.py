"""The whole block-sparse attention op at the 720p refine shape (32 heads x 168,960 tokens, sparsity 0.9375, bf16),
its parts and its variants, timed side by side in one run (bench_bsa.py's Timer: L2 flushed before each rep; rounds
alternate the variants so that clock drift hits them alike):

- the op as it runs by default, with key-range passes instead of rotated walks (``GLUON_DETERMINISTIC_CONFIG``,
  what deterministic mode runs), with session 14's selection prep (q and k means from one program per block, the
  top-k row in one tile), with block-major K/V copies instead of raster reads (``raster=False``), with the other
  Gluon version (3 against the default 4, which adds a load warp), and on the DiT's [B, S, H, D] layout (q, k, v
  transposed views);
- its parts: k's means, k's copy + means, v's copy, q's means (also in other runs of blocks, and one program per
  block), the scores as a bf16 GEMM with fp32 output (the op) and as an fp32 GEMM, the op's top-k and the other
  row layout (one tile or two) at 2, 4 and 8 warps, each top-k method (``--no-sweep``: skipped), the kernel alone
  (raster reads; block-major copies; the other Gluon version);
- checks: the selections from the bf16-GEMM and the fp32-GEMM scores (rows that differ), the means that differ from
  torch's pooling (fp32 sums in another order), the top-k variants' indices (equal), and how far two runs of the op
  apart differ (rotated walks: the bits depend on timing).

Inputs: "iid" (standard normal q, k, v) and "rope" (bench_bsa.py's RoPE-structured heads). ``--only REGEX`` times
only the rows whose name matches (e.g. the two Gluon versions over many rounds). Writes
``<out>/bsa_op_probe_<gpu>.json`` and ``.md``.

    python bench/bsa_op_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bsa import Timer, rope_inputs  # noqa: E402
from common import REPO, env_info, gpu_slug  # noqa: E402

sys.path.insert(0, str(REPO))
from lc_runtime.ops import triton_bsa, triton_topk  # noqa: E402

bsa_mod = importlib.import_module("lc_runtime.ops.block_sparse_attention")  # (the package exports the op's name)

GRID, HEADS, D, SPARSITY = (48, 44, 80), 32, 128, 0.9375
CHUNK = (4, 4, 4)
TOPK_WARPS = (2, 8, 16)  # besides the default
TOPK_GROUPS = (0, 16, 32, 64)  # the interpolation search's column groups (triton_topk.INTERP_GROUP)
MEANS_RUNS = (0, 1, 2, 8)  # besides the default (triton_bsa.MEANS_RUN); 0: one program per block


def op_variants(q, k, v):
    """name -> a call of the op in that variant (module switches set around the call, restored after)."""
    run = lambda: bsa_mod.block_sparse_attention(q, k, v, GRID, GRID, SPARSITY)  # noqa: E731

    def with_config(cfg, *qkv):
        def call():
            old = triton_bsa.set_default_config(cfg)
            try:
                return bsa_mod.block_sparse_attention(*(qkv or (q, k, v)), GRID, GRID, SPARSITY)
            finally:
                triton_bsa.set_default_config(old)

        return call

    def with_session14_prep():  # the means-alone pass as one program per block, the top-k row in one tile
        old = triton_bsa.MEANS_RUN, triton_topk.INTERP_SPLIT
        triton_bsa.MEANS_RUN, triton_topk.INTERP_SPLIT = 0, False
        try:
            return run()
        finally:
            triton_bsa.MEANS_RUN, triton_topk.INTERP_SPLIT = old

    cfg = triton_bsa.default_config(q)
    copies = dataclasses.replace(cfg, raster=False)
    other = other_version(cfg)
    # the DiT's layout: [B, S, H, D] buffers seen as [B, H, S, D] (strided K/V boxes: 256-byte rows 8 KB apart)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    # the DiT's own: q and k [B, S, H, D] (its fused norm + RoPE kernel's output), v a view of the QKV GEMM's output
    qkv = torch.stack([q, k, v], dim=1).permute(0, 3, 1, 2, 4).contiguous()  # [B, S, 3, H, D]
    v_dit = qkv[:, :, 2].transpose(1, 2)
    del qkv
    return {
        "op (default)": run,
        "op, key-range passes": with_config(triton_bsa.GLUON_DETERMINISTIC_CONFIG),
        "op, session 14's prep (means: one program per block; top-k: one tile)": with_session14_prep,
        f"op, block-major K/V copies ({cfg_label(copies)})": with_config(copies),
        f"op, gluon={other.gluon} ({cfg_label(other)})": with_config(other),
        # (the default reads K/V boxes from the raster layout: its rows are the raster-read rows of each layout)
        "op on [B, S, H, D] buffers": lambda: bsa_mod.block_sparse_attention(qt, kt, vt, GRID, GRID, SPARSITY),
        "op on [B, S, H, D] buffers, block-major copies": with_config(copies, qt, kt, vt),
        "op on the DiT's buffers (v in the QKV output)": lambda: bsa_mod.block_sparse_attention(
            qt, kt, v_dit, GRID, GRID, SPARSITY
        ),
        "op on the DiT's buffers, block-major copies": with_config(copies, qt, kt, v_dit),
        f"op on the DiT's buffers, gluon={other.gluon}": with_config(other, qt, kt, v_dit),
    }


def parts(q, k, v, sweep=True):
    """name -> a call of one step of the op, as the op runs it, plus the fp32-GEMM scores and every top-k method."""
    k_sel = bsa_mod.num_selected_blocks((q.shape[2] // 64), SPARSITY)
    k_mean = triton_bsa.blocks_and_means(k, GRID, CHUNK)[1]
    q_mean = triton_bsa.blocks_and_means(q, GRID, CHUNK, store=False)[1]
    scores = bsa_mod.block_scores(q_mean, k_mean, q.dtype)
    idx = triton_topk.topk_ascending(scores, k_sel, torch.int32)
    counts = torch.full(idx.shape[:-1], k_sel, dtype=torch.int32, device=q.device)
    kv = tuple(triton_bsa.blocks_and_means(x, GRID, CHUNK, pool=False)[0] for x in (k, v))
    out = torch.empty_like(q)
    cfg = triton_bsa.default_config(q)
    copies = dataclasses.replace(cfg, raster=False)
    other = other_version(cfg)
    calls = {
        "prep: k means": lambda: triton_bsa.blocks_and_means(k, GRID, CHUNK, store=False),
        "prep: k copy + means": lambda: triton_bsa.blocks_and_means(k, GRID, CHUNK),
        "prep: v copy": lambda: triton_bsa.blocks_and_means(v, GRID, CHUNK, pool=False),
        "prep: q means": lambda: triton_bsa.blocks_and_means(q, GRID, CHUNK, store=False),
        "scores: bf16 GEMM, fp32 out (the op)": lambda: bsa_mod.block_scores(q_mean, k_mean, q.dtype),
        "scores: fp32 GEMM": lambda: bsa_mod.block_scores(q_mean, k_mean, None),
        f"kernel alone ({cfg_label(cfg)})": lambda: triton_bsa.bsa_forward(
            q, k, v, idx, counts, GRID, GRID, CHUNK, cfg, out=out, order="sorted"
        ),
        f"kernel alone ({cfg_label(copies)}, copies made before)": lambda: triton_bsa.bsa_forward(
            q, k, v, idx, counts, GRID, GRID, CHUNK, copies, out=out, order="sorted", kv_blocks=kv
        ),
        f"kernel alone ({cfg_label(other)})": lambda: triton_bsa.bsa_forward(
            q, k, v, idx, counts, GRID, GRID, CHUNK, other, out=out, order="sorted"
        ),
    }
    for run in MEANS_RUNS:
        name = "prep: q means, " + (f"runs of {run} blocks" if run else "one program per block (before session 15)")
        calls[name] = lambda r=run: triton_bsa.blocks_and_means(q, GRID, CHUNK, store=False, run=r)
    split = not triton_topk.INTERP_SPLIT  # the interpolation search's other row layout (two tiles or one)
    calls["top-k: interp (the op's)"] = lambda: triton_topk.topk_ascending(scores, k_sel, torch.int32)
    for warps in (None, 2, 8):
        calls[f"top-k: interp, split={split}" + (f", {warps} warps" if warps else "")] = lambda w=warps: (
            triton_topk.topk_ascending(scores, k_sel, torch.int32, num_warps=w, split=split)
        )
    for method in triton_topk.METHODS if sweep else ():
        for warps in (None, *TOPK_WARPS):
            name = f"top-k: {method}" + (f", {warps} warps" if warps else "")
            calls[name] = lambda m=method, w=warps: triton_topk.topk_ascending(
                scores, k_sel, torch.int32, num_warps=w, method=m
            )
    for warps in (4, 8) if sweep else ():  # the interpolation search's row layout
        for group in TOPK_GROUPS:
            calls[f"top-k: interp, {warps} warps, group {group}"] = lambda w=warps, g=group: triton_topk.topk_ascending(
                scores, k_sel, torch.int32, num_warps=w, method="interp", group=g
            )
    checks = dict(k_sel=k_sel)
    torch_means = bsa_mod.raster_block_means(q, GRID, CHUNK)
    fp32_idx = triton_topk.topk_ascending(bsa_mod.block_scores(q_mean, k_mean, None), k_sel, torch.int32)
    checks["selection rows differing, bf16-GEMM vs fp32-GEMM scores"] = [
        int((fp32_idx != idx).any(-1).sum()),
        idx[..., 0].numel(),
    ]
    for name, fn in calls.items():
        if name.startswith("prep: q means"):  # the order of the fp32 sums differs: a rare one-ulp difference
            checks[f"{name}: means differing from torch's pooling"] = int((fn()[1] != torch_means).sum())
        if name.startswith("top-k"):
            checks[f"{name}: same indices as the op's"] = bool(torch.equal(fn(), idx))
    return calls, checks


def other_version(cfg):
    """The Gluon kernel version the default is compared with: 3 against 4 (a load warp of its own), else 4."""
    return dataclasses.replace(cfg, gluon=3 if cfg.gluon == 4 else 4)


def cfg_label(cfg) -> str:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    default = triton_bsa.BsaKernelConfig()
    return " ".join(f"{k}={v}" for k, v in fields.items() if v != getattr(default, k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--series", type=int, default=0, help="then time the op N calls in a row (each call's time)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the top-k sweep (warps, groups, radix)")
    ap.add_argument("--only", default=None, help="time only the rows whose name matches this regular expression")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    timer = Timer("cuda")
    gen = torch.Generator(device="cuda").manual_seed(2)
    seq = GRID[0] * GRID[1] * GRID[2]
    payload = dict(env=env_info(), grid=GRID, heads=HEADS, head_dim=D, sparsity=SPARSITY, inputs={})
    lines = [f"# Block-sparse attention op and its parts on {payload['env'].get('gpu', 'GPU')}", ""]
    lines += [f"`bench/bsa_op_probe.py`; {json.dumps(payload['env'])}", ""]
    lines += [f"Shape: B=1, H={HEADS}, grid {GRID} = {seq} tokens, D={D}, bf16, sparsity {SPARSITY}.", ""]
    for kind in ("iid", "rope"):
        if kind == "iid":
            q, k, v = (torch.randn(1, HEADS, seq, D, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in "qkv")
        else:
            q, k, v = rope_inputs(HEADS, GRID, D, "cuda", gen)
        calls, checks = parts(q, k, v, sweep=not args.no_sweep)
        calls = {**op_variants(q, k, v), **calls}
        calls = {name: fn for name, fn in calls.items() if args.only is None or re.search(args.only, name)}
        times = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, fn in calls.items():
                times[name].append(timer(fn, args.reps)["median_s"])
        first, second = (bsa_mod.block_sparse_attention(q, k, v, GRID, GRID, SPARSITY) for _ in range(2))
        checks["op: max |difference| between two runs"] = (first.float() - second.float()).abs().max().item()
        for name, fn in calls.items():  # the other layouts and configs give the same result up to fp32 rounding
            if name.startswith("op,") or name.startswith("op on"):
                checks[f"{name}: max |difference| from the op"] = (fn().float() - first.float()).abs().max().item()
        rows = {name: dict(median_s=sorted(ts)[len(ts) // 2], min_s=min(ts), rounds=ts) for name, ts in times.items()}
        if args.series:  # call to call: is the op's time one number, or does it jump between calls?
            for name in ("op (default)", "op on the DiT's buffers (v in the QKV output)"):
                series = timer(calls[name], args.series)["times"]
                checks[f"{name}: {args.series} calls in a row, s"] = [round(t, 5) for t in series]
        payload["inputs"][kind] = dict(times=rows, checks=checks)
        lines += [f"## {kind}", "", "| what | median s | min s |", "|---|---|---|"]
        lines += [f"| {name} | {r['median_s']:.4f} | {r['min_s']:.4f} |" for name, r in rows.items()]
        lines += ["", *(f"- {name}: {value}" for name, value in checks.items()), ""]
        print("\n".join(lines[-len(rows) - len(checks) - 5 :]), flush=True)
        del q, k, v, first, second, calls
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bsa_op_probe_{gpu_slug()}.json").write_text(json.dumps(payload, indent=1))
    (out / f"bsa_op_probe_{gpu_slug()}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
