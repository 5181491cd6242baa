"""Attention dispatch (lc_runtime/ops/attention.py): backend selection, every backend equal to the fp32
reference within its precision, NHD-strided inputs (what the fused RoPE kernel writes), and the cached decode's
prefix attention equal to attention over the concatenation."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from lc_runtime.ops import attention as A

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _restore_backend():
    before = A.get_attention_backend()
    yield
    A.set_attention_backend(before)


def qkv(B=2, H=3, Sq=40, Sk=24, D=32, dtype=torch.float32, device="cpu", nhd=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def make(S):
        x = torch.randn(B, S, H, D, generator=g).to(device, dtype)  # [B, S, H, D] memory
        return x.transpose(1, 2) if nhd else x.transpose(1, 2).contiguous()

    return make(Sq), make(Sk), make(Sk)


def test_selection_on_cpu():
    assert A.available_backends("cpu") == ["sdpa", "math"]
    assert A.select_attention_backend(device="cpu") == "sdpa"
    assert A.select_attention_backend("math", device="cpu") == "math" and A.get_attention_backend() == "math"
    with pytest.raises(ValueError, match="not available here"):
        A.select_attention_backend("flash", device="cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.set_attention_backend("xformers")


@pytest.mark.parametrize("name", ["sdpa", "math"])
@pytest.mark.parametrize("nhd", [True, False], ids=["nhd", "hnd"])
def test_cpu_backends_equal_reference(name, nhd):
    q, k, v = qkv(nhd=nhd)
    ref = A.attention_ref(q, k, v)
    assert_close(A.attention_with(name, q, k, v), ref, rtol=1e-5, atol=1e-6, what=name)
    out, lse = A.attention_lse_with(name, q, k, v)
    ref_out, ref_lse = A.attention_lse_ref(q, k, v)
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert_close(out, ref_out, rtol=1e-5, atol=1e-6, what=f"{name} lse out")
    assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5, what=f"{name} lse")
    mask = torch.ones(q.shape[0], k.shape[2], dtype=torch.bool)
    mask[0, 7:] = False
    assert_close(A.attention_with(name, q, k, v, mask), A.attention_ref(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nhd", [True, False], ids=["nhd", "hnd"])
def test_fold_batch_round_trip(nhd):
    q, _, _ = qkv(nhd=nhd)
    folded = A.fold_batch(q)
    assert folded.shape == (1, q.shape[1], q.shape[0] * q.shape[2], q.shape[3])
    if nhd:
        assert folded.data_ptr() == q.data_ptr()  # a view: no copy of the queries
    assert torch.equal(A.unfold_batch(folded, q.shape[0]), q)


@pytest.mark.parametrize("name", ["sdpa", "math"])
def test_prefix_attention_with_equals_concatenation_cpu(name):
    q, k, v = qkv()
    kp, vp = (x[:1] for x in qkv(Sk=17, seed=3)[1:])
    want = A.attention_ref(q, torch.cat([kp.expand(2, -1, -1, -1), k], 2), torch.cat([vp.expand(2, -1, -1, -1), v], 2))
    assert_close(A.prefix_attention_with(name, q, k, v, kp, vp), want, rtol=1e-5, atol=1e-6, what=name)


def attention_bf16_torch(q, k, v):
    """The STYLE #9 baseline: attention as plain bf16 PyTorch computes it (bf16 scores, fp32 softmax, bf16 P@V)."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return s.float().softmax(-1).to(q.dtype) @ v


def _bf16_bound(out, ref32, base):
    e, b = (out.float() - ref32).abs(), (base.float() - ref32).abs()
    assert e.max() <= 2 * b.max() + 1e-6 and e.mean() <= 2 * b.mean() + 1e-6, (e.max(), b.max(), e.mean(), b.mean())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["fa3", "cudnn", "flash", "efficient", "sdpa"])
def test_cuda_backends_within_bf16_precision(name):
    """Each backend on bf16 NHD-strided inputs vs the fp32 reference, bounded by plain bf16 PyTorch attention
    (STYLE #9); the LSE and prefix variants too."""
    if name not in A.available_backends("cuda"):
        pytest.skip(f"{name} not available on this GPU")
    q, k, v = qkv(Sq=300, Sk=200, D=128, dtype=torch.bfloat16, device="cuda")
    ref32 = A.attention_ref(q.float(), k.float(), v.float())
    base = attention_bf16_torch(q, k, v)
    _bf16_bound(A.attention_with(name, q, k, v), ref32, base)
    out, lse = A.attention_lse_with(name, q, k, v)
    _bf16_bound(out, ref32, base)
    assert_close(lse, A.attention_lse_ref(q.float(), k.float(), v.float())[1], rtol=1e-3, atol=1e-3, what="lse")
    kp, vp = (x[:1] for x in qkv(Sq=1, Sk=130, D=128, dtype=torch.bfloat16, device="cuda", seed=4)[1:])
    kk, vv = torch.cat([kp.expand(2, -1, -1, -1), k], 2), torch.cat([vp.expand(2, -1, -1, -1), v], 2)
    ref32 = A.attention_ref(q.float(), kk.float(), vv.float())
    _bf16_bound(A.prefix_attention_with(name, q, k, v, kp, vp), ref32, attention_bf16_torch(q, kk, vv))
