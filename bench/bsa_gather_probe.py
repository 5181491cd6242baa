"""How fast can a GPU gather the K/V tiles of block-sparse attention at all? A ceiling for bench_bsa.py's kernel.

The BSA kernel at the 720p refine shape (32 heads x 168,960 tokens, 165 of 2640 key blocks per query block) must
read 2 x 165 x 16 KiB of K/V per (query block, head): 456 GB in all. This probe runs the same gather with the
attention arithmetic left out (each program sums the tiles it loads into registers and writes one tile at the
end), so its time is a lower bound for any kernel that reads every selected tile once per query block:

- ``raster``: tiles gathered from the raster layout exactly as the kernel does (16 runs of 4 tokens per 3-D block);
- ``blockmajor``: the same tiles stored contiguously (16 KiB each), as after a reorder copy;
- ``l2``: block-major tiles from a K/V slice small enough to stay in the L2 (random blocks of the first 8 MB).

Selections are iid random (what bench_bsa.py's "iid" input gives). Writes ``<out>/bsa_gather_probe.json``.

    python bench/bsa_gather_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cuda_times, median  # noqa: E402


@triton.jit
def _gather_sum(
    K, V, IDX, O, seq, grid_h, grid_w, blocks_h, blocks_w, N_SEL: tl.constexpr, RASTER: tl.constexpr, D: tl.constexpr
):
    qb = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, 64)
    offs_d = tl.arange(0, D)
    if RASTER:  # row r of a 4x4x4 block: token (r // 16, (r // 4) % 4, r % 4) of the chunk
        rows_in_block = ((r // 16) * grid_h + (r // 4) % 4) * grid_w + r % 4
    else:
        rows_in_block = r
    acc = tl.zeros([64, D], tl.float32)
    idx_row = IDX + (h * tl.num_programs(0) + qb) * N_SEL
    for i in range(0, N_SEL):
        blk = tl.load(idx_row + i)
        if RASTER:
            bt = blk // (blocks_h * blocks_w)
            bh = (blk // blocks_w) % blocks_h
            bw = blk % blocks_w
            first = (bt * 4 * grid_h + bh * 4) * grid_w + bw * 4
        else:
            first = blk * 64
        rows = (first + rows_in_block).to(tl.int64) + h * seq
        k = tl.load(K + rows[:, None] * D + offs_d[None, :])
        v = tl.load(V + rows[:, None] * D + offs_d[None, :])
        acc += k.to(tl.float32) + v.to(tl.float32)
    tl.store(O + (h * tl.num_programs(0) + qb) * 64 * D + r[:, None] * D + offs_d[None, :], acc)


def run(mode: str, heads: int, grid, n_sel: int, iters: int = 5) -> dict:
    t, hh, ww = grid
    seq, d = t * hh * ww, 128
    nb = seq // 64
    dev = "cuda"
    k = torch.randn(heads * seq, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    span = nb if mode != "l2" else max(n_sel, (8 << 20) // (2 * 64 * d * 2))
    idx = torch.rand(heads * nb, span, device=dev).argsort(-1)[:, :n_sel].sort(-1).values.to(torch.int32).contiguous()
    out = torch.empty(heads * nb, 64, d, device=dev, dtype=torch.float32)
    args = (k, v, idx, out, seq, hh, ww, hh // 4, ww // 4)

    def launch():
        _gather_sum[(nb, heads)](*args, N_SEL=n_sel, RASTER=mode == "raster", D=d, num_warps=4)

    launch()  # JIT
    s = median(cuda_times(launch, iters))
    gathered = 2 * heads * nb * n_sel * 64 * d * 2
    return {"mode": mode, "median_s": s, "gathered_gb": gathered / 1e9, "tb_per_s": gathered / s / 1e12}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--heads", type=int, default=32)
    args = ap.parse_args()
    grid, n_sel = (48, 44, 80), 165
    rows = [run(m, args.heads, grid, n_sel) for m in ("raster", "blockmajor", "l2")]
    for r in rows:
        print(f"{r['mode']:12s} {r['median_s']:.4f} s  {r['gathered_gb']:.0f} GB gathered  {r['tb_per_s']:.2f} TB/s")
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "grid": grid, "n_sel": n_sel, "heads": args.heads, "rows": rows}
    (out / "bsa_gather_probe.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
