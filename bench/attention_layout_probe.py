"""Does the layout of q, k, v change FlashAttention-3's time at the DiT's self-attention shape?

The fast path hands FA3 q and k written [B, N, H, D] by the q/k norm + RoPE kernel and v as a strided view of the
fused qkv GEMM output [B, N, 3, H, D] (row stride 3C). The kernel-bound floor times FA3 on three contiguous
[B, N, H, D] tensors. This probe times, interleaved in one process (batch ``--batch`` x 37,440 tokens, 32 heads):

  contiguous   q, k, v each [B, N, H, D] contiguous (the floor's inputs)
  v_strided    q, k contiguous, v a view of a [B, N, 3, H, D] buffer (the fast path)
  all_strided  q, k, v all views of one [B, N, 3, H, D] buffer

Writes ``<out>/attention_layout_probe_<gpu>.json``. ~20 s on an H200.

    python bench/attention_layout_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import cuda_times, env_info, gpu_slug, median

from lc_runtime.ops import attention as A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=37440)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    backend = A.select_attention_backend(args.attention, "cuda")
    B, N, H, D = args.batch, args.tokens, 32, 128
    g = torch.Generator("cuda").manual_seed(0)
    packed = torch.randn(B, N, 3, H, D, device="cuda", generator=g, dtype=torch.bfloat16)
    views = [packed[:, :, i].transpose(1, 2) for i in range(3)]  # [B, H, N, D], row stride 3·H·D
    dense = [torch.empty(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    for d, v in zip(dense, views):
        d.copy_(v)
    variants = {
        "contiguous": (dense[0], dense[1], dense[2]),
        "v_strided": (dense[0], dense[1], views[2]),
        "all_strided": tuple(views),
    }
    outs = {}
    for name, (q, k, v) in variants.items():
        outs[name] = A.attention_with(backend, q, k, v)
    torch.cuda.synchronize()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (q, k, v) in variants.items():
            times[name] += cuda_times(lambda q=q, k=k, v=v: A.attention_with(backend, q, k, v), 3)
    med = {n: median(ts) for n, ts in times.items()}
    rec = {
        "env": env_info(),
        "backend": backend,
        "shape": {"batch": B, "tokens": N, "heads": H, "head_dim": D},
        "seconds": times,
        "median_s": med,
        "ratio_to_contiguous": {n: s / med["contiguous"] for n, s in med.items()},
        "bitwise_equal_to_contiguous": {n: bool(torch.equal(o, outs["contiguous"])) for n, o in outs.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"attention_layout_probe_{gpu_slug()}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec[k] for k in ("median_s", "ratio_to_contiguous", "bitwise_equal_to_contiguous")}, indent=1))


if __name__ == "__main__":
    main()
