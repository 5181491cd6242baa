"""Does running a CFG batch's two entries on two CUDA streams hide the memory-bound kernels behind the other's GEMMs?

One process, full-width LongCat DiT of ``--depth`` blocks (random bf16 weights), fast path (fused kernels, best
attention backend), 480p x 93 frames. Each variant is one CUDA graph of one forward; rounds interleave the variants
so clock and power drift hit them alike:

  b2        the batch of two as one forward (what the runtime does)
  seq2      the two entries as two batch-1 forwards one after the other, one stream
  split2    the two batch-1 forwards on two streams (forked and joined inside the graph)

Writes ``<out>/stream_split_probe_<gpu>.json`` and prints medians and ratios. ~1 minute on an H200.

    python bench/stream_split_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from common import build_dit, cuda_times, env_info, gpu_slug, median

from lc_runtime.config import LONGCAT_13B
from lc_runtime.ops.attention import select_attention_backend


def capture(fn):
    """A CUDA graph of ``fn`` (after two eager warm-up calls on a side stream) and its static output."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    backend = select_attention_backend(args.attention, "cuda")
    cfg = replace(LONGCAT_13B, depth=args.depth)
    dit = build_dit(cfg).use_kernels("triton", attention=backend)
    T, H, W = 24, 30, 52
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 16, T, 2 * H, 2 * W, device="cuda", generator=g, dtype=torch.bfloat16)
    t = torch.full((2,), 700.0, device="cuda")
    y = torch.randn(2, 1, 512, cfg.caption_channels, device="cuda", generator=g, dtype=torch.bfloat16)
    mask = torch.ones(2, 512, dtype=torch.long, device="cuda")
    ctx2 = dit.prepare_text(y, mask)
    ctx1 = [dit.prepare_text(y[i : i + 1], mask[i : i + 1]) for i in range(2)]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]

    def one(i):
        return dit(x[i : i + 1], t[i : i + 1], text_context=ctx1[i])

    def b2():
        return dit(x, t, text_context=ctx2)

    def seq2():
        return torch.cat([one(0), one(1)])

    def split2():
        main_stream = torch.cuda.current_stream()
        outs = []
        for i, s in enumerate(streams):
            s.wait_stream(main_stream)
            with torch.cuda.stream(s):
                outs.append(one(i))
        for s in streams:
            main_stream.wait_stream(s)
        return torch.cat(outs)

    variants = {"b2": b2, "seq2": seq2, "split2": split2}
    graphs, peaks = {}, {}
    with torch.no_grad():
        for name, fn in variants.items():
            torch.cuda.reset_peak_memory_stats()
            graphs[name] = capture(fn)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (gr, _) in graphs.items():
                times[name] += cuda_times(gr.replay, 2)
        ref = graphs["b2"][1].float()
        diffs = {n: (graphs[n][1].float() - ref).abs().max().item() for n in variants}
    med = {n: median(ts) for n, ts in times.items()}
    rec = {
        "env": env_info(),
        "backend": backend,
        "depth": args.depth,
        "tokens": T * H * W,
        "seconds": times,
        "median_s": med,
        "per_block_ms": {n: 1e3 * s / args.depth for n, s in med.items()},
        "ratio_to_b2": {n: s / med["b2"] for n, s in med.items()},
        "max_abs_diff_to_b2": diffs,
        "graph_capture_peak_gib": peaks,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"stream_split_probe_{gpu_slug()}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec[k] for k in ("median_s", "per_block_ms", "ratio_to_b2", "max_abs_diff_to_b2")}, indent=1))


if __name__ == "__main__":
    main()
