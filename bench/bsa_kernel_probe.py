"""Where does the BSA kernel time go: memory or arithmetic? Times the op's kernels at the 720p refine shape (32 heads
x 168,960 tokens, 165 of 2640 key blocks per query block, bf16) on two selections of the same size:

- ``iid``: each query block selects 165 random key blocks of its head (bench_bsa.py's "iid" input): the K/V tiles
  come from the whole head (86.5 MB of K + V, more than the L2), so L2 misses limit the kernel;
- ``l2``: 165 random key blocks among the first 330 of each head (10.8 MB per head): the same arithmetic, the same
  number of tile loads, but from an L2-resident slice: a bound on the kernel's own (compute and issue) speed.

Kernels: the Triton TMA kernel (``TMA_CONFIG``) and the Gluon kernel (``gluon_bsa.py``) in the ``--gluon`` versions
and ring depths (v1: Q in shared memory, v2: Q in registers, v3: pairs of key blocks per softmax update), one
key-range pass and ``--passes`` passes. The kernels run in rounds, alternating, so that clock and power drift hit
them alike. Writes ``<out>/bsa_kernel_probe_<gpu>.json`` and prints a table.

    python bench/bsa_kernel_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cuda_times, env_info, gpu_slug, median  # noqa: E402

sys.path.insert(0, str(REPO))
from lc_runtime.ops import triton_bsa  # noqa: E402

GRID, HEADS, D, K_SEL = (48, 44, 80), 32, 128, 165
CHUNK = (4, 4, 4)


def selection(kind: str, heads: int, nq: int, nk: int, gen) -> torch.Tensor:
    span = nk if kind == "iid" else 2 * K_SEL
    keys = torch.rand(heads * nq, span, device="cuda", generator=gen).argsort(-1)[:, :K_SEL]
    return keys.sort(-1).values.to(torch.int32).reshape(1, heads, nq, K_SEL).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--passes", default="2,3,4", help="key-range pass counts timed besides one pass")
    ap.add_argument("--gluon", default="1:2,1:3,2:2,2:3,3:2,3:3", help="Gluon kernels timed, VERSION:RING_DEPTH,...")
    ap.add_argument("--rotate", default="", help="rotated-walk settings timed for each version, one pass: R,...")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("needs an sm_90+ GPU (the TMA and Gluon kernels)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    seq = GRID[0] * GRID[1] * GRID[2]
    q, k, v = (torch.randn(1, HEADS, seq, D, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3))
    kv_blocks = tuple(triton_bsa.blocks_and_means(x, GRID, CHUNK, pool=False)[0] for x in (k, v))
    nb = seq // 64
    counts = torch.full((1, HEADS, nb), K_SEL, device="cuda", dtype=torch.int32)
    out = torch.empty_like(q)
    gluon = triton_bsa.BsaKernelConfig(tma=True, kv_passes=1, gluon=1)
    configs = {"triton tma": triton_bsa.TMA_CONFIG}
    for version, stages in (map(int, item.split(":")) for item in args.gluon.split(",") if item.strip()):
        for p in [1, *(int(x) for x in args.passes.split(",") if x.strip())]:
            cfg = dataclasses.replace(gluon, num_stages=stages, kv_passes=p, gluon=version)
            configs[f"gluon v{version} stages={stages} passes={p}"] = cfg
        for r in (int(x) for x in args.rotate.split(",") if x.strip()):
            cfg = dataclasses.replace(gluon, num_stages=stages, kv_passes=1, gluon=version, rotate=r)
            configs[f"gluon v{version} stages={stages} passes=1 rotate={r}"] = cfg
    rows = []
    for kind in ("iid", "l2"):
        idx = selection(kind, HEADS, nb, nb, gen)
        times = {name: [] for name in configs}
        diffs, first = {}, None
        for _ in range(args.rounds):
            for name, cfg in configs.items():
                fn = lambda c=cfg, i=idx: triton_bsa.bsa_forward(  # noqa: E731
                    q, k, v, i, counts, GRID, GRID, CHUNK, c, out=out, order="sorted", kv_blocks=kv_blocks
                )
                fn()
                if name not in diffs:  # every kernel against the first one's output (the Triton TMA kernel's)
                    first = out.clone() if first is None else first
                    diffs[name] = (out.float() - first.float()).abs().max().item()
                times[name] += cuda_times(fn, args.iters)
        flops = 4 * HEADS * seq * K_SEL * 64 * D
        for name, ts in times.items():
            s = median(ts)
            row = dict(selection=kind, kernel=name, median_s=s, min_s=min(ts), tflops=flops / s / 1e12)
            rows.append(row | dict(max_abs_diff_vs_first=diffs[name]))
            print(
                f"{kind:4s} {name:40s} median {s:.4f} s  min {min(ts):.4f} s  {flops / s / 1e12:.0f} TFLOP/s  "
                f"max |diff| vs {next(iter(configs))} {diffs[name]:.2e}"
            )
    payload = dict(env=env_info(), grid=GRID, heads=HEADS, head_dim=D, k_sel=K_SEL, rows=rows)
    path = Path(args.out) / f"bsa_kernel_probe_{gpu_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
