"""Block-sparse 3-D attention of the refinement stage (SPEC §5), as the op ``lc_runtime::block_sparse_attention``.

Layout: ``q`` is [B, H, Sq, D], ``k`` and ``v`` are [B, H, Sk, D]; the sequence axis is the (t, h, w) raster order of
the latent token grid (``latent_shape_q`` = (T, H, W) tokens for the queries, ``latent_shape_k`` for the keys, which
may differ: the conditioned calls attend noise queries to cond+noise keys). Any strides are accepted as long as the
grid divides by ``chunk_3d_shape``.

Algorithm (the original's inference path):
1. cut each grid into 3-D blocks of ``chunk_3d_shape`` tokens (4x4x4 = 64), block index (t, h, w) row-major,
   token order inside a block (t, h, w);
2. gate: mean-pool q and k per block, pooled means rounded to the input dtype, scores = q̄·k̄ᵀ in fp32, no scale;
3. select per (batch, head, query block): top ``int((1 - sparsity) * Nk_blk)`` key blocks in descending score order
   (topk mode), or the smallest prefix of the descending softmax(score / sqrt(D)) whose cumulative sum stays
   <= ``cdf_threshold`` (cdf mode), or the longer of the two (both given);
4. exact softmax attention (scale 1/sqrt(D)) of each query block over the union of its selected key blocks;
5. write the output back in raster order.

Variable selection counts (cdf modes) use a padded representation: ``indices`` [B, H, Nq_blk, K_max] sorted by
descending score and ``counts`` [B, H, Nq_blk]; only the first ``counts`` entries of a row are selected. Shapes
never depend on data, so the op traces under torch.compile / torch.export and captures in CUDA graphs.

One deliberate deviation: a query block always keeps at least one key block (the formulas above can give 0 for tiny
grids or a cdf threshold below the top block's mass; the original then divides 0 by 0 and returns NaN).

CUDA selects with the Triton top-k of ``triton_topk.py`` (ascending indices in one pass, no sort) and runs the
Triton kernel of ``triton_bsa.py`` (key blocks in ascending order). On sm_90+ (the TMA kernel, which reads
block-major copies of k and v) one Triton pass per tensor makes k's copy and its block means, v's copy, and q's
means (``triton_bsa.blocks_and_means``); scores by a bf16 GEMM with fp32 output (:func:`block_scores`). (Copying v on
a side stream beside the selection was measured and dropped: no faster, bench/results/bsa_op_probe_*-s12*. So was
splitting the call into 2-16 head groups, each group's selection on a high-priority side stream while the kernel
attends the previous groups, on one or two kernel streams: 0.0593-0.0613 s against 0.0593-0.0594 s in one call,
commit 145769c, bench/results/bsa_op_probe_*-s15a-head-groups.)
Elsewhere on CUDA, q and k are pooled in torch straight from the raster layout and the gathered kernel reads the
raster layout. Every other device runs the fp32 PyTorch reference ``block_sparse_attention_ref``.

Pooling is an fp32 sum of the block's values, divided by the block size and rounded to the input dtype, as the
original; the order of the sum is not specified by it, and differs between the CPU reference, torch on CUDA and the
Triton pass. When a sum is inexact in fp32 the rounded mean can differ by one ulp between them: at the 720p refine
shape on iid bf16 inputs, 2 of 21.6 million means differed between the Triton pass and torch's pooling, and no
selection did (bench/bench_bsa.py records both).
"""

import functools
import math
from collections.abc import Sequence

import torch

from lc_runtime.ops.registry import defer_dynamo_import

__all__ = [
    "ascending_selection",
    "block_sparse_attention",
    "group_selection",
    "block_sparse_attention_ref",
    "num_selected_blocks",
    "reorder_from_blocks",
    "reorder_to_blocks",
    "select_blocks",
    "select_blocks_raster",
    "sparse_attention_ref",
    "topk_ascending_ref",
]

DEFAULT_CHUNK = (4, 4, 4)


def _block_grid(latent_shape: Sequence[int], chunk_3d_shape: Sequence[int], seq_len: int, what: str):
    """(Nt, Nh, Nw) blocks of a (T, H, W) token grid; ValueError naming the shapes when they don't fit."""
    shape, chunk = tuple(int(s) for s in latent_shape), tuple(int(c) for c in chunk_3d_shape)
    if len(shape) != 3 or len(chunk) != 3 or min(shape) < 1 or min(chunk) < 1:
        raise ValueError(f"{what}: latent shape {shape} and chunk_3d_shape {chunk} must be 3 positive ints (T, H, W)")
    if math.prod(shape) != seq_len:
        raise ValueError(f"{what}: latent shape {shape} has {math.prod(shape)} tokens but the sequence has {seq_len}")
    if any(s % c for s, c in zip(shape, chunk)):
        raise ValueError(f"{what}: latent shape {shape} is not divisible by chunk_3d_shape {chunk}")
    return tuple(s // c for s, c in zip(shape, chunk))


def reorder_to_blocks(x: torch.Tensor, latent_shape: Sequence[int], chunk_3d_shape=DEFAULT_CHUNK) -> torch.Tensor:
    """[B, H, S, D] in (t, h, w) raster order -> [B, H, S, D] in 3-D block order (a copy).

    Block n = (bt, bh, bw) row-major occupies rows [n * blk, (n + 1) * blk), blk = prod(chunk_3d_shape), with its
    tokens in (t, h, w) order. Raises ValueError when the grid is not divisible by the chunk.
    """
    b, h, s, d = x.shape
    nt, nh, nw = _block_grid(latent_shape, chunk_3d_shape, s, "reorder_to_blocks")
    ct, ch, cw = (int(c) for c in chunk_3d_shape)
    x = x.unflatten(2, (nt, ct, nh, ch, nw, cw)).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(b, h, s, d)


def reorder_from_blocks(x: torch.Tensor, latent_shape: Sequence[int], chunk_3d_shape=DEFAULT_CHUNK) -> torch.Tensor:
    """Inverse of :func:`reorder_to_blocks`: [B, H, S, D] block order -> raster order (a copy)."""
    b, h, s, d = x.shape
    nt, nh, nw = _block_grid(latent_shape, chunk_3d_shape, s, "reorder_from_blocks")
    ct, ch, cw = (int(c) for c in chunk_3d_shape)
    x = x.unflatten(2, (nt, nh, nw, ct, ch, cw)).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    return x.reshape(b, h, s, d)


def num_selected_blocks(num_key_blocks: int, sparsity: float) -> int:
    """Top-k count of SPEC §5 step 3, ``int((1 - sparsity) * Nk_blk)``, kept >= 1 (see the module note)."""
    return max(1, int((1 - sparsity) * num_key_blocks))


def _pooled_mean(x: torch.Tensor, dims: tuple[int, ...], count: int) -> torch.Tensor:
    # The original pools in the input dtype (bf16): the mean is accumulated in fp32 and rounded once to bf16.
    # Summing in fp32 and dividing by a power of two reproduces that rounding; the result goes back to fp32 because
    # the scores must be accumulated and kept in fp32 (rounding them to bf16 creates ties and changes the top-k).
    return (x.sum(dim=dims, dtype=torch.float32) / count).to(x.dtype).float()


def topk_ascending_ref(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the ``k`` largest scores of each row, ascending (int64); ties at the k-th largest value take the
    lowest columns (a stable descending sort). The reference of ``triton_topk.topk_ascending``."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k].sort(dim=-1).values


def _topk_ascending(scores: torch.Tensor, k: int) -> torch.Tensor:
    if scores.is_cuda:
        from lc_runtime.ops import triton_topk  # triton is only needed (and importable) on CUDA machines

        if scores.shape[-1] <= triton_topk.MAX_COLS:
            return triton_topk.topk_ascending(scores, k)
    return topk_ascending_ref(scores, k)  # other devices, and rows longer than one Triton program holds


SELECTION_ORDERS = ("descending", "any", "ascending")


@functools.cache
def _bmm_to_fp32_available(device_type: str) -> bool:
    """Whether this torch has ``torch.bmm(..., out_dtype=torch.float32)`` for bf16 inputs on the device."""
    try:
        x = torch.zeros(1, 16, 16, dtype=torch.bfloat16, device=device_type)
        return torch.bmm(x, x, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def block_scores(q_mean: torch.Tensor, k_mean: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gate scores q̄·k̄ᵀ in fp32, no scale (SPEC §5 step 2), of fp32 means [B, H, N, D].

    ``dtype``: the input dtype the means were rounded to. For bf16 / fp16 on CUDA the scores come from a tensor-core
    GEMM of the means in that dtype with fp32 accumulation and output: each product of two bf16 (fp16) values is
    exact in fp32, so it sums the same products as the fp32 matmul, in another order (as any two fp32 GEMMs may; the
    original multiplies its bf16 means too, SPEC §5 step 2). At the 720p refine shape on an H200: 0.3 ms against
    1.8 ms, and 3 (iid inputs) / 2 (RoPE-structured) of 84,480 query blocks select differently, near-ties that the
    two summation orders break differently (bench/bsa_op_probe.py, results/bsa_op_probe_nvidia-h200_20261122-s12a).
    Elsewhere: the fp32 matmul."""
    if dtype in (torch.bfloat16, torch.float16) and q_mean.is_cuda and _bmm_to_fp32_available(q_mean.device.type):
        qm, km = (x.to(dtype).flatten(0, 1) for x in (q_mean, k_mean))
        return torch.bmm(qm, km.transpose(1, 2), out_dtype=torch.float32).unflatten(0, q_mean.shape[:2])
    return torch.matmul(q_mean, k_mean.transpose(-1, -2))


def _select_from_means(q_mean, k_mean, sparsity, cdf_threshold, order="descending", dtype=None):
    """q_mean [B, H, Nq, D], k_mean [B, H, Nk, D] (fp32) -> (indices [B, H, Nq, K_max] int64, counts [B, H, Nq]).

    ``order`` of each row's selected blocks: "descending" score (the original's order), "any" (topk mode skips
    top-k's sort; for callers that re-sort anyway) or "ascending" block index (what the CUDA kernel visits; topk mode
    selects with one Triton pass on CUDA instead of top-k and a sort; padding slots of the cdf modes hold 0).
    ``dtype``: the input dtype the means were rounded to (see :func:`block_scores`)."""
    if order not in SELECTION_ORDERS:
        raise ValueError(f"selection order must be one of {SELECTION_ORDERS}; got {order!r}")
    if sparsity is None and cdf_threshold is None:
        raise ValueError("block-sparse attention needs sparsity, cdf_threshold or both; got neither")
    scores = block_scores(q_mean, k_mean, dtype)
    nk = scores.shape[-1]
    if cdf_threshold is None:
        k_sel = num_selected_blocks(nk, sparsity)
        if order == "ascending":
            indices = _topk_ascending(scores, k_sel)
        else:
            indices = torch.topk(scores, k_sel, dim=-1, largest=True, sorted=order == "descending").indices
        counts = torch.full(scores.shape[:-1], k_sel, dtype=torch.int64, device=scores.device)
        return indices, counts
    probs = torch.softmax(scores / math.sqrt(q_mean.shape[-1]), dim=-1)
    probs, indices = torch.sort(probs, dim=-1, descending=True)
    cdf = torch.cumsum(probs, dim=-1)
    # searchsorted(cdf, thr, right=True) == number of cdf entries <= thr, since a cumsum of non-negative fp32
    # values never decreases; the sum form keeps the graph free of an extra scalar tensor.
    counts = (cdf <= cdf_threshold).sum(dim=-1)
    if sparsity is not None:
        counts = counts.clamp(min=num_selected_blocks(nk, sparsity))
    counts = counts.clamp(min=1, max=nk)
    return (ascending_selection(indices, counts) if order == "ascending" else indices), counts


def select_blocks(
    q_blocks: torch.Tensor,
    k_blocks: torch.Tensor,
    block_size_q: int = 64,
    block_size_k: int = 64,
    sparsity: float | None = 0.9375,
    cdf_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gating and selection of SPEC §5 steps 2-3 on block-ordered inputs.

    q_blocks [B, H, Sq, D] and k_blocks [B, H, Sk, D] in block order (:func:`reorder_to_blocks`).
    Returns ``indices`` int64 [B, H, Nq_blk, K_max], key blocks in descending score order, and ``counts`` int64
    [B, H, Nq_blk]: row (b, h, i) selects ``indices[b, h, i, :counts[b, h, i]]``. K_max = K_sel in topk mode
    (every count equals it) and Nk_blk in the cdf modes.
    """
    b, h, sq, d = q_blocks.shape
    sk = k_blocks.shape[2]
    if sq % block_size_q or sk % block_size_k:
        raise ValueError(
            f"select_blocks: sequence lengths q {sq} / k {sk} are not multiples of the block sizes "
            f"{block_size_q} / {block_size_k}"
        )
    q_mean = _pooled_mean(q_blocks.unflatten(2, (sq // block_size_q, block_size_q)), (3,), block_size_q)
    k_mean = _pooled_mean(k_blocks.unflatten(2, (sk // block_size_k, block_size_k)), (3,), block_size_k)
    return _select_from_means(q_mean, k_mean, sparsity, cdf_threshold)


def raster_block_means(x: torch.Tensor, latent_shape, chunk=DEFAULT_CHUNK, what: str = "x") -> torch.Tensor:
    """Per-block means of raster-ordered [B, H, S, D] (rounded to x's dtype, returned in fp32): [B, H, N_blk, D]
    in row-major block order (SPEC §5 step 2), read straight from the raster layout."""
    nb = _block_grid(latent_shape, chunk, x.shape[2], what)
    ct, ch, cw = (int(c) for c in chunk)
    grid = x.unflatten(2, (nb[0], ct, nb[1], ch, nb[2], cw))
    return _pooled_mean(grid, (3, 5, 7), ct * ch * cw).flatten(2, 4)


def select_blocks_raster(
    q,
    k,
    latent_shape_q,
    latent_shape_k,
    sparsity=0.9375,
    cdf_threshold=None,
    chunk=DEFAULT_CHUNK,
    *,
    order="descending",
):
    """Same selection as :func:`select_blocks`, pooled straight from raster-ordered [B, H, S, D] (no reorder copy).

    ``order``: "descending" score (as :func:`select_blocks`), "any" (same sets, any order within a row) or
    "ascending" block index (same sets; see ``_select_from_means``)."""
    q_mean = raster_block_means(q, latent_shape_q, chunk, "q")
    k_mean = raster_block_means(k, latent_shape_k, chunk, "k")
    return _select_from_means(q_mean, k_mean, sparsity, cdf_threshold, order, q.dtype)


def ascending_selection(indices: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, H, Nq_blk, K_max] selection with each row's first ``counts`` blocks sorted ascending (padding slots: 0).

    The CUDA kernel visits blocks in this order: its key-range passes need it (each pass takes a contiguous run of
    the list), and programs running together then read K/V in the same direction. Only the accumulation order
    changes (SPEC §12: the kernel's accumulation order is not specified).
    """
    valid = torch.arange(indices.shape[-1], device=indices.device) < counts.unsqueeze(-1)
    ordered = torch.sort(torch.where(valid, indices, torch.iinfo(indices.dtype).max), dim=-1).values
    return torch.where(valid, ordered, 0)  # the first counts slots are the selected blocks, sorted


def group_selection(
    indices: torch.Tensor, counts: torch.Tensor, q_blocks: Sequence[int], group: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Union of the selections of ``group`` = (gh, gw) neighbouring query blocks (what a grouped kernel program visits).

    ``indices`` [B, H, Nq_blk, K_max] and ``counts`` [B, H, Nq_blk] as from ``select_blocks`` (any order within a
    row); ``q_blocks`` = (Nt, Nh, Nw) query blocks. Group n = (t, gh_i, gw_i) row-major over (Nt, ceil(Nh / gh),
    ceil(Nw / gw)) holds query blocks (t, gh_i * gh + j // gw, gw_i * gw + j % gw) for members j < gh * gw (members
    past the grid edge select nothing). Returns ``union`` [B, H, N_groups, G * K_max] (the distinct key blocks any
    member selected, ascending; padding 0), ``bits`` (same shape, int32: bit j set when member j selected the block)
    and ``union_counts`` [B, H, N_groups] (int64). With gh = gw = 1: ``ascending_selection`` and bits 1.
    """
    gh, gw = (int(g) for g in group)
    nt, nh, nw = (int(n) for n in q_blocks)
    b, h, nq, kmax = indices.shape
    if nq != nt * nh * nw:
        raise ValueError(f"group_selection: {nq} query blocks but a block grid {(nt, nh, nw)}")
    g = gh * gw
    sentinel = torch.iinfo(torch.int64).max
    valid = torch.arange(kmax, device=indices.device) < counts.unsqueeze(-1)
    keys = torch.where(valid, indices.long() * g, sentinel).view(b, h, nt, nh, nw, kmax)
    ghn, gwn = -(-nh // gh), -(-nw // gw)
    grid = torch.full((b, h, nt, ghn * gh, gwn * gw, kmax), sentinel, dtype=torch.int64, device=indices.device)
    grid[:, :, :, :nh, :nw] = keys
    grid = grid.view(b, h, nt, ghn, gh, gwn, gw, kmax).permute(0, 1, 2, 3, 5, 4, 6, 7)
    member = torch.arange(g, device=indices.device).view(gh, gw, 1)
    keys = torch.where(grid != sentinel, grid + member, sentinel).reshape(b, h, nt * ghn * gwn, g * kmax)
    keys = torch.sort(keys, dim=-1).values  # ascending block, then member; sentinels last
    ok = keys != sentinel
    blk = torch.where(ok, keys // g, 0)
    prev = torch.cat([torch.full_like(blk[..., :1], -1), blk[..., :-1]], dim=-1)
    first = ok & (blk != prev)
    width = g * kmax
    target = torch.where(ok, torch.cumsum(first, dim=-1) - 1, width)  # union slot; the extra column takes padding
    union = torch.zeros(*blk.shape[:-1], width + 1, dtype=torch.int64, device=indices.device)
    union = union.scatter(-1, target, blk)[..., :width]
    bit = torch.where(ok, torch.ones_like(keys) << (keys % g), 0)
    bits = torch.zeros(*blk.shape[:-1], width + 1, dtype=torch.int64, device=indices.device)
    bits = bits.scatter_add(-1, target, bit)[..., :width].to(torch.int32)
    return union, bits, first.sum(-1)


def sparse_attention_ref(
    q_blocks: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    block_size_q: int = 64,
    block_size_k: int = 64,
    *,
    upcast: bool = True,
) -> torch.Tensor:
    """Exact attention of each query block over its selected key blocks (SPEC §5 step 4), block order in and out.

    Dense scores with a block mask: O(Sq * Sk) memory, meant for CPU sizes and checks. ``upcast=True`` does the math
    in fp32 and returns fp32; ``upcast=False`` computes in the input dtype (the "bf16 torch" yardstick of the
    tolerance rule, STYLE #9). Returns [B, H, Sq, D].
    """
    b, h, sq, d = q_blocks.shape
    sk = k_blocks.shape[2]
    nq, nk = sq // block_size_q, sk // block_size_k
    valid = torch.arange(indices.shape[-1], device=indices.device) < counts.unsqueeze(-1)
    target = torch.where(valid, indices, nk)  # unselected padding slots land in a dropped extra column
    block_mask = torch.zeros(b, h, nq, nk + 1, dtype=torch.bool, device=q_blocks.device)
    block_mask = block_mask.scatter(-1, target, True)[..., :nk]
    mask = block_mask.repeat_interleave(block_size_q, dim=2).repeat_interleave(block_size_k, dim=3)
    dtype = torch.float32 if upcast else q_blocks.dtype
    scores = torch.matmul(q_blocks.to(dtype), k_blocks.to(dtype).transpose(-1, -2)) * (1.0 / math.sqrt(d))
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.matmul(probs, v_blocks.to(dtype))


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    latent_shape_q: Sequence[int],
    latent_shape_k: Sequence[int],
    sparsity: float | None = 0.9375,
    cdf_threshold: float | None = None,
    chunk_3d_shape: Sequence[int] = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Pure-PyTorch block-sparse attention: raster [B, H, Sq, D] q and [B, H, Sk, D] k, v -> [B, H, Sq, D].

    Selection in the input dtype's rounding (as the original), attention math in fp32; returns q.dtype.
    """
    blk = math.prod(int(c) for c in chunk_3d_shape)
    qb = reorder_to_blocks(q, latent_shape_q, chunk_3d_shape)
    kb = reorder_to_blocks(k, latent_shape_k, chunk_3d_shape)
    vb = reorder_to_blocks(v, latent_shape_k, chunk_3d_shape)
    indices, counts = select_blocks(qb, kb, blk, blk, sparsity, cdf_threshold)
    out = sparse_attention_ref(qb, kb, vb, indices, counts, blk, blk, upcast=True)
    return reorder_from_blocks(out, latent_shape_q, chunk_3d_shape).to(q.dtype)


def _check_inputs(q, k, v, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, S, D]; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q [B, H, Sq, D] and k, v [B, H, Sk, D] disagree: {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v need one dtype and device; got {q.dtype, k.dtype, v.dtype}, {q.device}")
    _block_grid(latent_shape_q, chunk_3d_shape, q.shape[2], "q")
    _block_grid(latent_shape_k, chunk_3d_shape, k.shape[2], "k")
    if sparsity is None and cdf_threshold is None:
        raise ValueError("block-sparse attention needs sparsity, cdf_threshold or both; got neither")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    if cdf_threshold is not None and not 0.0 < cdf_threshold <= 1.0:
        raise ValueError(f"cdf_threshold must be in (0, 1]; got {cdf_threshold}")


def _empty_output(q: torch.Tensor) -> torch.Tensor:
    """The op's output: q's layout when q is dense with unit stride along D (e.g. a [B, S, H, D] buffer seen as
    [B, H, S, D], so the caller's transpose back is free), else contiguous [B, H, S, D]."""
    out = torch.empty_like(q)
    return out if out.stride(-1) == 1 else torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.custom_op("lc_runtime::block_sparse_attention", mutates_args=())
def _bsa_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    latent_shape_q: Sequence[int],
    latent_shape_k: Sequence[int],
    sparsity: float | None,
    cdf_threshold: float | None,
    chunk_3d_shape: Sequence[int],
) -> torch.Tensor:
    # Any device but CUDA: the fp32 reference, copied into the layout register_fake promises.
    ref = block_sparse_attention_ref(q, k, v, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape)
    return _empty_output(q).copy_(ref)


@_bsa_op.register_kernel("cuda")
def _bsa_cuda(q, k, v, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape):
    from lc_runtime.ops import triton_bsa  # triton is only needed (and importable) on CUDA machines

    # the kernel visits key blocks in ascending order: the topk mode selects them in that order in one Triton pass
    # (triton_topk.py) instead of top-k's sort and a second, ascending one
    out = _empty_output(q)
    cfg = triton_bsa.default_config(q)
    if cfg.tma:
        # One Triton pass pools q's block means, one k's; the Gluon kernel reads K/V boxes straight from the raster
        # layout (5-D TMA descriptors), other TMA kernels from block-major copies of k and v (k's copy made in its
        # pooling pass) instead of pooling q and k from the raster layout with PyTorch and copying k and v after.
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        _block_grid(latent_shape_q, chunk_3d_shape, q.shape[2], "q")
        _block_grid(latent_shape_k, chunk_3d_shape, k.shape[2], "k")
        raster = triton_bsa.raster_kv(q, k, v, latent_shape_k, chunk_3d_shape, cfg) is not None
        k_blocks, k_mean = triton_bsa.blocks_and_means(k, latent_shape_k, chunk_3d_shape, store=not raster)
        q_mean = triton_bsa.blocks_and_means(q, latent_shape_q, chunk_3d_shape, store=False)[1]
        v_blocks = None if raster else triton_bsa.blocks_and_means(v, latent_shape_k, chunk_3d_shape, pool=False)[0]
        indices, counts = _select_from_means(q_mean, k_mean, sparsity, cdf_threshold, "ascending", q.dtype)
        del q_mean, k_mean
        return triton_bsa.bsa_forward(
            q, k, v, indices, counts, latent_shape_q, latent_shape_k, chunk_3d_shape, cfg, out=out, order="sorted",
            kv_blocks=None if raster else (k_blocks, v_blocks),
        )  # fmt: skip
    indices, counts = select_blocks_raster(
        q, k, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape, order="ascending"
    )
    return triton_bsa.bsa_forward(
        q, k, v, indices, counts, latent_shape_q, latent_shape_k, chunk_3d_shape, out=out, order="sorted"
    )


@_bsa_op.register_fake
def _bsa_fake(q, k, v, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape):
    return _empty_output(q)


defer_dynamo_import(_bsa_op)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    latent_shape_q: Sequence[int],
    latent_shape_k: Sequence[int],
    sparsity: float | None = 0.9375,
    cdf_threshold: float | None = None,
    chunk_3d_shape: Sequence[int] = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Block-sparse attention (SPEC §5) through the custom op ``torch.ops.lc_runtime.block_sparse_attention``.

    q [B, H, Sq, D], k and v [B, H, Sk, D], raster (t, h, w) token order with Sq = prod(latent_shape_q) and
    Sk = prod(latent_shape_k), both grids divisible by ``chunk_3d_shape``. ``sparsity`` selects the top
    ``int((1 - sparsity) * Nk_blk)`` key blocks per query block; ``cdf_threshold`` (with ``sparsity=None``) selects
    by cumulative softmax mass; both: the larger count. Returns [B, H, Sq, D] in q's dtype (laid out like q when q
    is dense). Raises ValueError on inconsistent shapes.
    """
    _check_inputs(q, k, v, latent_shape_q, latent_shape_k, sparsity, cdf_threshold, chunk_3d_shape)
    return _bsa_op(
        q,
        k,
        v,
        [int(s) for s in latent_shape_q],
        [int(s) for s in latent_shape_k],
        None if sparsity is None else float(sparsity),
        None if cdf_threshold is None else float(cdf_threshold),
        [int(c) for c in chunk_3d_shape],
    )
