"""Where does one DiT block's time go? Kernel-level breakdown of the fast path at the real 480p shape.

Builds a full-width LongCat DiT of ``--depth`` blocks (random bf16 weights), switches on the fused kernels and
the best attention backend, runs one forward under ``torch.profiler`` at batch ``--batch`` x 37,440 tokens and
prints the CUDA kernels by total time (per block), next to the same for the plain eager path. Writes the tables
to ``<out>/profile_block_<gpu>.md``. ~1 minute on an H100/H200.

    python bench/profile_block.py --out bench/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import build_dit, env_info, gpu_slug

from lc_runtime.config import LONGCAT_13B


def kernel_table(fn, blocks: int, rows: int = 25) -> tuple[str, float]:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: -e.self_device_time_total)
    lines = ["| kernel | calls/block | ms/block | share |", "|---|---|---|---|"]
    for e in events[:rows]:
        name = e.key.replace("|", "/")[:110]
        ms = e.self_device_time_total / 1e3 / blocks
        lines.append(f"| `{name}` | {e.count / blocks:.1f} | {ms:.3f} | {e.self_device_time_total / total:.1%} |")
    return "\n".join(lines), total / 1e3 / blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    from dataclasses import replace

    from lc_runtime.ops.attention import select_attention_backend

    backend = select_attention_backend(args.attention, "cuda")  # as the pipeline: the best available, or --attention
    cfg = replace(LONGCAT_13B, depth=args.depth)
    dit = build_dit(cfg)
    T, H, W = 24, 30, 52
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(args.batch, 16, T, 2 * H, 2 * W, device="cuda", generator=g)
    t = torch.full((args.batch,), 700.0, device="cuda")
    y = torch.randn(args.batch, 1, 512, 4096, device="cuda", generator=g)
    mask = torch.ones(args.batch, 512, dtype=torch.long, device="cuda")
    out = [f"# One DiT block, {env_info().get('gpu')}, batch {args.batch} x {T * H * W} tokens, depth {args.depth}"]
    out.append(f"\nAttention backend: {backend}.")
    with torch.no_grad():
        ctx = dit.prepare_text(y, mask)
        for kind in ("triton", "torch"):
            dit.use_kernels(kind, attention=backend)
            table, ms = kernel_table(lambda: dit(x, t, text_context=ctx), args.depth)
            out += [f"\n## kernels={kind}: {ms:.2f} ms of GPU time per block\n", table]
            print(out[-2], flush=True)
            print(table, flush=True)
    path = Path(args.out) / f"profile_block_{gpu_slug()}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
