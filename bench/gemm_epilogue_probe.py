"""Does fusing the DiT's memory-bound follow-ups into a Triton GEMM's epilogue beat cuBLAS + the row kernel? (GPU)

At the 480p batch-2 shape (M = 74,880 tokens, C = 4096, F = 11,008) it times, per GEMM of a block:

* ``unfused``: the path without epilogue fusion: the cuBLAS GEMM (``F.linear``), then ``w13`` -> the SwiGLU row
  kernel, ``w2`` / ``proj`` -> the gated-add row kernel, ``cross`` -> a torch add;
* ``cublas``: the cuBLAS GEMM alone;
* per Triton config (``lc_runtime/ops/triton_gemm.py``): the GEMM with the follow-up in its epilogue, and the same
  GEMM with the plain epilogue (the Triton GEMM's own speed against cuBLAS).

Fused outputs are checked against the unfused path (max |diff| and the share of bf16 elements that differ: only the
GEMM's accumulation order differs). Writes JSON + markdown.

    python bench/gemm_epilogue_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from lc_runtime.ops import fused
from lc_runtime.ops import triton_gemm as G

CONFIGS = [  # the residual epilogues (w2, proj, cross)
    G.GemmConfig(128, 256, 64, 3, 8),
    G.GemmConfig(128, 256, 64, 3, 8, persistent=True),
    G.GemmConfig(128, 256, 64, 3, 8, persistent=True, flatten=False),
    G.GemmConfig(128, 256, 64, 3, 8, persistent=True, warp_specialize=True, flatten=False),
    G.GemmConfig(128, 128, 64, 4, 8, persistent=True, warp_specialize=True),
]
SWIGLU_CONFIGS = [  # bn: the output tile (two accumulators of [bm, bn])
    G.GemmConfig(128, 128, 64, 3, 8),
    G.GemmConfig(128, 128, 64, 3, 8, group_m=16, persistent=True),
    G.GemmConfig(128, 128, 64, 4, 8, group_m=16, persistent=True),
    G.GemmConfig(128, 128, 64, 3, 8, group_m=16, persistent=True, warp_specialize=True),
    G.GemmConfig(128, 128, 64, 3, 8, group_m=8, persistent=True),
    G.GemmConfig(128, 128, 64, 3, 8, group_m=16, persistent=True, flatten=False),
    G.GemmConfig(128, 64, 64, 4, 8, group_m=16, persistent=True),
]


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=300, return_mode="median")


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    return {
        "max_abs": (out.float() - ref.float()).abs().max().item(),
        "differ": (out != ref).float().mean().item(),
        "ref_max": ref.float().abs().max().item(),
    }


def write(res: dict, out_dir: Path, stamp: str) -> str:
    M, C, Fh = res["shape"]["M"], res["shape"]["C"], res["shape"]["F"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"gemm_epilogue_probe_{stamp}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# GEMM epilogue probe: {res['device']}, torch {res['torch']}, triton {res['triton']}", ""]
    lines += [f"M = {M}, C = {C}, F = {Fh}; median ms (triton.testing.do_bench).", ""]
    for case, rec in res["cases"].items():
        lines += [f"## {case} ({rec['epilogue']})", ""]
        lines += [f"unfused {rec['unfused_ms']:.3f} ms (again {rec['unfused_again_ms']:.3f}), cuBLAS alone"]
        lines += [f"{rec['cublas_ms']:.3f} ms ({rec['cublas_tflops']:.0f} TFLOP/s)", ""]
        lines += ["| config | fused ms | fused / unfused | plain ms | plain / cuBLAS | max abs | differ |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for key, r in rec["configs"].items():

            def f(k, r=r):
                v = r.get(k)
                return f"{v:.4g}" if isinstance(v, float) else (r.get(k.split("_")[0] + "_error", "") or "")[:60]

            lines.append(
                f"| {key} | {f('fused_ms')} | {f('fused_vs_unfused')} | {f('plain_ms')} | {f('plain_vs_cublas')} "
                f"| {f('max_abs')} | {f('differ')} |"
            )
        lines.append("")
    (out_dir / f"gemm_epilogue_probe_{stamp}.md").write_text("\n".join(lines))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--cases", default="w13,w2,proj,cross")
    ap.add_argument("--configs", default="", help="indices into the case's config list (comma-separated)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    B, N, C, Fh, T = 2, 37440, 4096, 11008, 24
    M = B * N
    a_c = torch.randn(M, C, device=dev, dtype=bf)
    a_f = torch.randn(M, Fh, device=dev, dtype=bf)
    x = torch.randn(M, C, device=dev, dtype=bf)
    gate = torch.randn(B, T, 1, C, device=dev) * 0.1
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    stamp = time.strftime("%Y%m%d-%H%M")
    res |= {"shape": {"M": M, "C": C, "F": Fh}, "cases": {}}

    for case in args.cases.split(","):
        if case == "w13":
            w1, w3 = (torch.randn(Fh, C, device=dev, dtype=bf) * C**-0.5 for _ in range(2))
            wcat = torch.cat([w1, w3])
            a, bias, ep, flops = a_c, None, "swiglu", 2 * M * C * 2 * Fh

            def unfused(a=a, wcat=wcat):
                return fused.swiglu(F.linear(a, wcat))

            def cublas(a=a, wcat=wcat):
                return F.linear(a, wcat)

            def fused_fn(cfg, a=a, wcat=wcat):
                return G.gemm(a, wcat, epilogue="swiglu", config=cfg)

            def plain_fn(cfg, a=a, wcat=wcat):
                return G.gemm(a, wcat, config=cfg)
        elif case in ("w2", "proj", "cross"):
            k = Fh if case == "w2" else C
            a = a_f if case == "w2" else a_c
            w = torch.randn(C, k, device=dev, dtype=bf) * k**-0.5
            bias = None if case == "w2" else torch.randn(C, device=dev, dtype=bf) * 0.1
            ep, flops = "gated", 2 * M * k * C
            g = None if case == "cross" else gate  # cross: the cross-attention's plain residual add x + y

            def unfused(a=a, w=w, bias=bias, g=g):
                if g is None:
                    return x + F.linear(a, w, bias)
                return fused.gated_add(x.view(B, N, C), g, F.linear(a, w, bias).view(B, N, C)).view(M, C)

            def cublas(a=a, w=w, bias=bias):
                return F.linear(a, w, bias)

            def fused_fn(cfg, a=a, w=w, bias=bias, g=g):
                return G.gemm(a, w, bias, epilogue="gated", x=x, gate=g, tokens=N, config=cfg)

            def plain_fn(cfg, a=a, w=w, bias=bias):
                return G.gemm(a, w, bias, config=cfg)
        else:
            raise SystemExit(f"unknown case {case!r}")
        configs = SWIGLU_CONFIGS if case == "w13" else CONFIGS
        if args.configs:
            configs = [configs[int(i)] for i in args.configs.split(",")]
        ref = unfused()
        rec = {"epilogue": ep, "tflop": flops / 1e12}
        rec["unfused_ms"] = bench(unfused)
        rec["cublas_ms"] = bench(cublas)
        rec["configs"] = {}
        for cfg in configs:
            r = {}
            for kind, fn in (("fused", fused_fn), ("plain", plain_fn)):
                try:
                    t0 = time.perf_counter()
                    out = fn(cfg)
                    torch.cuda.synchronize()
                    r[f"{kind}_compile_s"] = time.perf_counter() - t0
                    if kind == "fused":
                        r |= compare(out, ref)
                    del out
                    r[f"{kind}_ms"] = bench(lambda fn=fn, cfg=cfg: fn(cfg))
                    r[f"{kind}_tflops"] = flops / r[f"{kind}_ms"] / 1e9
                except Exception as e:  # a config that does not compile or fit: recorded, not fatal
                    r[f"{kind}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if "fused_ms" in r:
                r["fused_vs_unfused"] = r["fused_ms"] / rec["unfused_ms"]
            if "plain_ms" in r:
                r["plain_vs_cublas"] = r["plain_ms"] / rec["cublas_ms"]
            rec["configs"][cfg.key()] = r
            print(case, cfg.key(), {k: v for k, v in r.items() if not k.endswith("_s")}, flush=True)
        rec["unfused_again_ms"] = bench(unfused)
        rec["cublas_tflops"] = flops / rec["cublas_ms"] / 1e9
        print(case, {k: v for k, v in rec.items() if k != "configs"}, flush=True)
        res["cases"][case] = rec
        text = write(res, Path(args.out), stamp)
        del ref
        torch.cuda.empty_cache()
    print(text)


if __name__ == "__main__":
    main()
