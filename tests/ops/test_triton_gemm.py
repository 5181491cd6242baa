"""Triton GEMMs with fused epilogues (lc_runtime/ops/triton_gemm.py) against their PyTorch references
(fused.linear_swiglu_ref, fused.linear_add_ref, fused.gated_add_ref): on CPU through TRITON_INTERPRET=1 (the
one-tile-per-program launch, edge tiles in M, N and K) and on CUDA (the persistent launch the fast path uses).

Bound (STYLE #9): bf16 outputs against the reference evaluated in fp32 on the up-cast inputs,
``err(kernel, ref32) <= 2 * err(ref_bf16, ref32) + 1e-6`` for both the max and the mean absolute error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lc_runtime.ops import fused

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _errors(out, ref32, ref16) -> dict:
    e, b = (out.double() - ref32.double()).abs(), (ref16.double() - ref32.double()).abs()
    return {"max_err": e.max().item(), "mean_err": e.mean().item(), "max_base": b.max().item(),
            "mean_base": b.mean().item()}  # fmt: skip


EPILOGUES = ("none", "swiglu", "add", "gated")


def gemm_records(device: str, configs, epilogues=EPILOGUES, K: int = 72) -> list[dict]:
    """Each of ``epilogues`` on bf16 inputs, per config, at shapes with partial tiles (M, N, K not multiples of the
    tile) and at a frame size that makes tiles straddle frames and batch entries (per-frame gate)."""
    from lc_runtime.ops import triton_gemm as G

    bf = torch.bfloat16
    records = []
    B, T, P = 2, 3, 30  # N = 90 tokens per batch entry, M = 180 rows
    M = B * T * P
    for cfg in configs:
        g = _gen(0)
        a = torch.randn(M, K, generator=g).to(bf).to(device)
        w13 = (torch.randn(2 * 104, K, generator=g) / 8).to(bf).to(device)  # F = 104: partial tiles
        w = (torch.randn(136, K, generator=g) / 8).to(bf).to(device)
        bias = (torch.randn(136, generator=g) / 4).to(bf).to(device)
        x = torch.randn(M, 136, generator=g).to(bf).to(device)
        gate = torch.randn(B, T, 1, 136, generator=g).to(device)
        up = [t.float() for t in (a, w13, w, bias, x)]
        key = cfg.key()

        def rec(name, out, ref32, ref16, key=key):
            records.append({"case": f"{name} {key}", **_errors(out, ref32, ref16)})

        if "none" in epilogues:
            rec("none", G.gemm(a, w, bias, config=cfg), F.linear(up[0], up[2], up[3]), F.linear(a, w, bias))
        if "swiglu" in epilogues:
            rec("swiglu", G.gemm(a, w13, epilogue="swiglu", config=cfg),
                fused.linear_swiglu_ref(up[0], up[1]), fused.linear_swiglu_ref(a, w13))  # fmt: skip
        if "add" in epilogues:
            rec("add", G.gemm(a, w, bias, epilogue="gated", x=x, config=cfg),
                fused.linear_add_ref(up[0], up[2], up[3], up[4]), fused.linear_add_ref(a, w, bias, x))  # fmt: skip
        if "gated" in epilogues:
            out = G.gemm(a, w, None, epilogue="gated", x=x, gate=gate, tokens=T * P, config=cfg)
            shape = (B, T * P, 136)
            ref32 = fused.gated_add_ref(up[4].view(shape), gate, F.linear(up[0], up[2]).view(shape)).view(M, 136)
            ref16 = fused.gated_add_ref(x.view(shape), gate, F.linear(a, w).view(shape)).view(M, 136)
            rec("gated", out, ref32, ref16)
    return records


def check_records(records: list[dict], expected: int) -> None:
    assert len(records) == expected
    for r in records:
        assert r["max_err"] <= 2 * r["max_base"] + 1e-6 and r["mean_err"] <= 2 * r["mean_base"] + 1e-6, r


def _interpreter_configs():
    from lc_runtime.ops.triton_gemm import GemmConfig

    return [GemmConfig(32, 64, 32, 2, 4), GemmConfig(64, 128, 64, 2, 4, group_m=2)]


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (not a dependency)")
def test_gemm_epilogues_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, __file__, "--interpreter-worker"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_records(json.loads(proc.stdout.strip().splitlines()[-1]), len(EPILOGUES) * len(_interpreter_configs()))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (not a dependency)")
def test_gemm_refuses_unsupported_operands():
    from lc_runtime.ops import triton_gemm as G

    a = torch.randn(8, 16, dtype=torch.bfloat16)
    assert not G.supported(a, a)  # CPU tensors: the fused ops run their references
    with pytest.raises(ValueError, match="unknown epilogue"):
        G.gemm(a, a, epilogue="gelu")


if __name__ == "__main__" and sys.argv[1:] == ["--interpreter-worker"]:
    from interpreter_shims import install_interpreter_shims

    install_interpreter_shims()
    print(json.dumps(gemm_records("cpu", _interpreter_configs())))


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_gemm_epilogues_on_cuda():
    from lc_runtime.ops import triton_gemm as G

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA GEMMs were measured and are used on Hopper only")
    # the fast path's configs for the epilogues it runs them with, at its K (a persistent kernel with fewer k-steps
    # than pipeline stages can need more shared memory than the GPU has; the ops then fall back, next test), and a
    # small one-tile-per-program config for every epilogue
    records = gemm_records("cuda", [G.SWIGLU_CONFIG], ("swiglu",), K=4096)
    records += gemm_records("cuda", [G.ADD_CONFIG], ("add",), K=4096)
    records += gemm_records("cuda", [G.GemmConfig(64, 128, 64, 3, 4)], K=1032)
    check_records(records, 2 + len(EPILOGUES))


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_fused_linear_ops_on_cuda_match_refs():
    """The ops the DiT calls, at a shape whose K and N take the Triton GEMM on Hopper (fallback elsewhere)."""
    g = _gen(1)
    bf = torch.bfloat16
    a = torch.randn(2, 300, 256, generator=g).to(bf).cuda()
    w13 = (torch.randn(2 * 384, 256, generator=g) / 16).to(bf).cuda()
    w = (torch.randn(512, 256, generator=g) / 16).to(bf).cuda()
    bias = (torch.randn(512, generator=g) / 4).to(bf).cuda()
    x = torch.randn(2, 300, 512, generator=g).to(bf).cuda()
    up = [t.float() for t in (a, w13, w, bias, x)]
    for out, ref32, ref16 in (
        (fused.linear_swiglu(a, w13), fused.linear_swiglu_ref(up[0], up[1]), fused.linear_swiglu_ref(a, w13)),
        (fused.linear_add(a, w, bias, x), fused.linear_add_ref(up[0], *up[2:]), fused.linear_add_ref(a, w, bias, x)),
    ):
        r = _errors(out, ref32, ref16)
        assert r["max_err"] <= 2 * r["max_base"] + 1e-6 and r["mean_err"] <= 2 * r["mean_base"] + 1e-6, r


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_fused_linear_ops_fall_back_when_a_kernel_does_not_fit(monkeypatch):
    """A Triton GEMM that does not fit the GPU (OutOfResources at its first launch) is not an error: the op runs
    cuBLAS + the row kernel / the add, equal to its reference within bf16 precision, and does not try again."""
    import triton

    from lc_runtime.ops import triton_gemm as G

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA GEMMs are used on Hopper only")
    tried = []

    def too_big(*args, epilogue, **kwargs):
        tried.append(epilogue)
        raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(G, "gemm", too_big)
    monkeypatch.setattr(G, "_FAILED", set())
    g = _gen(2)
    a = torch.randn(2, 40, 256, generator=g).to(torch.bfloat16).cuda()
    w = (torch.randn(512, 256, generator=g) / 16).to(torch.bfloat16).cuda()
    x = torch.randn(2, 40, 512, generator=g).to(torch.bfloat16).cuda()
    for _ in range(2):
        for out, ref32, ref16 in (
            (fused.linear_add(a, w, None, x), fused.linear_add_ref(a.float(), w.float(), None, x.float()),
             fused.linear_add_ref(a, w, None, x)),
            (fused.linear_swiglu(a, w), fused.linear_swiglu_ref(a.float(), w.float()), fused.linear_swiglu_ref(a, w)),
        ):  # fmt: skip
            r = _errors(out, ref32, ref16)
            assert r["max_err"] <= 2 * r["max_base"] + 1e-6 and r["mean_err"] <= 2 * r["mean_base"] + 1e-6, r
    assert tried == ["gated", "swiglu"]  # once each: the second round went straight to the fallback
