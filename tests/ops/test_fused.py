"""Fused DiT ops (lc_runtime/ops/fused.py): references equal the DiT's functions bit for bit, the ops keep their
contract (layouts, fakes, opcheck, export), the DiT's "triton" table equals the "torch" one, and the Triton kernels
agree with the references within the precision bound of STYLE #9 — on CPU through TRITON_INTERPRET=1 (when triton
is installed; it is not a dependency) and on CUDA when a GPU is present.

Bound (STYLE #9): with ``ref32`` the reference evaluated in fp32 on the up-cast inputs, a bf16 kernel must satisfy
``err(kernel, ref32) <= 2 * err(ref_bf16, ref32) + 1e-6`` for both the max and the mean absolute error; the fp32
kernels must match the fp32 reference to fp32 rounding (reduction order differs: 1e-5 relative).
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
from conftest import assert_close

from lc_runtime.config import DiTConfig
from lc_runtime.models import dit as dit_mod
from lc_runtime.models.dit import LongCatDiT, init_random_
from lc_runtime.ops import fused
from lc_runtime.ops.attention import merge_attention_ref
from lc_runtime.ops.rope import apply_rope, rope_cos_sin

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- inputs
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mod_inputs(dtype, B=2, T=3, P=10, C=96, seed=0, device="cpu"):
    """x [B, T*P, C]; shift/scale/gate [B, T, 1, C] fp32 as the strided chunks of the adaLN output."""
    g = _gen(seed)
    x = (torch.randn(B, T * P, C, generator=g) * 3 + 0.5).to(dtype)
    mods = torch.randn(B, T, 1, 6 * C, generator=g).chunk(6, dim=-1)
    y = torch.randn(B, T * P, C, generator=g).to(dtype)
    w, b = 1 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g)
    t = [x, y, w.to(dtype), b.to(dtype), *mods]
    return [a.to(device) for a in t]


def qkv_inputs(dtype, B=2, H=3, T=2, Hh=3, Ww=4, D=32, seed=1, device="cpu", t_offset=2):
    """q, k, v as the strided views of a [B, N, 3, H, D] qkv GEMM output; gains; RoPE tables."""
    g = _gen(seed)
    N = T * Hh * Ww
    qkv = torch.randn(B, N, 3, H, D, generator=g).to(dtype) * 2
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    wq, wk = ((1 + 0.1 * torch.randn(D, generator=g)).to(dtype) for _ in range(2))
    cos, sin = rope_cos_sin((T, Hh, Ww), D, t_offset=t_offset)
    return [a.to(device) for a in (q, k, v, wq, wk, cos, sin)]


# ---------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_refs_equal_dit_functions_bitwise(dtype):
    x, y, w, b, shift, scale, gate, *_ = mod_inputs(dtype)
    frames = shift.shape[1]
    assert torch.equal(fused.modulate_ref(x, shift, scale), dit_mod.modulate(x, shift, scale, frames))
    assert torch.equal(fused.gated_add_ref(x, gate, y), dit_mod.gated_add(x, gate, y, frames))
    norm = dit_mod.LayerNormFP32(x.shape[-1])
    norm.weight, norm.bias = torch.nn.Parameter(w), torch.nn.Parameter(b)
    assert torch.equal(fused.layer_norm_ref(x, w, b), norm(x))
    q, k, _, wq, wk, cos, sin = qkv_inputs(dtype)
    rq, rk = fused.qk_norm_rope_ref(q, k, wq, wk, cos, sin)
    assert torch.equal(rq, apply_rope(dit_mod.rms_norm(q, wq), cos, sin))
    assert torch.equal(rk, apply_rope(dit_mod.rms_norm(k, wk), cos, sin))
    assert torch.equal(fused.head_rms_norm_ref(q, wq), dit_mod.rms_norm(q, wq))
    a, c = torch.randn(2, 7, 40, generator=_gen(3)).to(dtype), torch.randn(2, 7, 40, generator=_gen(4)).to(dtype)
    assert torch.equal(fused.swiglu_ref(torch.cat([a, c], -1)), F.silu(a) * c)
    # the FFN's fused [w1; w3] weight and the fused ops equal the module's own two-GEMM math
    ffn = _tiny_dit().blocks[0].ffn.to(dtype)
    xf = torch.randn(2, 5, ffn.w1.weight.shape[1], generator=_gen(13)).to(dtype)
    want = ffn(xf)
    ffn.fuse_w13()
    assert torch.equal(fused.linear_swiglu_ref(xf, ffn.w13), F.silu(ffn.w1(xf)) * ffn.w3(xf))
    assert torch.equal(ffn.w2(fused.linear_swiglu_ref(xf, ffn.w13)), want)
    proj = _tiny_dit().blocks[0].cross_attn.proj.to(dtype)
    o = torch.randn(2, 5, proj.weight.shape[1], generator=_gen(14)).to(dtype)
    xr = torch.randn(2, 5, proj.weight.shape[0], generator=_gen(15)).to(dtype)
    assert torch.equal(fused.linear_add_ref(o, proj.weight, proj.bias, xr), xr + proj(o))


def test_merge_ref_equals_joint_attention():
    """Merging attention over two key sets by LSE equals attention over their union (fp32)."""
    from lc_runtime.ops.attention import attention_lse_ref, attention_ref

    g = _gen(5)
    q, k1, v1 = (torch.randn(2, 3, 9, 16, generator=g) for _ in range(3))
    k2, v2 = (torch.randn(2, 3, 13, 16, generator=g) for _ in range(2))
    o1, l1 = attention_lse_ref(q, k1, v1)
    o2, l2 = attention_lse_ref(q, k2, v2)
    ref = attention_ref(q, torch.cat([k1, k2], 2), torch.cat([v1, v2], 2))
    assert_close(merge_attention_ref(o1, l1, o2, l2), ref, rtol=1e-5, atol=1e-6, what="merge")


# ---------------------------------------------------------------------------------------------- op contract
def _op_cases(device="cpu", dtype=torch.bfloat16):
    x, y, w, b, shift, scale, gate, *_ = mod_inputs(dtype, device=device)
    q, k, v, wq, wk, cos, sin = qkv_inputs(dtype, device=device)
    h = torch.randn(2, 5, 2 * 48, generator=_gen(6)).to(dtype).to(device)
    a = torch.randn(2, 5, 64, generator=_gen(16)).to(dtype).to(device)
    w13 = (torch.randn(96, 64, generator=_gen(17)) / 8).to(dtype).to(device)
    wl, bl = (torch.randn(96, 64, generator=_gen(18)) / 8).to(dtype).to(device), x[0, 0, :96].clone()
    lse_a = torch.randn(q.shape[:3], generator=_gen(7)).to(device)
    lse_b = torch.randn(q.shape[:3], generator=_gen(8)).to(device)
    return {
        "modulate": ((x, shift, scale), fused.modulate_ref),
        "layer_norm": ((x, w, b), fused.layer_norm_ref),
        "gated_add": ((x, gate, y), fused.gated_add_ref),
        "qk_norm_rope": ((q, k, wq, wk, cos, sin), fused.qk_norm_rope_ref),
        "head_rms_norm": ((q, wq), fused.head_rms_norm_ref),
        "swiglu": ((h,), fused.swiglu_ref),
        "linear_swiglu": ((a, w13), fused.linear_swiglu_ref),
        "linear_add": ((a, wl, bl, x[:, :5].contiguous()), fused.linear_add_ref),
        "merge_attention": ((q, lse_a, v, lse_b), merge_attention_ref),
    }


def _nhd_contiguous(t: torch.Tensor) -> bool:
    return t.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("name", list(fused.OPS))
def test_ops_on_cpu_equal_refs_and_pass_opcheck(name):
    args, ref = _op_cases()[name]
    op = fused.OPS[name]
    out, want = op(*args), ref(*args)
    outs, wants = (out, want) if isinstance(out, tuple) else ((out,), (want,))
    for o, w in zip(outs, wants):
        assert torch.equal(o, w), name
        if name in ("qk_norm_rope", "head_rms_norm", "merge_attention"):
            assert _nhd_contiguous(o), f"{name} must write [B, N, H, D] memory"
        else:
            assert o.is_contiguous()
    torch.library.opcheck(op, args)


def _tiny_dit(**overrides) -> LongCatDiT:
    cfg = DiTConfig(hidden_size=64, depth=2, num_heads=2, caption_channels=24, adaln_tembed_dim=32, **overrides)
    return init_random_(LongCatDiT(cfg), seed=11).eval()


def _dit_inputs(seed=12):
    g = _gen(seed)
    x = torch.randn(2, 16, 3, 4, 6, generator=g)
    t = torch.tensor([[0.0, 600.0, 600.0]] * 2)
    y = torch.randn(2, 1, 512, 24, generator=g)
    mask = torch.zeros(2, 512, dtype=torch.long)
    mask[0, :20], mask[1, :300] = 1, 1
    return x, t, y, mask


@torch.no_grad()
@pytest.mark.parametrize("zero_pad", [True, False])
def test_dit_triton_table_equals_torch_table_on_cpu(zero_pad):
    """On CPU the fused ops run their references: the "triton" DiT (fused w1/w3 GEMM, NHD layouts, LSE-merge
    op) equals the "torch" DiT to fp32 rounding in all three graphs, and switching back is exact."""
    m = _tiny_dit(text_tokens_zero_pad=zero_pad)
    x, t, y, mask = _dit_inputs()
    kv = m.prefill(x[:1, :, :1])
    ref_full = m(x, t, y, mask, num_cond_latents=1)
    ref_cached = m(x[:, :, 1:], t[:, 1:], y, mask, kv_cache=kv)
    names = set(m.state_dict())
    m.use_kernels("triton", attention="sdpa")
    assert m.kernels == "triton" and set(m.state_dict()) == names
    tol = {"rtol": 1e-5, "atol": 1e-5 * float(ref_full.abs().max())}
    assert_close(m(x, t, y, mask, num_cond_latents=1), ref_full, **tol, what="conditioned")
    kv_fast = m.prefill(x[:1, :, :1])
    assert_close(kv_fast.k, kv.k, rtol=1e-5, atol=1e-5, what="prefill K")
    assert_close(m(x[:, :, 1:], t[:, 1:], y, mask, kv_cache=kv_fast), ref_cached, **tol, what="cached")
    m.use_kernels("torch")
    assert torch.equal(m(x, t, y, mask, num_cond_latents=1), ref_full)


@torch.no_grad()
def test_fused_w13_keeps_lora_merge_and_restore(tmp_path):
    from lc_runtime.tiny import tiny_loras

    m = _tiny_dit(text_tokens_zero_pad=True)
    x, t, y, mask = _dit_inputs()
    base_sd = {k: v.clone() for k, v in m.state_dict().items()}
    from lc_runtime.lora import LoRAState

    m.lora = LoRAState(m)
    m.lora.files["l"] = tiny_loras(m, seed=3, refinement=False)
    m.set_loras({"l": 0.8})
    want = m(x, t, y, mask)
    m.set_loras({})
    m.use_kernels("triton", attention="sdpa")
    ffn = m.blocks[0].ffn
    assert ffn.w1.weight.data_ptr() == ffn.w13.data_ptr()
    m.set_loras({"l": 0.8})  # merged in place into the views of w13
    assert torch.equal(ffn.w13[: ffn.w1.weight.shape[0]], ffn.w1.weight)
    assert_close(m(x, t, y, mask), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), what="merged LoRA")
    m.set_loras({"l": 0.8}, merged=False)  # adapters: the FFN falls back to the two-GEMM path
    assert_close(m(x, t, y, mask), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), what="unmerged LoRA")
    m.set_loras({})
    assert all(torch.equal(base_sd[k], v) for k, v in m.state_dict().items())


def test_torch_export_keeps_fused_ops():
    m = _tiny_dit(text_tokens_zero_pad=True).use_kernels("triton", attention="sdpa")
    x, t, y, mask = _dit_inputs()
    with torch.no_grad():
        ep = torch.export.export(m, (x, t, y, mask), {"num_cond_latents": 1})
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert any("fused_qk_norm_rope" in s for s in targets) and any("fused_linear_swiglu" in s for s in targets)
        # the cross-attention's projection + residual add is one op where no token is a conditioning one
        ep2 = torch.export.export(m, (x, t, y, mask))
        assert any("fused_linear_add" in str(n.target) for n in ep2.graph.nodes if n.op == "call_function")
        assert_close(ep2.module()(x, t, y, mask), m(x, t, y, mask), rtol=1e-5, atol=1e-5)
        assert_close(ep.module()(x, t, y, mask, num_cond_latents=1), m(x, t, y, mask, 1), rtol=1e-5, atol=1e-5)


def test_use_kernels_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kernels"):
        _tiny_dit().use_kernels("cuda")


# ---------------------------------------------------------------------------------------------- kernels
def _errors(out, ref32, ref16) -> dict:
    e, b = (out.double() - ref32.double()).abs(), (ref16.double() - ref32.double()).abs()
    return {"max_err": e.max().item(), "mean_err": e.mean().item(), "max_base": b.max().item(),
            "mean_base": b.mean().item(), "scale": ref32.abs().max().item()}  # fmt: skip


def _up(args):
    return [a.float() if a.is_floating_point() else a for a in args]


def kernel_records(device: str) -> list[dict]:
    """Every kernel on bf16 inputs against the fp32 reference (STYLE #9 numbers) and on fp32 inputs against the
    fp32 reference (relative error); real head_dim 128 and a non-power-of-two feature dim included."""
    from lc_runtime.ops import triton_kernels as K

    records = []

    def run(name, kernel, ref, args, shapes):
        out = kernel(*args)
        ref16, ref32 = ref(*args), ref(*_up(args))
        outs = out if isinstance(out, tuple) else (out,)
        r16 = ref16 if isinstance(ref16, tuple) else (ref16,)
        r32 = ref32 if isinstance(ref32, tuple) else (ref32,)
        for i, (o, a, b) in enumerate(zip(outs, r32, r16)):
            records.append({"case": f"{name}[{i}] {shapes}", "dtype": str(args[0].dtype), **_errors(o, a, b)})

    def row_kernels(x, y, w, b, shift, scale, gate, tag, layer_norm_tag):
        run("modulate", lambda x, s, c: K.norm_rows(x, torch.empty_like(x), shift=s, scale=c),
            fused.modulate_ref, [x, shift, scale], tag)  # fmt: skip
        run("layer_norm", lambda x, w, b: K.norm_rows(x, torch.empty_like(x), weight=w, bias=b),
            fused.layer_norm_ref, [x, w, b], layer_norm_tag)  # fmt: skip
        run("gated_add", lambda x, g, y: K.gated_add_rows(x, g, y, torch.empty_like(x)),
            fused.gated_add_ref, [x, gate, y], tag)  # fmt: skip

    def head_kernels(q, k, wq, wk, cos, sin, tag):
        run("qk_norm_rope",
            lambda q, k, a, b, c, s: (K.head_norm_rope(q, a, fused._nhd_like(q), c, s),
                                      K.head_norm_rope(k, b, fused._nhd_like(k), c, s)),
            fused.qk_norm_rope_ref, [q, k, wq, wk, cos, sin], tag)  # fmt: skip
        run("head_rms_norm", lambda q, a: K.head_norm_rope(q, a, fused._nhd_like(q)),
            fused.head_rms_norm_ref, [q, wq], tag)  # fmt: skip

    for dtype in (torch.bfloat16, torch.float32):
        for C, D in ((96, 32), (128, 128), (72, 24)):  # non-powers of two exercise the masks
            x, y, w, b, shift, scale, gate, *_ = mod_inputs(dtype, C=C, device=device)
            row_kernels(x, y, w, b, shift, scale, gate, C, C)
            q, k, v, wq, wk, cos, sin = qkv_inputs(dtype, D=D, device=device)
            head_kernels(q, k, wq, wk, cos, sin, D)
            h = (torch.randn(9, 2 * C, generator=_gen(9)) * 3).to(dtype).to(device)
            run("swiglu", lambda h: K.swiglu_rows(h, torch.empty(h.shape[0], h.shape[1] // 2, dtype=h.dtype,
                device=h.device)), fused.swiglu_ref, [h], C)  # fmt: skip
            la = torch.randn(q.shape[:3], generator=_gen(10)).to(device) * 4
            lb = torch.randn(q.shape[:3], generator=_gen(11)).to(device) * 4
            run("merge", lambda a, la, b, lb: K.merge_rows(a, la, b, lb, fused._nhd_like(a)),
                merge_attention_ref, [q, la, v, lb], D)  # fmt: skip
        # Launch paths: row kernels with ROWS = 4 / 2 / 1 rows per program (tokens per frame P = 12 / 10 / 5,
        # N = 3P) and at the real width C = 4096; head_norm_rope with whole and partial 16-row programs
        # (H % 16 == 0 or not). The case names carry the path (check_records).
        for B, P, C in ((2, 12, 96), (2, 10, 96), (2, 5, 96), (1, 4, 4096)):
            x, y, w, b, shift, scale, gate, *_ = mod_inputs(dtype, B=B, P=P, C=C, device=device)
            N, blk = x.shape[1], K._pow2(C)
            tag = f"{C} P={P} rows={K._rows_per_program(blk, N, P)}"
            row_kernels(x, y, w, b, shift, scale, gate, tag, f"{C} N={N} rows={K._rows_per_program(blk, N, N)}")
        for H, D in ((16, 32), (32, 128), (3, 32)):
            q, k, v, wq, wk, cos, sin = qkv_inputs(dtype, H=H, D=D, device=device)
            head_kernels(q, k, wq, wk, cos, sin, f"{D} H={H} whole_programs={H % 16 == 0}")
    return records


def check_records(records: list[dict]) -> None:
    assert len(records) >= 40
    cases = {r["case"] for r in records}
    for name in ("modulate", "layer_norm", "gated_add"):  # multi-row and one-row programs
        for rows in (4, 2, 1):
            assert any(c.startswith(f"{name}[0] ") and c.endswith(f"rows={rows}") for c in cases), (name, rows)
    for name in ("qk_norm_rope", "head_rms_norm"):
        for whole in (True, False):
            assert any(c.startswith(f"{name}[0] ") and c.endswith(f"whole_programs={whole}") for c in cases), name
    for r in records:
        if r["dtype"] == "torch.bfloat16":
            ok = r["max_err"] <= 2 * r["max_base"] + 1e-6 and r["mean_err"] <= 2 * r["mean_base"] + 1e-6
        else:  # fp32 inputs: differences are reduction-order / FMA rounding over <= 128-element sums
            ok = r["max_err"] <= 1e-5 * r["scale"]
        assert ok, r


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (not a dependency)")
def test_triton_kernels_in_interpreter():
    """The kernels on CPU tensors through TRITON_INTERPRET=1 (in a subprocess: the flag is read when the kernels
    are defined)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--interpreter-worker"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_records(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (not a dependency)")
def test_row_kernels_rows_per_program():
    """Rows per program of norm_rows / gated_add_rows: a program's rows never straddle a frame or a batch entry,
    and the [ROWS, BLOCK_C] tile stays <= 32 fp32 values per thread."""
    from lc_runtime.ops import triton_kernels as K

    assert K._rows_per_program(4096, 21 * 1560, 1560) == 4  # 480p: 1560 tokens per frame
    assert K._rows_per_program(4096, 21 * 3600, 3600) == 4  # 720p
    assert K._rows_per_program(4096, 3 * 1562, 1562) == 2
    assert K._rows_per_program(4096, 3 * 1561, 1561) == 1
    assert K._rows_per_program(4096, 1562, 1562 // 2) == 1  # 781 tokens per frame
    assert K._rows_per_program(8192, 4096, 4096) == 2  # 16 warps: 2 x 8192 / 512 threads = 32 per thread
    for block in (128, 1024, 4096, 8192, 16384):
        rows = K._rows_per_program(block, 4096, 1024)
        assert rows * block <= 32 * 32 * K._row_warps(block), (block, rows)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_triton_kernels_on_cuda():
    check_records(kernel_records("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("name", list(fused.OPS))
def test_ops_on_cuda_pass_opcheck(name):
    args, _ = _op_cases("cuda")[name]
    torch.library.opcheck(fused.OPS[name], args)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
@torch.no_grad()
def test_fast_dit_within_bf16_precision_on_cuda():
    """The whole tiny DiT in bf16: fast path (kernels + best attention) vs fp32, bounded by eager bf16 vs fp32."""
    from lc_runtime.ops.attention import select_attention_backend

    m32 = _tiny_dit(text_tokens_zero_pad=True).to("cuda")
    x, t, y, mask = (a.cuda() for a in _dit_inputs())
    ref = m32(x, t, y, mask, num_cond_latents=1)
    m16 = _tiny_dit(text_tokens_zero_pad=True).to("cuda", torch.bfloat16)
    eager = m16(x, t, y, mask, num_cond_latents=1)
    fast = m16.use_kernels("triton", attention=select_attention_backend()).forward(x, t, y, mask, num_cond_latents=1)
    e_fast, e_eager = (fast - ref).abs(), (eager - ref).abs()
    assert e_fast.max() <= 2 * e_eager.max() + 1e-6 and e_fast.mean() <= 2 * e_eager.mean() + 1e-6


# ---------------------------------------------------------------------------------------------- interpreter
if __name__ == "__main__" and sys.argv[1:] == ["--interpreter-worker"]:
    from interpreter_shims import install_interpreter_shims

    install_interpreter_shims()  # the kernels' bf16 outputs round to nearest even, as on the GPU
    print(json.dumps(kernel_records("cpu")))


def test_first_op_calls_do_not_import_dynamo_and_compile_still_works():
    """Our ops' first calls leave torch._dynamo unimported (2-4 s of a cold start, lc_runtime/ops/registry.py);
    once something imports it, torch.compile traces the ops as before and the results do not change."""
    code = """
import sys, torch
from lc_runtime.ops import block_sparse_attention, fused
x, s = torch.randn(1, 6, 8), torch.randn(1, 2, 1, 8)
q = torch.randn(1, 2, 128, 16)
first, bsa = fused.modulate(x, s, s), block_sparse_attention(q, q, q, (8, 4, 4), (8, 4, 4), sparsity=0.5)
import types
from lc_runtime.ops.registry import defer_module_ops
other = types.ModuleType("other")  # another package's op (as fa3-fwd's), deferred by module
other.twice = torch.library.custom_op("lc_test::twice", lambda t: t * 2, mutates_args=(), schema="(Tensor t) -> Tensor")
defer_module_ops(other)
assert torch.equal(other.twice(x), 2 * x)
assert "torch._dynamo" not in sys.modules, "a first op call imported torch._dynamo"
compiled = torch.compile(lambda a: fused.modulate(a, s, s), backend="eager", fullgraph=True)
assert torch.equal(compiled(x), first)
assert torch.equal(fused.modulate(x, s, s), first)
assert torch.equal(block_sparse_attention(q, q, q, (8, 4, 4), (8, 4, 4), sparsity=0.5), bsa)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
