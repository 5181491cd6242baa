"""Block-sparse attention (SPEC §5): selection and output against the original kernel's goldens, the custom op's
contract (opcheck, export, compile), and the Triton kernel under TRITON_INTERPRET=1 when triton is installed.

Goldens (tests/fixtures/golden/bsa.*): bf16 q, k, v, the original Triton kernel's bf16 output and its selected
block indices (descending score order) for three cases, produced on an H200.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lc_runtime.ops import block_sparse_attention, block_sparse_attention_ref
from lc_runtime.ops.block_sparse_attention import (
    ascending_selection,
    group_selection,
    num_selected_blocks,
    reorder_from_blocks,
    reorder_to_blocks,
    select_blocks,
    select_blocks_raster,
    sparse_attention_ref,
)

GOLDEN_CASES = ["cube8_s075", "q4k8_s075", "refine_default_s09375"]
# fp32 attention vs a float64 loop over the same selection: outputs are convex combinations of |v| < ~5 over at most
# 1,024 keys; fp32 rounding of the scores, the softmax sum and the PV sum stays below ~1e-6 here, 1e-5 leaves 10x.
FP32_ATOL = 1e-5
REPO = Path(__file__).resolve().parents[2]
OP = torch.ops.lc_runtime.block_sparse_attention.default


def block_tokens(latent_shape, chunk) -> torch.Tensor:
    """[N_blk, blk] raster token ids of each 3-D block, written out with loops (independent of the reorder code)."""
    (t, h, w), (ct, ch, cw) = latent_shape, chunk
    rows = []
    for bt in range(t // ct):
        for bh in range(h // ch):
            for bw in range(w // cw):
                rows.append(
                    [
                        ((bt * ct + dt) * h + bh * ch + dh) * w + bw * cw + dw
                        for dt in range(ct)
                        for dh in range(ch)
                        for dw in range(cw)
                    ]
                )
    return torch.tensor(rows)


def naive_block_attention(q, k, v, lq, lk, indices, counts, chunk=(4, 4, 4)) -> torch.Tensor:
    """Loop over (batch, head, query block): float64 softmax attention over the gathered selected key blocks."""
    qi, ki = block_tokens(lq, chunk), block_tokens(lk, chunk)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(qi.shape[0]):
                keys = ki[indices[b, h, i, : counts[b, h, i]]].flatten()
                s = q[b, h, qi[i]].double() @ k[b, h, keys].double().T / math.sqrt(q.shape[-1])
                out[b, h, qi[i]] = torch.softmax(s, dim=-1) @ v[b, h, keys].double()
    return out


def blocky(shape, latent_shape, strength, seed, chunk=(4, 4, 4)) -> torch.Tensor:
    """Random [B, H, S, D] plus a per-block random offset: peaked gating scores (so cdf counts vary)."""
    g = torch.Generator().manual_seed(seed)
    b, h, _, d = shape
    nb = [s // c for s, c in zip(latent_shape, chunk)]
    offset = torch.randn(b, h, *nb, d, generator=g)
    for axis, c in enumerate(chunk):
        offset = offset.repeat_interleave(c, dim=2 + axis)
    return torch.randn(shape, generator=g) + strength * offset.flatten(2, 4)


def assert_within_precision(actual, ref, baseline, what, k=2.0):
    """STYLE #9: err(actual vs ref) <= k * err(baseline vs ref), for the max and the mean absolute error.

    ``baseline`` is the same computation done in the low precision (e.g. bf16 torch vs the fp32 reference).
    """
    err = (actual.double() - ref.double()).abs()
    base = (baseline.double() - ref.double()).abs()
    msg = (
        f"{what}: max err {err.max().item():.3e} (bound {k * base.max().item():.3e}), "
        f"mean err {err.mean().item():.3e} (bound {k * base.mean().item():.3e})"
    )
    assert base.max() > 0, f"{what}: degenerate baseline (zero error)"
    assert err.max() <= k * base.max() and err.mean() <= k * base.mean(), msg


def golden_case(golden, name):
    case = golden("bsa")
    meta = case.meta[name]
    q, k, v = (case[f"{name}.{n}"] for n in "qkv")
    return meta, q, k, v, case[f"{name}.out"], case[f"{name}.block_indices"], case[f"{name}.block_indices_lens"]


def golden_references(meta, q, k, v, idx, lens):
    """(fp32 reference, bf16 torch computation) of a golden case's attention over its golden selection, raster
    order: the pair that bounds a bf16 kernel's error (STYLE #9)."""
    lq, lk, chunk = meta["latent_shape_q"], meta["latent_shape_k"], meta["chunk_3d_shape"]
    blk = math.prod(chunk)
    qb, kb, vb = reorder_to_blocks(q, lq, chunk), reorder_to_blocks(k, lk, chunk), reorder_to_blocks(v, lk, chunk)
    ref32 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, lens, blk, blk), lq, chunk)
    ref16 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, lens, blk, blk, upcast=False), lq, chunk)
    return ref32, ref16


# ---------------------------------------------------------------------------------------------- reorder


def test_reorder_matches_block_order_and_round_trips():
    lat, chunk = (8, 4, 12), (4, 2, 4)
    s = math.prod(lat)
    ids = torch.arange(s).view(1, 1, s, 1)
    blocked = reorder_to_blocks(ids, lat, chunk)
    assert torch.equal(blocked.flatten(), block_tokens(lat, chunk).flatten())
    x = torch.randn(2, 3, s, 5)
    assert torch.equal(reorder_from_blocks(reorder_to_blocks(x, lat, chunk), lat, chunk), x)


@pytest.mark.parametrize(
    ("latent_shape", "seq_len", "needle"),
    [((5, 8, 8), 320, "(5, 8, 8)"), ((4, 8, 8), 300, "(4, 8, 8)"), ((4, 8), 32, "(4, 8)")],
)
def test_reorder_rejects_bad_grids(latent_shape, seq_len, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        reorder_to_blocks(torch.zeros(1, 1, seq_len, 4), latent_shape)


# ---------------------------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_selection_matches_golden_exactly(golden, name):
    meta, q, k, v, _, gold_idx, gold_lens = golden_case(golden, name)
    lq, lk, chunk = meta["latent_shape_q"], meta["latent_shape_k"], meta["chunk_3d_shape"]
    blk = math.prod(chunk)
    idx, counts = select_blocks(
        reorder_to_blocks(q, lq, chunk), reorder_to_blocks(k, lk, chunk), blk, blk, meta["sparsity"]
    )
    assert counts.tolist() == gold_lens.tolist()
    assert idx.shape == gold_idx.shape
    # ordered (the golden lists blocks by descending score) ...
    assert torch.equal(idx, gold_idx), f"{name}: selection differs from the original kernel's"
    # ... and as sets per query block
    assert [set(r) for r in idx.flatten(0, 2).tolist()] == [set(r) for r in gold_idx.flatten(0, 2).tolist()]
    # the CUDA path pools straight from the raster layout: same selection
    idx_raster, _ = select_blocks_raster(q, k, lq, lk, meta["sparsity"], None, chunk)
    assert torch.equal(idx_raster, gold_idx)


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_reference_matches_golden_output(golden, name):
    meta, q, k, v, gold_out, gold_idx, gold_lens = golden_case(golden, name)
    lq, lk, chunk = meta["latent_shape_q"], meta["latent_shape_k"], meta["chunk_3d_shape"]
    ref32, ref16 = golden_references(meta, q, k, v, gold_idx, gold_lens)
    # The original kernel (bf16 in/out, fp32 accumulation, bf16 P) must sit within bf16 precision of the fp32
    # reference: no further from it than 2x a plain bf16 computation of the same attention.
    assert_within_precision(gold_out, ref32, ref16, f"{name}: golden vs fp32 reference")
    # independent loop implementation agrees with the mask-based reference to fp32 rounding
    naive = naive_block_attention(q, k, v, lq, lk, *select_blocks_raster(q, k, lq, lk, meta["sparsity"], None, chunk))
    torch.testing.assert_close(ref32.double(), naive, rtol=0, atol=FP32_ATOL)
    # the public reference and the op (CPU) return the fp32 result rounded to bf16
    out_ref = block_sparse_attention_ref(q, k, v, lq, lk, meta["sparsity"], None, chunk)
    out_op = block_sparse_attention(q, k, v, lq, lk, meta["sparsity"], None, chunk)
    assert out_op.dtype == torch.bfloat16 and out_op.shape == gold_out.shape
    assert torch.equal(out_ref, ref32.to(torch.bfloat16)) and torch.equal(out_op, out_ref)
    assert_within_precision(out_op, ref32, ref16, f"{name}: op vs fp32 reference")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernels)")
@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_op_on_cuda_matches_golden(golden, name):
    """The op on the GPU with its default launch configuration (the Gluon kernel on sm_90) and every kernel variant:
    the golden selection exactly, outputs within bf16 precision of the fp32 reference."""
    from lc_runtime.ops import triton_bsa

    meta, q, k, v, gold_out, gold_idx, gold_lens = golden_case(golden, name)
    lq, lk, chunk = meta["latent_shape_q"], meta["latent_shape_k"], meta["chunk_3d_shape"]
    ref32, ref16 = golden_references(meta, q, k, v, gold_idx, gold_lens)
    qc, kc, vc = (x.cuda() for x in (q, k, v))
    idx, counts = select_blocks_raster(qc, kc, lq, lk, meta["sparsity"], None, chunk)
    assert torch.equal(idx.cpu(), gold_idx) and torch.equal(counts.cpu(), gold_lens)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    sm90 = torch.cuda.get_device_capability()[0] == 9
    expected = triton_bsa.GLUON_CONFIG if sm90 else triton_bsa.TMA_CONFIG if hopper else triton_bsa.DEFAULT_CONFIG
    assert triton_bsa.default_config(qc) == expected
    out = block_sparse_attention(qc, kc, vc, lq, lk, meta["sparsity"], None, chunk)
    assert_within_precision(out.cpu(), ref32, ref16, f"{name}: op (default config) on CUDA")
    configs = [triton_bsa.DEFAULT_CONFIG, triton_bsa.GROUPED_CONFIG]
    configs += [triton_bsa.TMA_CONFIG, triton_bsa.BsaKernelConfig(n_sub=2, tma=True, kv_passes=2)] if hopper else []
    # (version, ring depth, key-range passes)
    gluon = [(1, 2, 1), (1, 3, 1), (1, 2, 2), (2, 2, 1), (2, 3, 3), (3, 2, 1), (3, 3, 1), (3, 3, 3)]
    configs += [triton_bsa.BsaKernelConfig(num_stages=s, tma=True, kv_passes=p, gluon=g) for g, s, p in gluon] * hopper
    # rotated walks (the sm_90 default is R = 2): other turn lengths, and version 1 (one block per step)
    rotated = [(3, 1), (3, 4), (1, 2)]
    configs += [triton_bsa.BsaKernelConfig(tma=True, kv_passes=1, gluon=g, rotate=r) for g, r in rotated] * hopper
    # K/V boxes from the raster layout (5-D TMA; the sm_90 default) in each version, passes and rotated walks
    raster = [(1, 2, 1, 0), (2, 3, 3, 0), (3, 3, 1, 0), (3, 3, 3, 0), (3, 3, 1, 1), (1, 3, 1, 2)]
    raster += [(4, 3, 1, 0), (4, 2, 3, 0), (4, 3, 1, 2), (4, 3, 3, 0)]  # version 4: a load warp of its own
    configs += [
        triton_bsa.BsaKernelConfig(num_stages=s, tma=True, kv_passes=p, gluon=g, rotate=r, raster=True)
        for g, s, p, r in raster
    ] * hopper
    for cfg in configs:
        out = triton_bsa.bsa_forward(qc, kc, vc, idx, counts, lq, lk, chunk, cfg)
        assert_within_precision(out.cpu(), ref32, ref16, f"{name}: {cfg}")
    if sm90:  # deterministic mode: key-range passes instead of rotated walks, the same bits on every run
        torch.use_deterministic_algorithms(True)
        try:
            assert triton_bsa.default_config(qc) == triton_bsa.GLUON_DETERMINISTIC_CONFIG
            runs = [block_sparse_attention(qc, kc, vc, lq, lk, meta["sparsity"], None, chunk) for _ in range(3)]
        finally:
            torch.use_deterministic_algorithms(False)
        assert all(torch.equal(runs[0], r) for r in runs[1:])
        assert_within_precision(runs[0].cpu(), ref32, ref16, f"{name}: op, deterministic")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs an sm_90 GPU (Gluon)"
)
def test_gluon_raster_reads_give_the_bits_of_block_major_copies():
    """The Gluon kernel reading K/V boxes from the raster layout (5-D TMA) computes exactly what it computes from
    block-major copies (same boxes, same order: the same bits), for every layout ``raster_view`` accepts (batch folded
    into heads or into frames, strided heads) and for those it refuses (the op copies instead), with a key grid longer
    than the query grid (a conditioned call)."""
    from lc_runtime.ops import triton_bsa

    if triton_bsa._gluon_module() is None:
        pytest.skip("Gluon unavailable")
    lq, chunk = (4, 8, 12), (4, 4, 4)
    lk = (lq[0] + 4, *lq[1:])  # 4 more frames of keys
    base = triton_bsa.BsaKernelConfig(num_stages=3, kv_passes=1, tma=True, gluon=3)
    for name, make, ok in _raster_layouts():
        q = make(2, 3, math.prod(lq), 64, "cuda")
        k, v = (make(2, 3, math.prod(lk), 64, "cuda") for _ in range(2))
        assert (triton_bsa.raster_kv(q, k, v, lk, chunk, dataclasses.replace(base, raster=True)) is not None) == ok
        idx, counts = select_blocks_raster(q, k, lq, lk, 0.5, None, chunk)
        copies = triton_bsa.bsa_forward(q, k, v, idx, counts, lq, lk, chunk, base)
        out = triton_bsa.bsa_forward(q, k, v, idx, counts, lq, lk, chunk, dataclasses.replace(base, raster=True))
        assert torch.equal(out, copies), name
        blocks = [reorder_to_blocks(x.cpu(), lat, chunk) for x, lat in ((q, lq), (k, lk), (v, lk))]
        refs = [sparse_attention_ref(*blocks, idx.cpu(), counts.cpu(), upcast=up) for up in (True, False)]
        ref32, ref16 = (reorder_from_blocks(r, lq, chunk) for r in refs)
        assert_within_precision(copies.cpu(), ref32, ref16, f"{name}: kernel")
        assert_within_precision(block_sparse_attention(q, k, v, lq, lk, 0.5, None, chunk).cpu(), ref32, ref16, name)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs an sm_90 GPU (Gluon)"
)
def test_gluon_load_warp_gives_the_bits_of_version_3():
    """Version 4 (every TMA load from a warp of its own, ring slots handed over through mbarriers) runs version 3's
    arithmetic in version 3's order: the same bits, in every mode whose walk order does not depend on timing (one pass,
    key-range passes; ring depths 2 and 3; block-major copies or raster reads; odd and even counts; a key grid longer
    than the query grid; two batches; head dims 64 and 128)."""
    from lc_runtime.ops import triton_bsa

    if triton_bsa._gluon_module() is None:
        pytest.skip("Gluon unavailable")
    gen = torch.Generator(device="cuda").manual_seed(5)
    lq, chunk = (8, 8, 12), (4, 4, 4)
    lk = (lq[0] + 4, *lq[1:])
    for d, sparsity in ((64, 0.5), (128, 0.75), (128, 0.9)):  # 36 key blocks: 18, 9 (odd), 3 (odd) selected
        q = torch.randn(2, 3, math.prod(lq), d, device="cuda", dtype=torch.bfloat16, generator=gen)
        k, v = (torch.randn(2, 3, math.prod(lk), d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in "kv")
        idx, counts = select_blocks_raster(q, k, lq, lk, sparsity, None, chunk)
        for stages, passes, raster in ((3, 1, True), (3, 3, True), (2, 1, True), (2, 1, False), (3, 2, False)):
            v3 = triton_bsa.BsaKernelConfig(num_stages=stages, kv_passes=passes, tma=True, gluon=3, raster=raster)
            want = triton_bsa.bsa_forward(q, k, v, idx, counts, lq, lk, chunk, v3)
            v4 = dataclasses.replace(v3, gluon=4)
            got = triton_bsa.bsa_forward(q, k, v, idx, counts, lq, lk, chunk, v4)
            assert torch.equal(got, want), (d, sparsity, v4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernels)")
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_op_replays_in_a_cuda_graph(golden, deterministic):
    """The op's CUDA path (the rotated walks' progress counter zeroed per call) captures into a CUDA graph, as the
    engines capture the DiT; replays give the golden-precision result (and, in deterministic mode, the eager run's
    bits)."""
    meta, q, k, v, _, gold_idx, gold_lens = golden_case(golden, GOLDEN_CASES[0])
    lq, lk, chunk = meta["latent_shape_q"], meta["latent_shape_k"], meta["chunk_3d_shape"]
    ref32, ref16 = golden_references(meta, q, k, v, gold_idx, gold_lens)
    qc, kc, vc = (x.cuda() for x in (q, k, v))
    torch.use_deterministic_algorithms(deterministic)
    try:
        run = lambda: block_sparse_attention(qc, kc, vc, lq, lk, meta["sparsity"], None, chunk)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (compiles) off the capturing stream, as torch.cuda.graph wants
            eager = run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = run()
        for _ in range(2):
            static.zero_()
            graph.replay()
            torch.cuda.synchronize()
            assert_within_precision(static.cpu(), ref32, ref16, f"graph replay (deterministic={deterministic})")
            assert not deterministic or torch.equal(static, eager)
    finally:
        torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------------------------------------- modes / shapes


def test_sparsity_zero_is_dense_attention():
    lat = (4, 8, 8)
    q, k, v = (torch.randn(1, 2, 256, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = block_sparse_attention_ref(q, k, v, lat, lat, sparsity=0.0)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, dense, rtol=0, atol=FP32_ATOL)


def test_cdf_mode_selection_semantics():
    lat, chunk = (8, 8, 8), (4, 4, 4)
    q = blocky((2, 2, 512, 32), lat, 0.8, seed=0)
    k = blocky((2, 2, 512, 32), lat, 0.8, seed=1)
    nk = 8
    idx, counts = select_blocks_raster(q, k, lat, lat, None, 0.6, chunk)
    assert idx.shape == (2, 2, 8, nk) and counts.min() >= 1 and counts.max() <= nk
    assert len(set(counts.flatten().tolist())) > 1, "test data should give varying counts"
    # recompute the sorted cumulative mass: the count is the number of cdf entries <= threshold (kept >= 1)
    scores = _pooled(q, lat) @ _pooled(k, lat).transpose(-1, -2)
    probs = torch.softmax(scores / math.sqrt(32), dim=-1)
    sorted_probs = probs.gather(-1, idx)
    assert torch.all(sorted_probs[..., :-1] >= sorted_probs[..., 1:]), "cdf order is descending probability"
    cdf = sorted_probs.cumsum(-1)
    expect = (cdf <= 0.6).sum(-1).clamp(min=1)
    assert torch.equal(counts, expect)
    # a larger threshold never selects fewer blocks
    _, counts_hi = select_blocks_raster(q, k, lat, lat, None, 0.9, chunk)
    assert torch.all(counts_hi >= counts)
    # cdf + topk: the larger of both counts, the same descending order
    k_sel = num_selected_blocks(nk, 0.5)
    idx_both, counts_both = select_blocks_raster(q, k, lat, lat, 0.5, 0.6, chunk)
    assert torch.equal(counts_both, counts.clamp(min=k_sel))
    assert torch.equal(idx_both, idx)
    topk_idx, _ = select_blocks_raster(q, k, lat, lat, 0.5, None, chunk)
    assert torch.equal(idx_both[..., :k_sel], topk_idx)
    # output: exact attention over the variable-length selection
    v = torch.randn(2, 2, 512, 32)
    out = block_sparse_attention_ref(q, k, v, lat, lat, None, 0.6, chunk)
    torch.testing.assert_close(
        out.double(), naive_block_attention(q, k, v, lat, lat, idx, counts), rtol=0, atol=FP32_ATOL
    )


def _pooled(x, lat):
    return reorder_to_blocks(x, lat).unflatten(2, (-1, 64)).mean(3)


def test_different_query_and_key_grids():
    lq, lk = (4, 8, 8), (12, 8, 8)
    q = blocky((1, 3, 256, 32), lq, 1.0, seed=2)
    k = blocky((1, 3, 768, 32), lk, 1.0, seed=3)
    v = torch.randn(1, 3, 768, 32)
    idx, counts = select_blocks_raster(q, k, lq, lk, 0.75, None)
    assert idx.shape == (1, 3, 4, 3) and torch.all(counts == 3)
    out = block_sparse_attention(q, k, v, lq, lk, sparsity=0.75)
    assert out.shape == q.shape
    torch.testing.assert_close(
        out.double(), naive_block_attention(q, k, v, lq, lk, idx, counts), rtol=0, atol=FP32_ATOL
    )


def test_tiny_grid_keeps_one_block():
    # int((1 - 0.9375) * 8) = 0: the op keeps one block instead of dividing 0 by 0 (module note)
    lat = (8, 8, 8)
    q, k, v = (torch.randn(1, 1, 512, 16) for _ in range(3))
    idx, counts = select_blocks_raster(q, k, lat, lat, 0.9375, None)
    assert idx.shape[-1] == 1 and torch.all(counts == 1)
    assert torch.isfinite(block_sparse_attention(q, k, v, lat, lat)).all()


def test_ascending_selection_keeps_the_sets():
    lat = (8, 8, 8)
    q = blocky((1, 2, 512, 32), lat, 3.0, seed=4)
    k = blocky((1, 2, 512, 32), lat, 3.0, seed=5)
    idx, counts = select_blocks_raster(q, k, lat, lat, None, 0.6)
    asc = ascending_selection(idx, counts)
    for row, row_asc, n in zip(idx.flatten(0, 2).tolist(), asc.flatten(0, 2).tolist(), counts.flatten().tolist()):
        assert row_asc[:n] == sorted(row[:n]) and all(0 <= j < 8 for j in row_asc)


@pytest.mark.parametrize(("group", "mode"), [((1, 2), "topk"), ((2, 2), "cdf"), ((1, 1), "cdf"), ((2, 4), "topk")])
def test_group_selection_is_the_union_of_neighbours(group, mode):
    lat = (8, 12, 8)  # 2 x 3 x 2 blocks: 2 x 2 groups along (h, w) are partial at the h edge
    q = blocky((2, 2, 768, 16), lat, 2.0, seed=6)
    k = blocky((2, 2, 768, 16), lat, 2.0, seed=7)
    sparsity, cdf = (0.75, None) if mode == "topk" else (None, 0.5)
    idx, counts = select_blocks_raster(q, k, lat, lat, sparsity, cdf)
    idx_unordered, _ = select_blocks_raster(q, k, lat, lat, sparsity, cdf, order="any")
    nt, nh, nw = 2, 3, 2
    gh, gw = group
    for selection in (idx, idx_unordered):
        union, bits, n = group_selection(selection, counts, (nt, nh, nw), group)
        ghn, gwn = -(-nh // gh), -(-nw // gw)
        assert union.shape == (2, 2, nt * ghn * gwn, gh * gw * idx.shape[-1]) and bits.dtype == torch.int32
        for b in range(2):
            for h in range(2):
                for gi in range(nt * ghn * gwn):
                    t, rest = divmod(gi, ghn * gwn)
                    expect = {}  # key block -> member bits, written out with loops
                    for j in range(gh * gw):
                        bh, bw = (rest // gwn) * gh + j // gw, (rest % gwn) * gw + j % gw
                        if bh < nh and bw < nw:
                            qi = (t * nh + bh) * nw + bw
                            for blk in selection[b, h, qi, : counts[b, h, qi]].tolist():
                                expect[blk] = expect.get(blk, 0) | (1 << j)
                    size = int(n[b, h, gi])
                    assert union[b, h, gi, :size].tolist() == sorted(expect)
                    assert bits[b, h, gi, :size].tolist() == [expect[x] for x in sorted(expect)]
                    assert not union[b, h, gi, size:].any() and not bits[b, h, gi, size:].any()
    if group == (1, 1):
        assert torch.equal(union, ascending_selection(idx, counts)) and torch.equal(n, counts)


def test_unordered_selection_has_the_same_sets():
    lat = (8, 8, 8)
    q, k = blocky((1, 2, 512, 32), lat, 1.0, seed=8), blocky((1, 2, 512, 32), lat, 1.0, seed=9)
    idx, counts = select_blocks_raster(q, k, lat, lat, 0.75, None)
    idx_u, counts_u = select_blocks_raster(q, k, lat, lat, 0.75, None, order="any")
    assert torch.equal(counts, counts_u)
    assert torch.equal(idx.sort(-1).values, idx_u.sort(-1).values)


def test_strided_inputs_give_the_same_result():
    lat = (4, 8, 8)
    q, k, v = (torch.randn(1, 256, 2, 32) for _ in range(3))  # [B, S, H, D] storage, viewed as [B, H, S, D]
    args = (lat, lat, 0.5)
    out = block_sparse_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), *args)
    assert out.stride() == q.transpose(1, 2).stride(), "the output keeps q's [B, S, H, D] storage"
    contiguous = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    assert torch.equal(out, block_sparse_attention(*contiguous, *args))


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "lq", "lk", "kwargs", "needle"),
    [
        ((1, 2, 256, 32), (1, 2, 256, 32), (4, 8, 4), (4, 8, 8), {}, "(4, 8, 4)"),
        ((1, 2, 320, 32), (1, 2, 320, 32), (5, 8, 8), (5, 8, 8), {}, "(5, 8, 8)"),
        ((1, 2, 256, 32), (1, 3, 256, 32), (4, 8, 8), (4, 8, 8), {}, "[1, 3, 256, 32]"),
        ((2, 256, 32), (2, 256, 32), (4, 8, 8), (4, 8, 8), {}, "[2, 256, 32]"),
        ((1, 2, 256, 32), (1, 2, 256, 32), (4, 8, 8), (4, 8, 8), {"sparsity": 1.0}, "1.0"),
        ((1, 2, 256, 32), (1, 2, 256, 32), (4, 8, 8), (4, 8, 8), {"sparsity": None}, "neither"),
        ((1, 2, 256, 32), (1, 2, 256, 32), (4, 8, 8), (4, 8, 8), {"chunk_3d_shape": (4, 3, 4)}, "(4, 3, 4)"),
    ],
)
def test_bad_inputs_raise_value_error(q_shape, k_shape, lq, lk, kwargs, needle):
    q, k = torch.zeros(q_shape), torch.zeros(k_shape)
    with pytest.raises(ValueError, match=re.escape(needle)):
        block_sparse_attention(q, k, k, lq, lk, **kwargs)


# ---------------------------------------------------------------------------------------------- op contract


@pytest.mark.parametrize(
    ("dtype", "sparsity", "cdf"), [(torch.bfloat16, 0.75, None), (torch.float32, None, 0.5), (torch.float32, 0.5, 0.3)]
)
def test_opcheck(dtype, sparsity, cdf):
    lq, lk = (4, 8, 8), (8, 8, 8)
    q = torch.randn(1, 2, 256, 32).to(dtype)
    k, v = (torch.randn(1, 2, 512, 32).to(dtype) for _ in range(2))
    torch.library.opcheck(OP, (q, k, v, list(lq), list(lk), sparsity, cdf, [4, 4, 4]))


class _TinyAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return block_sparse_attention(q, k, v, (4, 8, 8), (8, 8, 8), sparsity=0.75)


def test_export_keeps_the_op():
    q = torch.randn(1, 2, 256, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 512, 32, dtype=torch.bfloat16) for _ in range(2))
    ep = torch.export.export(_TinyAttention(), (q, k, v))
    assert any(node.target is OP for node in ep.graph.nodes), ep.graph
    assert torch.equal(ep.module()(q, k, v), _TinyAttention()(q, k, v))


def test_compile_fullgraph():
    q = torch.randn(1, 2, 256, 32)
    k, v = (torch.randn(1, 2, 512, 32) for _ in range(2))
    compiled = torch.compile(_TinyAttention(), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), _TinyAttention()(q, k, v))


# ---------------------------------------------------------------------------------------------- Triton kernel


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
def test_triton_kernel_in_interpreter():
    """Runs the Triton kernel on CPU (TRITON_INTERPRET=1, in a subprocess: the flag is read when kernels are
    defined) on the goldens (bf16) and on random fp32 cases (both selection orders, tail masking, strided layout,
    different q/k grids, cdf counts, grouped query blocks incl. partial groups at the grid edge, the TMA variant)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, __file__, "--interpreter-worker"], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(records) >= 10
    for r in records:
        # bf16 cases: kernel and original kernel vs the fp32 reference, bound by 2x a bf16 torch computation;
        # fp32 cases: kernel vs a float64 reference, bound by 2x the fp32 torch reference's own error.
        assert r["max_err"] <= 2 * r["max_base"] and r["mean_err"] <= 2 * r["mean_base"], r
        if "max_vs_golden" in r:
            assert r["max_vs_golden"] <= 2 * r["max_base"], r
        assert r.get("same_as_one_pass", True), r
        assert r.get("max_vs_ungrouped", 0.0) <= FP32_ATOL, r
        assert r.get("copies_equal", True) and r.get("means_ok", True) and r.get("selection_is_golden", True), r
    assert sum("fused prep" in r["case"] for r in records) == len(GOLDEN_CASES) + 6


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
@pytest.mark.parametrize(
    "cfg, needle",
    [
        (dict(tma=True, group_w=2), "TMA kernel"),  # the TMA kernels take no groups and one or two blocks per step
        (dict(tma=True, n_sub=4), "TMA kernel"),
        (dict(tma=False, gluon=1), "the Gluon kernel"),  # the Gluon kernel: TMA, 4 warps, n_sub 1, version 1-4
        (dict(tma=True, gluon=1, n_sub=2), "the Gluon kernel"),
        (dict(tma=True, gluon=5, num_stages=3), "the Gluon kernel"),
        (dict(tma=True, gluon=4, num_warps=8), "the Gluon kernel"),
        (dict(tma=True, rotate=2, kv_passes=1), "rotated walks"),  # rotated walks: Gluon kernel, one pass
        (dict(tma=True, gluon=3, rotate=2, kv_passes=3), "rotated walks"),
        (dict(tma=True, raster=True), "raster K/V reads"),  # 5-D raster boxes: the Gluon kernel's
    ],
)
def test_tma_and_gluon_configs_refuse_what_their_kernel_is_not(cfg, needle):
    from lc_runtime.ops.triton_bsa import BsaKernelConfig, bsa_forward

    q = torch.randn(1, 1, 128, 32)
    idx, counts = select_blocks_raster(q, q, (2, 8, 8), (2, 8, 8), 0.5, None, (2, 4, 8))
    with pytest.raises(ValueError, match=needle):
        bsa_forward(q, q, q, idx, counts, (2, 8, 8), (2, 8, 8), (2, 4, 8), BsaKernelConfig(**cfg))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
def test_sm90_default_is_rotated_walks_unless_deterministic(monkeypatch):
    """On sm_90 the op runs the Gluon kernel with rotated walks (whose output bits depend on timing), and key-range
    passes (the same bits every run) under torch.use_deterministic_algorithms(True)."""
    from types import SimpleNamespace

    from lc_runtime.ops import triton_bsa

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(triton_bsa, "_gluon_runs_on", lambda device: True)
    q = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    assert triton_bsa.default_config(q) == triton_bsa.GLUON_CONFIG and triton_bsa.GLUON_CONFIG.rotate
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    det = triton_bsa.default_config(q)
    assert det == triton_bsa.GLUON_DETERMINISTIC_CONFIG and not det.rotate and det.gluon == 3


def _cubin_resources(kernel) -> dict:
    """Registers, stack and local (spill) bytes of a compiled kernel's cubin, read by Triton's bundled cuobjdump."""
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not tool.exists():
        pytest.skip("this Triton has no bundled cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
@pytest.mark.parametrize("version", [1, 2, 3, 4], ids=["gluon1", "gluon2", "gluon3", "gluon4"])
def test_gluon_kernel_compiles_for_sm90_two_programs_per_sm(version):
    """The op's sm_90 kernel (Gluon, which the Triton interpreter cannot run) compiled for sm_90 without a GPU, in the
    variants the op launches (first / middle / last key-range pass, one rotated pass; K/V boxes from block-major
    copies (2-D TMA) or the raster layout (5-D)): no spills, and registers and
    shared memory for two programs per SM (the occupancy its design and the H200 timings assume). Version 4 (a load
    warp beside the compute warpgroup) launches 8 warps capped at 128 registers and hands the compute warpgroup 232
    (setmaxnreg). The GPU tests check its results."""
    try:
        from lc_runtime.ops import gluon_bsa
    except (ImportError, AttributeError) as e:  # a Triton without this Gluon API: the op falls back, nothing to build
        pytest.skip(f"Gluon unavailable: {e}")
    sm_shared, reserved = 228 * 1024, 1024  # per SM on sm_90; the driver reserves 1 KB per program
    variants = [(True, True, False, False), (False, False, False, False), (False, True, False, False)]
    variants += [(True, True, True, False), (True, True, True, True), (False, False, False, True)]  # rotated, raster
    for first, last, rotate, raster in variants:
        kernel = gluon_bsa.compile_for_sm90(version, stages=3, first=first, last=last, rotate=rotate, raster=raster)
        ptx = kernel.asm["ptx"]
        assert ("cp.async.bulk.tensor.5d" in ptx) == raster and ("cp.async.bulk.tensor.2d" in ptx) != raster
        res = _cubin_resources(kernel)
        assert res["LOCAL"] == 0 and res["STACK"] == 0, res
        threads = 32 * kernel.metadata.num_warps
        assert threads == (256 if version == 4 else 128) and 2 * threads * res["REG"] <= 65536, res
        if version == 4:
            assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", ptx), "the compute warpgroup's registers"
        assert 2 * (kernel.metadata.shared + reserved) <= sm_shared, kernel.metadata.shared


def _raster_layouts():
    """(name, make(b, h, s, d, device) -> a random bf16 [b, h, s, d] view, whether the Gluon kernel reads it in place):
    the layouts it reads through a 5-D view (batch folded into heads or into frames, strided heads), and two it
    cannot (the op copies those)."""

    def bf16(*shape, device):
        return torch.randn(*shape, dtype=torch.bfloat16, device=device)

    return [
        ("[B, H, S, D]", lambda b, h, s, d, dev: bf16(b, h, s, d, device=dev), True),
        (
            "[B, S, H, D] seen as [B, H, S, D]",
            lambda b, h, s, d, dev: bf16(b, s, h, d, device=dev).transpose(1, 2),
            True,
        ),
        (
            "every other head of a [B, S, 2H, D] buffer",
            lambda b, h, s, d, dev: bf16(b, s, 2 * h, d, device=dev)[:, :, ::2].transpose(1, 2),
            True,
        ),
        (
            "heads 0..H-1 of [B, H + 1, S, D] (no fold)",
            lambda b, h, s, d, dev: bf16(b, h + 1, s, d, device=dev)[:, :h],
            False,
        ),
        (
            "one head broadcast over H (head stride 0)",
            lambda b, h, s, d, dev: bf16(b, 1, s, d, device=dev).expand(b, h, s, d),
            False,
        ),
        (
            "rows D + 1 apart (not 16-byte aligned)",
            lambda b, h, s, d, dev: bf16(b, h, s, d + 1, device=dev)[..., :d],
            False,
        ),
    ]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
def test_raster_view_boxes_are_the_3d_blocks():
    """The Gluon kernel's 5-D TMA view of raster K/V (``gluon_bsa.raster_view``), built here with as_strided: the
    [1, CT, CH, CW, D] box at the coordinates the kernel computes for (batch b, head h, key block n) is block n of
    ``reorder_to_blocks`` for every layout it accepts; layouts it cannot address give None (the op then copies)."""
    try:
        from lc_runtime.ops import gluon_bsa
    except (ImportError, AttributeError) as e:
        pytest.skip(f"Gluon unavailable: {e}")
    lat, chunk = (4, 8, 12), (4, 4, 4)
    nb = [n // c for n, c in zip(lat, chunk)]
    for name, make, ok in _raster_layouts():
        x = make(2, 3, math.prod(lat), 64, "cpu")
        view = gluon_bsa.raster_view(x, lat)
        assert (view is not None) == ok, name
        if view is None:
            continue
        shape, strides, xb, tb = view
        five = torch.as_strided(x, shape, strides, x.storage_offset())
        blocks = reorder_to_blocks(x, lat, chunk)
        for b in range(x.shape[0]):
            for h in range(x.shape[1]):
                for n in range(math.prod(nb)):
                    bt, bh, bw = n // (nb[1] * nb[2]), n // nb[2] % nb[1], n % nb[2]
                    t0 = b * tb + bt * chunk[0]
                    box = five[b * xb + h, t0 : t0 + 4, bh * 4 : bh * 4 + 4, bw * 4 : bw * 4 + 4]
                    assert torch.equal(box.reshape(64, -1), blocks[b, h, n * 64 : (n + 1) * 64]), (name, b, h, n)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
def test_blocks_and_means_and_kv_blocks_refuse_bad_inputs():
    """The sm_90 prep names what does not fit before launching anything: a block that is not a power of two, a grid
    the chunk does not tile, a run of blocks that is not a power of two, and TMA copies of the wrong shape handed to
    the kernel."""
    from lc_runtime.ops.triton_bsa import TMA_CONFIG, blocks_and_means, bsa_forward

    x = torch.randn(1, 2, 128, 32)
    with pytest.raises(ValueError, match="power-of-two block"):
        blocks_and_means(x.narrow(2, 0, 108), (3, 6, 6), (3, 3, 3))
    with pytest.raises(ValueError, match=r"latent shape \(2, 8, 4\) does not tile 128 tokens"):
        blocks_and_means(x.narrow(2, 0, 128), (2, 8, 4), (2, 4, 8))
    with pytest.raises(ValueError, match="run must be 0 or a power of two; got 3"):
        blocks_and_means(x, (2, 8, 8), (2, 4, 8), store=False, run=3)
    idx, counts = select_blocks_raster(x, x, (2, 8, 8), (2, 8, 8), 0.5, None, (2, 4, 8))
    bad = torch.empty(2 * 128, 16)
    with pytest.raises(ValueError, match=r"kv_blocks must be contiguous \[256, 32\]"):
        bsa_forward(x, x, x, idx, counts, (2, 8, 8), (2, 8, 8), (2, 4, 8), TMA_CONFIG, kv_blocks=(bad, bad))


def _errors(actual, ref, baseline) -> dict:
    err, base = (actual.double() - ref.double()).abs(), (baseline.double() - ref.double()).abs()
    return dict(max_err=err.max().item(), mean_err=err.mean().item(), max_base=base.max().item(),
                mean_base=base.mean().item())  # fmt: skip


def _fused_prep_record(case, q, k, v, lq, lk, chunk, sparsity, cdf, ref, baseline, fp32=False, golden=None) -> dict:
    """The op's sm_90 path (``_bsa_cuda`` with the TMA config: block-major k / v copies and block means from one
    Triton pass each) on CPU tensors under the interpreter, against the PyTorch pieces it replaces: the copies
    bitwise; the means (the copying pass's and the means-alone pass's, in runs of several lengths) bitwise for bf16
    inputs (an fp32 sum of 64 bf16 values, rounded to bf16), within an fp32 rounding for fp32 inputs (summation
    order); the op's output vs the reference and vs the TMA kernel run on
    ``select_blocks_raster``'s selection; with ``golden`` (out, block indices), the distance to the original's output
    and whether the selection is the golden one."""
    from lc_runtime.ops import triton_bsa
    from lc_runtime.ops.block_sparse_attention import _bsa_cuda, raster_block_means

    kb, k_mean = triton_bsa.blocks_and_means(k, lk, chunk)
    vb, none_mean = triton_bsa.blocks_and_means(v, lk, chunk, pool=False)
    none_blocks, q_mean = triton_bsa.blocks_and_means(q, lq, chunk, store=False)
    rec = dict(case=f"{case} fused prep (op's TMA path)")
    copies = [torch.equal(blocks, reorder_to_blocks(x, lk, chunk).flatten(0, 2)) for blocks, x in ((kb, k), (vb, v))]
    rec["copies_equal"] = all(copies) and none_mean is None and none_blocks is None
    means = [(k_mean, raster_block_means(k, lk, chunk)), (q_mean, raster_block_means(q, lq, chunk))]
    # the means-alone pass (q's above) in runs of 1, 2, 8 blocks along w (the default: MEANS_RUN = 4), and as one
    # program per block (run=0, the copying pass's programs)
    for run in (0, 1, 2, 8):
        means.append((triton_bsa.blocks_and_means(k, lk, chunk, store=False, run=run)[1], means[0][1]))
    mean_diff = max((mean - ref_mean).abs().max().item() for mean, ref_mean in means)
    rec["means_ok"] = mean_diff <= (1e-6 if fp32 else 0.0)
    old = triton_bsa.set_default_config(triton_bsa.TMA_CONFIG)
    try:
        out = _bsa_cuda(q, k, v, lq, lk, sparsity, cdf, chunk)
    finally:
        triton_bsa.set_default_config(old)
    idx, counts = select_blocks_raster(q, k, lq, lk, sparsity, cdf, chunk)
    direct = triton_bsa.bsa_forward(q, k, v, idx, counts, lq, lk, chunk, triton_bsa.TMA_CONFIG)
    rec |= _errors(out, ref, baseline)
    rec["same_as_one_pass"] = bool(torch.equal(out, direct))  # same selection, same kernel: the same bits
    if golden is not None:
        gold_out, gold_idx = golden
        rec["max_vs_golden"] = (out.double() - gold_out.double()).abs().max().item()
        rec["selection_is_golden"] = torch.equal(ascending_selection(idx, counts), gold_idx.sort(dim=-1).values)
    return rec


def _interpreter_worker():
    from interpreter_shims import install_interpreter_shims

    install_interpreter_shims()
    from safetensors.torch import load_file

    from lc_runtime.ops.triton_bsa import BsaKernelConfig, bsa_forward

    records = []
    golden = load_file(str(REPO / "tests/fixtures/golden/bsa.safetensors"))
    meta = json.loads((REPO / "tests/fixtures/golden/bsa.json").read_text())
    for name in GOLDEN_CASES:
        m = meta[name]
        q, k, v = (golden[f"{name}.{n}"] for n in "qkv")
        lq, lk, chunk = m["latent_shape_q"], m["latent_shape_k"], m["chunk_3d_shape"]
        idx, counts = select_blocks_raster(q, k, lq, lk, m["sparsity"], None, chunk)
        qb, kb, vb = reorder_to_blocks(q, lq, chunk), reorder_to_blocks(k, lk, chunk), reorder_to_blocks(v, lk, chunk)
        ref32 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, counts), lq, chunk)
        ref16 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, counts, upcast=False), lq, chunk)
        runs = [(1, 1, "score", (1, 1)), (1, 1, "ascending", (1, 1)), (2, 2, "ascending", (1, 1))]
        runs += [(1, 1, "ascending", (1, 2)), (1, 2, "ascending", (2, 2))]
        runs += [(1, 1, "tma", (1, 1)), (1, 2, "tma", (1, 1)), (2, 1, "tma", (1, 1)), (2, 2, "tma", (1, 1))]
        for n_sub, passes, order, (gh, gw) in runs:
            cfg = BsaKernelConfig(n_sub=n_sub, kv_passes=passes, group_h=gh, group_w=gw, tma=order == "tma")
            out = bsa_forward(
                q, k, v, idx, counts, lq, lk, chunk, cfg, order="as_given" if order == "score" else "sort"
            )
            case = f"golden {name} n_sub={n_sub} passes={passes} {order} group={gh}x{gw}"
            rec = dict(case=case, **_errors(out, ref32, ref16))
            rec["max_vs_golden"] = (out.double() - golden[f"{name}.out"].double()).abs().max().item()
            records.append(rec)
        gold = (golden[f"{name}.out"], golden[f"{name}.block_indices"])
        records.append(
            _fused_prep_record(f"golden {name}", q, k, v, lq, lk, chunk, m["sparsity"], None, ref32, ref16, golden=gold)
        )
    lq, lk = (4, 12, 8), (8, 8, 16)  # 1 x 3 x 2 query blocks: 2 x 2 groups are partial at the h edge
    for layout in ("bhsd", "bshd"):
        for sparsity, cdf in ((0.75, None), (None, 0.8), (0.75, 0.6)):
            q = blocky((1, 2, 384, 32), lq, 1.0, seed=10)
            k = blocky((1, 2, 1024, 32), lk, 1.0, seed=11)
            v = torch.randn(1, 2, 1024, 32)
            if layout == "bshd":
                q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
            idx, counts = select_blocks_raster(q, k, lq, lk, sparsity, cdf)
            qb, kb, vb = reorder_to_blocks(q, lq), reorder_to_blocks(k, lk), reorder_to_blocks(v, lk)
            ref64 = sparse_attention_ref(qb.double(), kb.double(), vb.double(), idx, counts, upcast=False)
            ref64 = reorder_from_blocks(ref64, lq)
            ref32 = reorder_from_blocks(sparse_attention_ref(qb, kb, vb, idx, counts), lq)
            one_pass = None
            runs = [(1, 1, 1, 1), (2, 1, 1, 1), (1, 3, 1, 1), (2, 4, 1, 1), (1, 1, 1, 2), (1, 3, 2, 2), (2, 2, 2, 1)]
            runs = [(*r, False) for r in (runs if layout == "bhsd" else runs[::3])] + [(1, 1, 1, 1, True)]
            runs += [(1, 3, 1, 1, True), (2, 1, 1, 1, True), (2, 3, 1, 1, True)] if layout == "bhsd" else []
            for n_sub, passes, gh, gw, tma in runs:
                cfg = BsaKernelConfig(n_sub=n_sub, kv_passes=passes, group_h=gh, group_w=gw, tma=tma)
                out = bsa_forward(q, k, v, idx, counts, lq, lk, (4, 4, 4), cfg)
                rec = _errors(out, ref64, ref32)
                case = f"fp32 {layout} sparsity={sparsity} cdf={cdf} n_sub={n_sub} passes={passes} group={gh}x{gw}"
                case += " tma" if tma else ""
                records.append(dict(case=case, **rec, counts=sorted(set(counts.flatten().tolist()))))
                # key-range passes carry the exact fp32 state, and the TMA kernel does the gathered kernel's
                # arithmetic in the same order: the same bits as one pass of the gathered kernel
                if n_sub == 1 and gh * gw == 1:
                    one_pass = out if one_pass is None else one_pass
                    records[-1]["same_as_one_pass"] = torch.equal(out, one_pass)
                elif gh * gw > 1:  # groups only add masked (exactly zero) terms: the same sums up to fp32 rounding
                    records[-1]["max_vs_ungrouped"] = (out - one_pass).abs().max().item()
            records.append(_fused_prep_record(f"fp32 {layout} sparsity={sparsity} cdf={cdf}", q, k, v, lq, lk,
                                              (4, 4, 4), sparsity, cdf, ref64, ref32, fp32=True))  # fmt: skip
    print(json.dumps(records))


if __name__ == "__main__" and "--interpreter-worker" in sys.argv:
    _interpreter_worker()
