"""Block-sparse attention forward in Gluon for Hopper (sm_90): the TMA kernel of triton_bsa.py with its loop
software-pipelined by hand, as FlashAttention-3 does within a warpgroup. The op's kernel on sm_90 GPUs
(``triton_bsa.GLUON_CONFIG``: version 4, version 3 with a load warp).

Why: the Triton TMA kernel runs each 64-row program as one serial chain per selected key block (wait for the box,
S = QKᵀ, softmax, O += PV), and Triton 3.6 waits for every wgmma right after issuing it. Here the wgmmas are issued
asynchronously and the softmax of block j runs on the CUDA cores while the tensor cores compute PV of block j - 1:

    iteration j:  issue S_j = Q K_jᵀ;  issue O += P_{j-1} V_{j-1};  wait for S_j;
                  m, p_j, alpha_j, l from S_j (overlaps the PV wgmma);  wait for PV;  O *= alpha_j

Versions 1 and 2 (one key block per step) do the arithmetic of the Triton kernels in the same order:
O_j = alpha_j O_{j-1} + P_j V_j with P_j rounded to the input dtype and fp32 accumulation (the rescale is applied to O
after PV_{j-1} instead of as PV_j's accumulator input: the same product, rounded once). K and V boxes come by TMA
from the block-major copies (triton_bsa's ``blocks_and_means``) into rings of ``KS`` = ``VS`` slots each; a K slot is
refilled as soon as its QKᵀ has completed, a V slot as soon as its PV has, that many blocks ahead, from indices
loaded an iteration earlier. One program per (query block, batch·head), one warpgroup, two programs per SM. ``QREG``
(version 2) keeps Q in registers as the A operand of QKᵀ (32 more registers, 195-200 in all; 16 KB less
shared-memory read per block) instead of reading it from shared memory every block.

Version 3 (``PAIRS``; the op's default in sessions 11-13) takes the selected blocks two at a time: S_a and S_b,
one running max over both, P_a and P_b against it, one row sum and one rescale of O per pair, then PV_a and PV_b
(overlapping the next pair's softmax as above; an odd count ends with one block on its own). The per-step costs that
do not scale with the block (row-max and row-sum shuffles, alpha, the 64-register rescale of O, the waits and
barriers) are paid once per 128 keys instead of per 64: 310 instructions per block in the loop instead of 356. The
online softmax updates per pair, so O differs from versions 1-2 by rounding only (P_a is rounded against the pair's
max instead of block a's own). Q is loaded straight into the registers of QKᵀ's A operand after the first K/V boxes
are issued (its load, the selection's and the boxes' latencies overlap; session 13, no measurable change); the rings
hold 3 K boxes and 4 V boxes (V of a pair is read one step after its K): 112 KB, 218-227 registers, two programs per
SM. K/V boxes come from block-major copies (2-D descriptors) or, with ``RASTER``, straight from the raster layout as
[1, CT, CH, CW, D] boxes of a 5-D view (``raster_view``; the same bytes land in shared memory). One kernel holds all
three versions (constexprs ``QREG``, ``PAIRS``; ``KS`` / ``VS`` ring depths) and version 4. Its
one-touch traffic (Q, O, the pass state) is marked evict-first in the L2, so that it does not push out K/V
boxes other programs re-read (uniformly random selections, 3 passes, the same H200: 0.0604-0.0616 s against
0.0620-0.0622 s). Key-range passes carry (m, l, O) in fp32 between launches as the Triton kernels do (2.8 GB of
scratch at the 720p refine shape); the op runs one pass with rotated walks instead (``ROTATE``: each program
starts its ascending list at the key-range phase the launch's progress counter gives and wraps around, see
triton_bsa's design note), or, under ``torch.use_deterministic_algorithms(True)``, as many passes as keep a slice of a
head's K/V in half the L2 (3 on an H200).

Measured on an H200 at the 720p refine shape (bench/bsa_kernel_probe.py, bench/results/bsa_kernel_probe_*.json and
bsa_h200_20261122-v3.md): from an L2-resident K/V slice, where the kernel's own speed shows, version 3 takes 0.0554-
0.0560 s (~525 TFLOP/s; it reads K/V from the L2 at ~8 TB/s) against 0.0592 s for version 2 and 0.0656 s for the
Triton TMA kernel in the same run. bench_bsa's inputs in 3 passes: 0.062-0.063 s iid, 0.060-0.061 s
RoPE-structured, on two H200s; one pass ranged from 0.0617 s (iid) on one to 0.073-0.075 s on the other, and on the
probe's uniformly random selections 3 passes take 0.0634 s against 0.0723 s for one.
Tried and not kept: issuing QKᵀ of block j + 1 before the softmax of block j in version 2 (two wgmmas in flight during
the softmax, 207 registers): no faster (0.0603 s against 0.0601 s, L2-resident).

Version 4 (``WS``, the op's default since session 14) is version 3 warp-specialized (``gl.warp_specialize``): the
compute warpgroup runs version 3's loop unchanged except that it only hands ring slots back (an mbarrier arrive per slot
once the wgmma reading it has completed), and one load warp (``_ws_producer``) issues every K and V box as soon as its
slot is free, reading the selection itself. The loop is ``_pairs``, shared with version 3. The compute warpgroup no
longer issues TMA loads or loads the selection (7 instead of 9 warpgroup barriers per pair), and a K refill no longer
waits behind the softmax that ptxas schedules ahead of it. 8 warps (the load warp's warpgroup is padded to 4 warps),
``maxnreg`` 128 at launch for two programs per SM; ``setmaxnreg`` leaves the load warpgroup 24 registers and gives the
compute warpgroup 232 (no spills). Same arithmetic in the same order: the same bits as version 3 (GPU test). At the 720p
refine shape (bench/bsa_op_probe.py, four runs of 15 interleaved rounds on three H200 starts,
results/bsa_op_probe_*-s14d..g): kernel alone 0.0561-0.0580 s against 0.0574-0.0587 s (per-round ratio medians
0.971-0.995), the op 0.0587-0.0606 s against 0.0603-0.0613 s; on another H200 start with 3 rounds (s14b) within 0.5-2%
either way (kernel 0.0576 / 0.0575 s against 0.0573 / 0.0565 s). Triton 3.6 compiled the first form of the load warp's
loop, which carried the previous K row into the next step's V issue, into V boxes all at the first block's coordinates
(wrong output, and 0.0558 s: V from the L2 every time; results s14a-miscompiled); the loop re-reads the list for V
instead. Tried and not kept: the load warp also prefetching the rows of the block 4 / 8 / 16 steps ahead into the L2
(``cp.async.bulk.prefetch.L2``, one 256-byte row per prefetch): the op took 0.20-0.21 s (s14c-prefetch).

Scope: bf16 / fp16, 64-token blocks, head_dim 64..256 (power of two); the op falls back to the Triton kernels
otherwise. Reference: ``block_sparse_attention.sparse_attention_ref`` (the GPU tests compare the two and the goldens;
CPU tests compile this kernel for sm_90 and check its resources, since the Triton interpreter does not run Gluon).
"""

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

BLOCK_ROWS = 64  # one warpgroup's wgmma M: query and key blocks of 64 tokens
# Version 4's register cap at launch: 8 warps (the compute warpgroup and the load warp's warpgroup) x 128 registers,
# two programs per SM; the load warpgroup keeps 24 of them, the compute warpgroup gets the other 232.
WS_MAXNREG = 128


@gluon.jit
def _issue_kv(
    desc, ring, bars, slot, blk, kv_x, kv_t, pred, RASTER: gl.constexpr, NB_H: gl.constexpr, NB_W: gl.constexpr
):
    """TMA load of key block ``blk``'s [64, D] box into ``ring[slot]``. Block-major copies: the box's first row is
    (kv_x + blk) * 64 (kv_x: the head's first block). ``RASTER``: a [1, CT, CH, CW, D] box of the 5-D view (x, t, h,
    w, d) of the raster layout at x = kv_x, t = kv_t + bt * CT, h = bh * CH, w = bw * CW, (bt, bh, bw) = blk in
    the row-major grid of NB_H x NB_W blocks per frame; the box's rows land in (t, h, w) order, as in the copies."""
    bar = bars.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    if RASTER:
        box: gl.constexpr = desc.block_type.shape
        bt = blk // (NB_H * NB_W)
        rem = blk - bt * (NB_H * NB_W)
        bh = rem // NB_W
        bw = rem - bh * NB_W
        coords = [kv_x, kv_t + bt * box[1], bh * box[2], bw * box[3], 0]
        tma.async_copy_global_to_shared(desc, coords, bar, ring.index(slot).reshape(box), pred=pred)
    else:
        tma.async_copy_global_to_shared(desc, [(kv_x + blk) * ring.shape[1], 0], bar, ring.index(slot), pred=pred)


@gluon.jit
def _barriers(N: gl.constexpr):
    """N mbarriers of count 1 (one per ring slot), initialized."""
    bars = gl.allocate_shared_memory(gl.int64, [N, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(N):
        mbarrier.init(bars.index(i), count=1)
    return bars


@gluon.jit
def _invalidate(bars):
    N: gl.constexpr = bars.shape[0]
    for i in gl.static_range(N):
        mbarrier.invalidate(bars.index(i))


@gluon.jit
def _box(idx_row, i, n, first, ROTATE: gl.constexpr):
    """The row's i-th selected key block (past the row's count: block 0, for a load that is predicated off).
    ``ROTATE``: the i-th block of the walk that starts at list position ``first`` and wraps around."""
    j = i
    if ROTATE:
        j = i + first
        j = j - n * (j >= n).to(gl.int32)
    return gl.load(idx_row + j, mask=i < n, other=0)


@gluon.jit
def _softmax_pair(s_a, s_b, m_i, l_i, qk_scale):
    """The online-softmax update for two key blocks at once: one running max over both, one rescale."""
    m_new = gl.maximum(m_i, gl.max(gl.maximum(s_a, s_b), 1) * qk_scale)
    p_a = gl.exp2(s_a * qk_scale - m_new[:, None])
    p_b = gl.exp2(s_b * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_new = l_i * alpha + gl.sum(p_a + p_b, 1)
    return p_a, p_b, m_new, l_new, alpha


@gluon.jit
def _softmax_one(s, m_i, l_i, qk_scale):
    """The online-softmax update for one key block."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_new, alpha


@gluon.jit(
    do_not_specialize=[
        "num_heads",
        "seq_q",
        "nk_blocks",
        "q_grid_h",
        "q_grid_w",
        "q_blocks_h",
        "q_blocks_w",
        "kv_xb",
        "kv_tb",
    ]
)
def _bsa_fwd_gluon_kernel(
    Q,
    desc_k,
    desc_v,
    O,
    IDX,
    START,
    END,
    ACC,
    M_STATE,
    L_STATE,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_ob,
    stride_oh,
    stride_os,
    stride_ib,
    stride_ih,
    stride_iq,
    stride_cb,
    stride_ch,
    num_heads,
    seq_q,
    nk_blocks,
    qk_scale,
    q_grid_h,
    q_grid_w,
    q_blocks_h,
    q_blocks_w,
    PROGRESS,
    TURN,
    kv_xb,
    kv_tb,
    CT: gl.constexpr,
    CH: gl.constexpr,
    CW: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    KS: gl.constexpr,
    VS: gl.constexpr,
    QREG: gl.constexpr,
    PAIRS: gl.constexpr,
    FIRST: gl.constexpr,
    LAST: gl.constexpr,
    ROTATE: gl.constexpr = False,
    K_MAX: gl.constexpr = 1,
    RASTER: gl.constexpr = False,
    NB_H: gl.constexpr = 1,
    NB_W: gl.constexpr = 1,
    WS: gl.constexpr = False,
):
    BLOCK: gl.constexpr = CT * CH * CW
    dtype: gl.constexpr = desc_k.dtype
    # Q and the K/V rings: [64, D] tiles, the layout of the block-major descriptors (a 5-D raster box has the same
    # bytes: rows in (t, h, w) order, one 128-byte swizzle)
    tile_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK, HEAD_DIM], dtype)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    load_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])

    pid_q = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = (pid_bh // num_heads).to(gl.int64)
    h = (pid_bh % num_heads).to(gl.int64)
    qt = pid_q // (q_blocks_h * q_blocks_w)
    qh = (pid_q // q_blocks_w) % q_blocks_h
    qw = pid_q % q_blocks_w

    rb = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load_layout))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, load_layout))
    q_rows = ((qt * CT + rb // (CH * CW)) * q_grid_h + qh * CH + (rb // CW) % CH) * q_grid_w + qw * CW + rb % CW
    q_rows = q_rows.to(gl.int64)
    # Q, O and the pass state are read or written once: first out of the L2, which K/V boxes are re-read from.
    # QREG: Q straight into the registers of QKᵀ's A operand (no shared-memory staging, whose store would wait for
    # the load before the first boxes go out); else staged in shared memory, wgmma's operand there.
    q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2) if QREG else load_layout
    rq = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, q_layout))
    dq = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, q_layout))
    rows_q = ((qt * CT + rq // (CH * CW)) * q_grid_h + qh * CH + (rq // CW) % CH) * q_grid_w + qw * CW + rq % CW
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows_q.to(gl.int64)[:, None] * stride_qs + dq[None, :]
    q = gl.load(q_ptrs, eviction_policy="evict_first")

    k_ring = gl.allocate_shared_memory(dtype, [KS, BLOCK, HEAD_DIM], tile_layout)
    v_ring = gl.allocate_shared_memory(dtype, [VS, BLOCK, HEAD_DIM], tile_layout)
    k_bars = _barriers(KS)
    v_bars = _barriers(VS)
    if WS:  # version 4: the consumer's releases of ring slots to the load warp
        k_empty = _barriers(KS)
        v_empty = _barriers(VS)
    fence_async_shared()

    sel = b * stride_cb + h * stride_ch + pid_q
    if FIRST:
        start = 0
    else:
        start = gl.load(START + sel)
    n = gl.load(END + sel) - start
    idx_row = IDX + b * stride_ib + h * stride_ih + pid_q.to(gl.int64) * stride_iq + start
    if RASTER:  # the head's K/V in the 5-D raster view: x = b * kv_xb + h, frames from t = b * kv_tb
        kv_x = (b * kv_xb + h).to(gl.int32)
        kv_t = (b * kv_tb).to(gl.int32)
    else:  # the head's first block in the block-major copies
        kv_x = pid_bh * nk_blocks
        kv_t = 0
    if ROTATE:  # one pass: the walk starts at the first selected block at or after the common phase, wraps around
        done = gl.load(PROGRESS, volatile=True)
        phase = (done * nk_blocks // gl.load(TURN)) % nk_blocks
        lst = gl.arange(0, K_MAX, layout=gl.BlockedLayout([1], [32], [4], [0]))
        listed = gl.load(idx_row + lst, mask=lst < n, other=0)
        first = gl.sum(((listed < phase) & (lst < n)).to(gl.int32), axis=0)
    else:
        first = 0

    # The first boxes go out before Q is staged: Q's load, the selection's and the boxes' latencies overlap.
    if WS:
        pass  # the load warp issues every box
    elif PAIRS:
        for i in gl.static_range(VS):  # the V ring is the deeper one
            blk = _box(idx_row, i, n, first, ROTATE)
            if i < KS:
                _issue_kv(desc_k, k_ring, k_bars, i, blk, kv_x, kv_t, i < n, RASTER, NB_H, NB_W)
            _issue_kv(desc_v, v_ring, v_bars, i, blk, kv_x, kv_t, i < n, RASTER, NB_H, NB_W)
    else:
        for i in gl.static_range(KS):
            blk = _box(idx_row, i, n, first, ROTATE)
            _issue_kv(desc_k, k_ring, k_bars, i, blk, kv_x, kv_t, i < n, RASTER, NB_H, NB_W)
            _issue_kv(desc_v, v_ring, v_bars, i, blk, kv_x, kv_t, i < n, RASTER, NB_H, NB_W)

    if QREG:  # Q as the register operand of QKᵀ (32 more registers, 16 KB less shared-memory traffic per block)
        q_op = q
    else:
        q_op = gl.allocate_shared_memory(dtype, [BLOCK, HEAD_DIM], tile_layout, q)
        fence_async_shared()  # Q's shared-memory copy, written by the threads, is read by wgmma (the async proxy)

    state_rows = pid_bh.to(gl.int64) * seq_q + gl.convert_layout(q_rows, s_rows)
    acc_ptrs = ACC + gl.convert_layout(state_rows, o_rows)[:, None] * HEAD_DIM
    acc_ptrs = acc_ptrs + gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))[None, :]
    if FIRST:
        m_i = gl.full([BLOCK], float("-inf"), gl.float32, s_rows)
        l_i = gl.zeros([BLOCK], gl.float32, s_rows)
        acc = gl.zeros([BLOCK, HEAD_DIM], gl.float32, o_layout)
    else:
        m_i = gl.load(M_STATE + state_rows, eviction_policy="evict_first")
        l_i = gl.load(L_STATE + state_rows, eviction_policy="evict_first")
        acc = gl.load(acc_ptrs, eviction_policy="evict_first")
    s_zero = gl.zeros([BLOCK, BLOCK], gl.float32, s_layout)

    if WS:  # version 4: the pair loop in this warpgroup, every TMA load from a warp of its own
        m_i, l_i, acc = gl.warp_specialize(
            [
                (_pairs, (q_op, m_i, l_i, acc, k_ring, v_ring, k_bars, v_bars, n, qk_scale, (k_empty, v_empty),
                          s_layout, o_layout, True, ROTATE, RASTER, NB_H, NB_W)),
                (_ws_producer, (desc_k, desc_v, k_ring, v_ring, k_bars, v_bars, k_empty, v_empty, idx_row, n, first,
                                kv_x, kv_t, PROGRESS, ROTATE, RASTER, NB_H, NB_W)),
            ],
            [1],
            [24],
        )  # fmt: skip
    elif PAIRS:  # version 3: two key blocks per softmax update, refills issued here
        m_i, l_i, acc = _pairs(
            q_op, m_i, l_i, acc, k_ring, v_ring, k_bars, v_bars, n, qk_scale,
            (desc_k, desc_v, idx_row, first, kv_x, kv_t, PROGRESS), s_layout, o_layout, False, ROTATE, RASTER, NB_H,
            NB_W,
        )  # fmt: skip
    else:  # versions 1 and 2: one block per update; the V refill reuses the previous K refill's row
        gl.static_assert(KS == VS, "one block per step: K and V rings of one depth")
        if n > 0:  # a row can select no block in a pass's key range: its state passes through
            # (the first KS blocks' K and V are in flight: the prologue above)
            # Box rows of the next refills, loaded an iteration before they are issued (a scalar load waited for at
            # the issue would stall the softmax): the K refill of iteration j is block j + KS, the V refill block
            # j - 1 + KS, i.e. the previous iteration's K refill.
            k_blk = _box(idx_row, KS, n, first, ROTATE)
            k_blk_next = _box(idx_row, KS + 1, n, first, ROTATE)

            # block 0: S_0, its softmax, and the rescale of a carried state (alpha = 0 on a fresh one)
            mbarrier.wait(k_bars.index(0), 0)
            s_tok = warpgroup_mma(q_op, k_ring.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s_tok,))
            # K slot 0 is free: block KS's K
            _issue_kv(desc_k, k_ring, k_bars, 0, k_blk, kv_x, kv_t, n > KS, RASTER, NB_H, NB_W)
            v_blk = k_blk
            k_blk = k_blk_next
            p, m_i, l_i, alpha = _softmax_one(s, m_i, l_i, qk_scale)
            acc = acc * gl.convert_layout(alpha, o_rows)[:, None]

            for j in range(1, n):
                slot = j % KS
                prev = (j - 1) % KS
                ahead = j + 1 + KS
                k_blk_next = _box(idx_row, ahead, n, first, ROTATE)
                mbarrier.wait(k_bars.index(slot), (j // KS) & 1)
                s_tok = warpgroup_mma(q_op, k_ring.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
                mbarrier.wait(v_bars.index(prev), ((j - 1) // KS) & 1)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                o_tok = warpgroup_mma(p_op, v_ring.index(prev), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=(s_tok,))
                # K slot free: block j + KS's K
                _issue_kv(desc_k, k_ring, k_bars, slot, k_blk, kv_x, kv_t, j + KS < n, RASTER, NB_H, NB_W)
                p, m_i, l_i, alpha = _softmax_one(s, m_i, l_i, qk_scale)
                acc = warpgroup_mma_wait(0, deps=(o_tok,))
                # V slot free: block j - 1 + KS's V
                _issue_kv(desc_v, v_ring, v_bars, prev, v_blk, kv_x, kv_t, j - 1 + KS < n, RASTER, NB_H, NB_W)
                acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                if ROTATE:
                    gl.atomic_add(PROGRESS, 1, sem="relaxed")
                v_blk = k_blk
                k_blk = k_blk_next

            # the last block's PV
            last = (n - 1) % KS
            mbarrier.wait(v_bars.index(last), ((n - 1) // KS) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            o_tok = warpgroup_mma(p_op, v_ring.index(last), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(o_tok,))
    _invalidate(k_bars)
    _invalidate(v_bars)
    if WS:
        _invalidate(k_empty)
        _invalidate(v_empty)

    if LAST:  # O / l (0 / 0 = NaN for a row that selected nothing at all, as in the Triton kernels)
        out = acc / gl.convert_layout(l_i, o_rows)[:, None]
        out = gl.convert_layout(out.to(dtype), load_layout)
        gl.store(
            O + b * stride_ob + h * stride_oh + q_rows[:, None] * stride_os + offs_d[None, :],
            out,
            eviction_policy="evict_first",
        )
    else:
        gl.store(M_STATE + state_rows, m_i, eviction_policy="evict_first")
        gl.store(L_STATE + state_rows, l_i, eviction_policy="evict_first")
        gl.store(acc_ptrs, acc, eviction_policy="evict_first")


@gluon.jit
def _ws_producer(
    desc_k, desc_v, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty, idx_row, n, first, kv_x, kv_t, PROGRESS,
    ROTATE: gl.constexpr, RASTER: gl.constexpr, NB_H: gl.constexpr, NB_W: gl.constexpr,
):  # fmt: skip
    """Version 4's load warp: K of block i, then V of block i - 1 (V is read a step after K), each as soon as the
    consumer has released its ring slot (``*_empty``; a fresh barrier passes the first wait). Both rows are loaded
    before the waits (the list is re-read for V: Triton 3.6 compiled a loop-carried copy of the K row into the
    first block's coordinates for every V box). ``ROTATE``: counts each K box into the launch's progress."""
    KS: gl.constexpr = k_ring.shape[0]
    VS: gl.constexpr = v_ring.shape[0]
    for i in range(n + 1):
        j = gl.maximum(i - 1, 0)
        blk = _box(idx_row, i, n, first, ROTATE)
        v_blk = _box(idx_row, j, n, first, ROTATE)
        if i < n:
            mbarrier.wait(k_empty.index(i % KS), ((i // KS) & 1) ^ 1)
            _issue_kv(desc_k, k_ring, k_ready, i % KS, blk, kv_x, kv_t, True, RASTER, NB_H, NB_W)
            if ROTATE:
                gl.atomic_add(PROGRESS, 1, sem="relaxed")
        if i > 0:
            mbarrier.wait(v_empty.index(j % VS), ((j // VS) & 1) ^ 1)
            _issue_kv(desc_v, v_ring, v_ready, j % VS, v_blk, kv_x, kv_t, True, RASTER, NB_H, NB_W)


@gluon.jit
def _pairs(
    q, m_i, l_i, acc, k_ring, v_ring, k_ready, v_ready, n, qk_scale, feed, s_layout: gl.constexpr,
    o_layout: gl.constexpr, WS: gl.constexpr, ROTATE: gl.constexpr, RASTER: gl.constexpr, NB_H: gl.constexpr,
    NB_W: gl.constexpr,
):  # fmt: skip
    """Versions 3 and 4's loop over pairs of key blocks (the schedule in the module docstring); returns (m, l, O).
    A K slot is free once its QKᵀ has completed, a V slot once its PV has: ``WS`` (version 4) hands each back to the
    load warp (``feed`` = (k_empty, v_empty): one arrive each); else (version 3) it is refilled here, that many blocks
    ahead (``feed`` = (desc_k, desc_v, idx_row, first, kv_x, kv_t, PROGRESS)), from rows loaded before the waits
    that hide their latency."""
    KS: gl.constexpr = k_ring.shape[0]
    VS: gl.constexpr = v_ring.shape[0]
    BLOCK: gl.constexpr = k_ring.shape[1]
    dtype: gl.constexpr = k_ring.dtype
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    s_zero = gl.zeros([BLOCK, BLOCK], gl.float32, s_layout)
    if WS:
        k_empty, v_empty = feed
    else:
        desc_k, desc_v, idx_row, first, kv_x, kv_t, PROGRESS = feed
    npairs = n // 2
    if npairs > 0:
        # pair 0: its scores, softmax, and the rescale of a carried state (alpha = 0 on a fresh one)
        if not WS:
            kb_a = _box(idx_row, KS, n, first, ROTATE)
            kb_b = _box(idx_row, KS + 1, n, first, ROTATE)
        mbarrier.wait(k_ready.index(0), 0)
        sa_tok = warpgroup_mma(q, k_ring.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(k_ready.index(1 % KS), (1 // KS) & 1)
        sb_tok = warpgroup_mma(q, k_ring.index(1 % KS).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_a, s_b = warpgroup_mma_wait(0, deps=(sa_tok, sb_tok))
        if WS:
            mbarrier.arrive(k_empty.index(0), count=1)
            mbarrier.arrive(k_empty.index(1 % KS), count=1)
        else:
            _issue_kv(desc_k, k_ring, k_ready, 0, kb_a, kv_x, kv_t, n > KS, RASTER, NB_H, NB_W)
            _issue_kv(desc_k, k_ring, k_ready, 1 % KS, kb_b, kv_x, kv_t, n > KS + 1, RASTER, NB_H, NB_W)
        p_a, p_b, m_i, l_i, alpha = _softmax_pair(s_a, s_b, m_i, l_i, qk_scale)
        pa_op = gl.convert_layout(p_a.to(dtype), p_layout)
        pb_op = gl.convert_layout(p_b.to(dtype), p_layout)
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        for pj in range(1, npairs):
            a = 2 * pj
            if not WS:  # the rows of this iteration's refills, loaded before the waits that hide their latency
                kb_a = _box(idx_row, a + KS, n, first, ROTATE)
                kb_b = _box(idx_row, a + 1 + KS, n, first, ROTATE)
                vb_a = _box(idx_row, a - 2 + VS, n, first, ROTATE)
                vb_b = _box(idx_row, a - 1 + VS, n, first, ROTATE)
            mbarrier.wait(k_ready.index(a % KS), (a // KS) & 1)
            sa_tok = warpgroup_mma(q, k_ring.index(a % KS).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(k_ready.index((a + 1) % KS), ((a + 1) // KS) & 1)
            sb_tok = warpgroup_mma(q, k_ring.index((a + 1) % KS).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index((a - 2) % VS), ((a - 2) // VS) & 1)
            o_tok = warpgroup_mma(pa_op, v_ring.index((a - 2) % VS), acc, is_async=True)
            mbarrier.wait(v_ready.index((a - 1) % VS), ((a - 1) // VS) & 1)
            o_tok = warpgroup_mma(pb_op, v_ring.index((a - 1) % VS), o_tok, is_async=True)
            s_a, s_b = warpgroup_mma_wait(2, deps=(sa_tok, sb_tok))
            if WS:
                mbarrier.arrive(k_empty.index(a % KS), count=1)
                mbarrier.arrive(k_empty.index((a + 1) % KS), count=1)
            else:
                _issue_kv(desc_k, k_ring, k_ready, a % KS, kb_a, kv_x, kv_t, a + KS < n, RASTER, NB_H, NB_W)
                _issue_kv(desc_k, k_ring, k_ready, (a + 1) % KS, kb_b, kv_x, kv_t, a + 1 + KS < n, RASTER, NB_H, NB_W)
            p_a, p_b, m_i, l_i, alpha = _softmax_pair(s_a, s_b, m_i, l_i, qk_scale)
            pa_op_next = gl.convert_layout(p_a.to(dtype), p_layout)
            pb_op_next = gl.convert_layout(p_b.to(dtype), p_layout)
            acc = warpgroup_mma_wait(0, deps=(o_tok,))
            if WS:
                mbarrier.arrive(v_empty.index((a - 2) % VS), count=1)
                mbarrier.arrive(v_empty.index((a - 1) % VS), count=1)
            else:
                _issue_kv(desc_v, v_ring, v_ready, (a - 2) % VS, vb_a, kv_x, kv_t, a - 2 + VS < n, RASTER, NB_H, NB_W)
                _issue_kv(desc_v, v_ring, v_ready, (a - 1) % VS, vb_b, kv_x, kv_t, a - 1 + VS < n, RASTER, NB_H, NB_W)
            acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
            if ROTATE and not WS:  # (the load warp counts the progress in version 4)
                gl.atomic_add(PROGRESS, 2, sem="relaxed")
            pa_op = pa_op_next
            pb_op = pb_op_next
        # the last pair's PV (no slot is reused after it)
        a = 2 * npairs
        mbarrier.wait(v_ready.index((a - 2) % VS), ((a - 2) // VS) & 1)
        o_tok = warpgroup_mma(pa_op, v_ring.index((a - 2) % VS), acc, is_async=True)
        mbarrier.wait(v_ready.index((a - 1) % VS), ((a - 1) // VS) & 1)
        o_tok = warpgroup_mma(pb_op, v_ring.index((a - 1) % VS), o_tok, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(o_tok,))
    if n % 2 == 1:  # an odd count: the last block on its own
        c = n - 1
        mbarrier.wait(k_ready.index(c % KS), (c // KS) & 1)
        s_tok = warpgroup_mma(q, k_ring.index(c % KS).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s_tok,))
        p, m_i, l_i, alpha = _softmax_one(s, m_i, l_i, qk_scale)
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        mbarrier.wait(v_ready.index(c % VS), (c // VS) & 1)
        o_tok = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_ring.index(c % VS), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(o_tok,))
    return m_i, l_i, acc


def supports(q: torch.Tensor, chunk) -> bool:
    """Whether the Gluon kernel covers this call: bf16/fp16, 64-token blocks, head_dim 64..256 (power of two); the
    caller checks the GPU (sm_90)."""
    d = q.shape[-1]
    block = math.prod(int(c) for c in chunk)
    return q.dtype in (torch.bfloat16, torch.float16) and block == BLOCK_ROWS and 64 <= d <= 256 and d & (d - 1) == 0


def kv_descriptors(kv_blocks, d: int):
    """Gluon TMA descriptors over block-major K and V ([rows, d], one [64, d] box per key block)."""
    dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[kv_blocks[0].dtype]
    layout = gl.NVMMASharedLayout.get_default_for([BLOCK_ROWS, d], dtype)
    return [TensorDescriptor(x, list(x.shape), [d, 1], [BLOCK_ROWS, d], layout) for x in kv_blocks]


def raster_view(x: torch.Tensor, latent_shape):
    """The 5-D view (x, t, h, w, d) of raster-ordered x [B, H, S, D] in which a 3-D block is one [1, CT, CH, CW, D]
    TMA box, as (shape, strides, kv_xb, kv_tb): batch b, head h reads x = b * kv_xb + h from frame t = b * kv_tb on.
    The batch folds into the head axis ([B, H, S, D] contiguous) or into the frame axis ([B, S, H, D] seen as
    [B, H, S, D], the DiT's layout). None when the strides allow neither, or TMA cannot address them (16-byte
    alignment, positive strides): the caller then makes block-major copies."""
    b, heads, seq, d = x.shape
    sb, sh, ss, sd = x.stride()
    t, hh, w = (int(n) for n in latent_shape)
    frame = hh * w * ss
    strides = [sh, frame, w * ss, ss, 1]
    if sd != 1 or t * hh * w != seq:
        return None
    if b == 1 or sb == heads * sh:
        view = [b * heads, t, hh, w, d], strides, heads, 0
    elif sb == t * frame:
        view = [heads, b * t, hh, w, d], strides, 0, t
    else:
        return None
    if x.data_ptr() % 16 or any(st <= 0 or st * x.element_size() % 16 for st in strides[:-1]):
        return None
    return view


def raster_descriptors(k: torch.Tensor, v: torch.Tensor, latent_shape_k, chunk):
    """Gluon TMA descriptors over raster-ordered K and V (:func:`raster_view`, one [1, CT, CH, CW, D] box per key
    block) and the kernel's (kv_xb, kv_tb); None when either tensor has no such view or the two differ in it."""
    views = [raster_view(x, latent_shape_k) for x in (k, v)]
    if views[0] is None or views[1] is None or views[0][2:] != views[1][2:]:
        return None
    dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[k.dtype]
    box = [1, *(int(c) for c in chunk), k.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(box, dtype)
    descs = [TensorDescriptor(x, shape, strides, box, layout) for x, (shape, strides, _, _) in zip((k, v), views)]
    return descs, views[0][2:]


LAUNCH_OPTIONS = ("num_warps", "maxnreg")  # the keys of kernel_and_meta's meta that are launch options


def kernel_and_meta(version: int, stages: int):
    """The kernel and its meta for a version: constexprs and launch options (``LAUNCH_OPTIONS``; triton_bsa's
    ``_launch_tma`` launches it once per key-range pass with the Triton TMA kernel's arguments and ``kv_descriptors``'
    descriptors): 1 / 2, one key block per step (2: Q in registers), K and V rings of ``stages`` boxes; 3: pairs of
    key blocks per step, K ring ``stages``, V ring ``stages + 1``; 4: version 3 with a load warp (8 warps capped at
    ``WS_MAXNREG`` registers). 4 (compute) warps. Rows without any block come out NaN (0 / 0, as in the Triton
    kernels)."""
    if version == 4:
        return _bsa_fwd_gluon_kernel, dict(
            KS=stages, VS=stages + 1, QREG=True, PAIRS=True, WS=True, num_warps=4, maxnreg=WS_MAXNREG
        )
    if version == 3:
        return _bsa_fwd_gluon_kernel, dict(KS=stages, VS=stages + 1, QREG=True, PAIRS=True, WS=False, num_warps=4)
    return _bsa_fwd_gluon_kernel, dict(KS=stages, VS=stages, QREG=version == 2, PAIRS=False, WS=False, num_warps=4)


def compile_for_sm90(
    version=3, stages=3, head_dim=128, dtype=torch.bfloat16, first=True, last=True, rotate=False, raster=False
):
    """Compile a kernel version for sm_90 without a GPU (Triton's bundled ptxas): the compiled kernel, whose
    ``asm`` and ``metadata.shared`` the CPU tests read."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    if raster:  # K and V [1, 2, 4 * 4 * 8, D] on a (4, 4, 8) token grid
        kv = [torch.empty(1, 2, 128, head_dim, dtype=dtype) for _ in range(2)]
        (desc_k, desc_v), _ = raster_descriptors(*kv, (4, 4, 8), (4, 4, 4))
    else:
        desc_k, desc_v = kv_descriptors(
            [torch.empty(4 * BLOCK_ROWS, head_dim, dtype=dtype) for _ in range(2)], head_dim
        )
    ptr = "*" + {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    fn, rings = kernel_and_meta(version, stages)
    options = {key: rings.pop(key) for key in LAUNCH_OPTIONS if key in rings}
    constexprs = dict(CT=4, CH=4, CW=4, HEAD_DIM=head_dim, FIRST=first, LAST=last, ROTATE=rotate, K_MAX=256, **rings)
    constexprs.update(RASTER=raster, NB_H=11 if raster else 1, NB_W=20 if raster else 1)  # the 720p refine grid
    signature = {name: "constexpr" if name in constexprs else "i32" for name in fn.arg_names}
    signature.update(Q=ptr, O=ptr, IDX="*i32", START="*i32", END="*i32", qk_scale="fp32")
    signature.update(ACC="*fp32", M_STATE="*fp32", L_STATE="*fp32", PROGRESS="*i64", TURN="*i64")
    signature.update(desc_k=mangle_type(desc_k), desc_v=mangle_type(desc_v))
    src = GluonASTSource(fn, signature, {(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
