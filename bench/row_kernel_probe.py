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


def sweep(res: list, kernel: str, launch, out: torch.Tensor, reference: tuple, configs, names, *, moved: int) -> None:
    """Time ``launch(*config)`` for every config (median of do_bench), checking that each writes into ``out`` the
    same bits as ``launch(*reference)``; appends a record per config to ``res`` (``moved``: bytes per launch)."""
    launch(*reference)
    ref = out.clone()
    for config in configs:
        launch(*config)
        ok = bool(torch.equal(out, ref))
        ms = triton.testing.do_bench(lambda c=config: launch(*c), warmup=25, rep=200, return_mode="median")
        res.append({"kernel": kernel, **dict(zip(names, config)), "ms": ms, "tb_s": moved / ms / 1e9, "equal": ok})
        print(res[-1], flush=True)


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

    configs = [(block_r, warps) for block_r in (16, 32, 64, 128) for warps in (2, 4, 8)]
    sweep(res, "head_norm_rope", hnr, out, (16, 4), configs, ("block_r", "warps"), moved=2 * rows * D * 2)
    x = torch.randn(B, N, C, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    shift, scale = torch.randn(B, T, 1, C, device=dev), torch.randn(B, T, 1, C, device=dev)

    def nr(rows_pp, warps):
        K._norm_rows_kernel[(B * N // rows_pp,)](
            x, y, x, x, shift, scale, N, C, N // T,
            x.stride(0), x.stride(1), y.stride(0), y.stride(1), shift.stride(0), shift.stride(1),
            scale.stride(0), scale.stride(1), 1e-6,
            AFFINE=False, MODULATE=True, ROWS=rows_pp, BLOCK_C=C, num_warps=warps,
        )  # fmt: skip

    configs = [(r, warps) for r in (1, 2, 4, 8) for warps in (8, 16, 32) if r * C <= 64 * 32 * warps]
    sweep(res, "norm_rows modulate", nr, y, (1, 16), configs, ("rows", "warps"), moved=2 * B * N * C * 2)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name().replace(" ", "-").lower()
    (Path(args.out) / f"row_kernel_probe_{name}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
