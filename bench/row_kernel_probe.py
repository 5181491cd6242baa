"""Launch-shape sweep of the DiT's row kernels at the real 480p batch-2 shape (GPU only): ``head_norm_rope``
(rows per program, warps) and ``norm_rows`` (token rows per program, warps). The recorded H200 run
(results/row_kernel_probe_nvidia-h200.json) also timed a head_norm_rope variant that loaded one cos/sin row per
program ("same_token"); it was slower and is gone from the kernel.
Prints and writes bandwidth per variant, to choose the launch constants in lc_runtime/ops/triton_kernels.py.

    python bench/row_kernel_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

from lc_runtime.ops import triton_kernels as K


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    B, N, H, D, C, T = 2, 37440, 32, 128, 4096, 24
    dev = "cuda"
    qkv = torch.randn(B, N, 3, H, D, device=dev, dtype=torch.bfloat16)
    q = qkv[:, :, 0].transpose(1, 2)  # [B, H, N, D] strided view of the GEMM output
    out = torch.empty(B, N, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
    w = torch.randn(D, device=dev, dtype=torch.bfloat16)
    cos, sin = torch.randn(N, D, device=dev), torch.randn(N, D, device=dev)
    rows = B * H * N
    res = []

    def hnr(block_r, warps):
        K._head_norm_rope_kernel[(triton.cdiv(rows, block_r),)](
            q, w, out, cos, sin, rows, N, H, D,
            q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2), cos.stride(0), 1e-6,
            ROPE=True, BLOCK_R=block_r, BLOCK_D=D, num_warps=warps,
        )  # fmt: skip

    ref = out.clone()
    hnr(16, 4)
    ref.copy_(out)
    moved = 2 * rows * D * 2  # read q once, write once (bf16)
    for block_r in (16, 32, 64, 128):
        for warps in (2, 4, 8):
            hnr(block_r, warps)
            ok = bool(torch.equal(out, ref))
            ms = triton.testing.do_bench(
                lambda br=block_r, nw=warps: hnr(br, nw), warmup=25, rep=200, return_mode="median"
            )
            res.append({"kernel": "head_norm_rope", "block_r": block_r, "warps": warps, "ms": ms,
                        "tb_s": moved / ms / 1e9, "equal": ok})  # fmt: skip
            print(res[-1], flush=True)
    x = torch.randn(B, N, C, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    shift, scale = torch.randn(B, T, 1, C, device=dev), torch.randn(B, T, 1, C, device=dev)
    moved = 2 * B * N * C * 2

    def nr(rows_pp, warps):
        K._norm_rows_kernel[(B * N // rows_pp,)](
            x, y, x, x, shift, scale, N, C, N // T,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), shift.stride(0), shift.stride(1),
            scale.stride(0), scale.stride(1), 1e-6,
            AFFINE=False, MODULATE=True, ROWS=rows_pp, BLOCK_C=C, num_warps=warps,
        )  # fmt: skip

    nr(1, 16)
    ref = y.clone()
    for rows_pp in (1, 2, 4, 8):
        for warps in (8, 16, 32):
            if rows_pp * C > 64 * 32 * warps:
                continue
            nr(rows_pp, warps)
            ok = bool(torch.equal(y, ref))
            ms = triton.testing.do_bench(
                lambda r=rows_pp, nw=warps: nr(r, nw), warmup=25, rep=200, return_mode="median"
            )
            res.append({"kernel": "norm_rows modulate", "rows": rows_pp, "warps": warps, "ms": ms,
                        "tb_s": moved / ms / 1e9, "equal": ok})  # fmt: skip
            print(res[-1], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name().replace(" ", "-").lower()
    (Path(args.out) / f"row_kernel_probe_{name}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
