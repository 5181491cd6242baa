"""Triton forward kernel of block-sparse 3-D attention (SPEC §5 step 4); the op lives in block_sparse_attention.py.

Design note
-----------
What it fuses: the raster -> 3-D block reorder of q, k, v, the sparse attention itself (QKᵀ, online softmax,
PV, normalisation) and the block -> raster reorder of the output. The original kernel needed four full copies
around it (reorder q, k, v, un-reorder o: ~11 GB of traffic at 168,960 tokens x 32 heads); here a program computes
the raster token index of every row of a 3-D block from the block coordinates and gathers rows directly. Rows of a
4x4x4 block are 16 runs of 4 consecutive tokens, i.e. 1 KiB contiguous runs for a [B, H, S, D] bf16 layout with
D = 128 (256 B runs for a [B, S, H, D] layout): 16-byte cp.async copies, coalesced, no TMA box needed.

Launch shape: grid (Nq_blk / G, B * H); one program per (group of G query blocks, batch·head), BLOCK_M = 64 * G
rows (G = 1 by default, see "Grouped query blocks" below). Query blocks are the fastest grid axis, so the programs
resident at one time all read the same head's K/V.

Per program: load the 64 x D query tile once; loop over its selected key blocks in ascending block order, N_SUB
blocks (64 * N_SUB keys) per iteration: S = Q Kᵀ (bf16 in, fp32 acc, wgmma on Hopper), online softmax in base 2
(scale folded into log2(e) / sqrt(D)), P rounded to the input dtype, O += P V in fp32; finally O / rowsum, stored in
the input dtype. Per-row block counts come from the selection (constant in topk mode, varying in the cdf modes);
when N_SUB > 1 and a count is not a multiple of N_SUB, one last iteration masks the missing sub-blocks (scores ->
-inf); full iterations carry no mask.

Memory traffic: K and V tiles of every selected block, once per query block: 2 * Sq/64 * K_sel * 64 * D * 2 bytes
per head, ~456 GB in all at the 720p refine shape (32 heads, 168,960 tokens, K_sel = 165), against 4 GB for Q, K, V
and O. Arithmetic intensity is 64 FLOP per gathered byte, so the gathers come from the L2, or from HBM for every
one that misses it. One head's K and V are 86.5 MB there, more than the L2 (50 MB on H100, 60 MB on H200).
Key-range passes (``kv_passes`` = R > 1) fix that: pass r only visits the selected blocks in the r-th slice of the
key range (the list is ascending, so that is a contiguous sub-range of it), so the programs of a head share a
working set of 86.5 / R MB that stays in L2; the online-softmax state (m, l and the fp32 accumulator) is carried
between passes through an fp32 scratch ([B*H, Sq, D], 2.8 GB at that shape), which costs ~5.5 GB of traffic per
extra pass. The result is bitwise that of one pass (same order, the state is stored in fp32).

Pipelining: the K/V loads depend on the index load (one level of indirection). Compiled for sm_90 with Triton 3.6,
num_stages <= 4 gives double-buffered K/V issued one iteration ahead (82 KB of shared memory at N_SUB = 1: two
programs per SM), num_stages >= 5 triple-buffered, two iterations ahead (115 KB: one program per SM).

Where the time goes (H200 measurements): the 64-row kernel moves ~4.2 TB/s of gathered K/V at 270 TFLOP/s
(0.107 s). ``bench/bsa_gather_probe.py`` does the same gathers with the arithmetic left out. With iid selections, the
whole 456 GB takes 0.067 s (6.8 TB/s) from a head's full K/V, and 0.047 s (9.8 TB/s) when the blocks come from
an L2-sized slice (what the key-range passes give). The block-major layout makes no difference (0.0667 s vs
0.0672 s). So the kernel is not at the gather's bandwidth limit: about half its time is the MMA / softmax chain
that the gathers do not overlap with. A bigger N tile (n_sub = 2) or a deeper pipeline did not help (measured:
slower). A faster kernel needs gathers that overlap with the math.

TMA variant (``tma=True``, the default on sm_90+, ``TMA_CONFIG``): K and V are first copied to block-major order
(``blocks_and_means``: one Triton pass each, 0.7 ms per tensor at the 720p refine shape on an H200 against 2.2 ms for
torch's permute + contiguous; the op pools k's block means in the same pass; 2 x K's size of transient memory), so that
a selected key block is one contiguous [64, D] box that the Tensor Memory Accelerator loads asynchronously into shared
memory (a host-side ``TensorDescriptor`` over [B*H*Sk, D]); Triton's pipeliner then keeps num_stages - 1 boxes in flight
with mbarriers instead of register-staged cp.async gathers. Same arithmetic, in the same order, as the gathered kernel
(the interpreter test checks the bits). On the H200 (bench/results/bsa_nvidia-h200_20261121-18*-tma.md): 0.072-0.075 s
with one pass (iid), 0.072 s (rope), against 0.108 s; 6.1-6.3 TB/s of K/V at ~400 TFLOP/s, about the gather probe's 6.8
TB/s for a head's full K/V. Measured and rejected: key-range passes (0.077-0.085 s: their state traffic costs more than
the L2 locality gains), num_stages 1-3 (slower on iid, stages 1 with a 128-register cap is the fastest on rope inputs at
0.0675 s but 0.085 s on iid; session 9, bsa_nvidia-h200_20261122-0224-configs.md: stages 2-4 capped at 128 registers
0.080-0.081 s, stages 3 uncapped 0.0700 s, against 0.0695-0.0702 s for the default), pairs of key blocks per softmax
update (``n_sub=2``: 0.083-0.090 s, twice the shared memory), 8 warps (0.12-0.18 s: a 64-row tile cannot be split across
two warpgroups), Triton 3.6's automatic warp specialization (does not compile with 4 warps; no faster with 8), and
(session 6, commit 5f8486a, reverted in 88ed055; bsa_nvidia-h200_20261121-2233-waves.md) launch waves, to keep the
resident programs walking the ascending key range in step so that their working set stays in the L2: launches of 264 /
528 / 2640 programs (one wave of 2 programs per SM (82 KB of shared memory each, 138 registers), two waves, one head):
0.0776 / 0.0777 / 0.0752 s on iid against 0.0767 s for one launch of the same refactored kernel in the same run (0.0723
s for the unrefactored one in session 4); a persistent grid of 264 programs striding over the work items: 0.0733 s on
iid but 0.0951 s on rope (0.0759 s for one launch), 132 programs: 0.107 s; (session 9, commit e6283e7,
bsa_nvidia-h200_20261122-0222-rotate.md) rotated walks, each program starting its ascending walk at a key-range phase
that advances with the launch order (one turn per 2 x SMs programs), so that the resident programs read the same region
of K/V: 0.0705 s on iid and 0.0714 s on rope against 0.0688 / 0.0693 s (one turn per SM count: 0.0878 s on iid). The
iteration is a serial chain (wait for the box, QKᵀ, softmax, PV) per 64-row program, two programs per SM: from an
L2-resident K/V slice this kernel takes 0.065 s. Session 10 wrote that loop by hand in Gluon (gluon_bsa.py, the sm_90
default): async wgmma, the softmax of block j overlapping PV of block j - 1, 0.058 s from the L2-resident slice; with
its compute faster, key-range passes paid (iid: 0.064 s in 3 passes against 0.073 s in one). Session 11's version 3
of it takes key blocks in pairs per softmax update (the per-step overhead paid once per 128 keys) with a V ring one
box deeper: 0.0555 s from the L2-resident slice, in 3 passes 0.062-0.063 s on iid / 0.060-0.061 s on rope inputs
(bsa_h200_20261122-v3*.md; one pass was as fast on one H200 and 0.073-0.075 s on iid on another); it reads K/V
from the L2 at ~8 TB/s there, so a kernel much faster than that needs fewer bytes per FLOP (session 12 replaced the
passes by rotated walks, below, and cut the selection from ~6 ms to ~3.6 ms): query blocks that share a K/V box
(two consumer warpgroups over the union of neighbours' selections, as the grouped Triton kernel does, but each
warpgroup computing only its own blocks), not written.

Rotated walks (``rotate``; the sm_90 default since session 12): key-range passes buy their L2 locality with the fp32
state and a prologue per pass; rotated walks get it in one pass. A program starts its ascending walk at the first
selected block at or after the phase (G * Nk / T) mod Nk and wraps around, where G counts the key blocks that all
programs of the launch have processed so far (a device counter each program bumps once per step with a relaxed
atomic) and T = R x SMs x the mean selection count, one turn of the key range per resident cohort's work. The phase
advances with the launch's progress and every program walks at the pace of its own blocks, so all resident programs
read about one region of the head's K/V, whenever they started. Session 9 took the phase from the launch order
instead (lin * Nk / (R x SMs), the Triton TMA kernel): slower (0.0705 s against 0.0688 s). A launch-order phase spreads
the first wave over the whole key range (its programs all start together), and that kernel lost only ~4 ms to L2
misses. The Gluon kernel loses ~13 ms (one pass: 0.0690 s on uniformly random selections against 0.0560 s from an
L2-resident slice); rotated by progress (R = 2) it takes 0.0571 s, 3 passes 0.0597 s, same run
(bench/results/bsa_kernel_probe_nvidia-h200_20261122-rotate.json; R = 3: 0.0575 s, R = 4: 0.0609 s, R = 1: 0.0759 s).
It needs neither the 2.8 GB of pass state nor the pass bounds. The cost: the walk order, and so the output's fp32
rounding, depends on timing, so the bits can differ between runs (by the kernel's own rounding: the probe's max
difference against the Triton TMA kernel is 4.88e-4, as for the ascending walk); under
``torch.use_deterministic_algorithms(True)`` the op runs ``GLUON_DETERMINISTIC_CONFIG`` (passes) instead.

Raster reads (``raster``; the sm_90 default since session 13): the Gluon kernel reads each selected block's K and V
box in place, as a [1, CT, CH, CW, D] box of a 5-D TMA view (x, t, h, w, d) of the raster layout
(``gluon_bsa.raster_view``: batch folded into the head axis for [B, H, S, D], into the frame axis for the DiT's
[B, S, H, D] views), instead of a [64, D] box of block-major copies. The box lands in shared memory in the copies'
row order with the same swizzle, so the arithmetic and its bits are the same (the GPU test compares them bitwise).
It saves k's and v's copies (one read and one write of each; k is still read once for its means) and their
2 x 1.4 GB of memory: on three H200s the op took 0.0595-0.0607 s against 0.0608-0.0625 s with copies, interleaved
in the same runs (bench/results/bsa_op_probe_nvidia-h200_20261122-s13a..c). Layouts TMA cannot address (strides not
multiples of 16 bytes, a batch stride neither fold fits) fall back to the copies.

Grouped query blocks (``group_h`` x ``group_w`` > 1; why and what): fewer bytes per FLOP, i.e. more query rows per
loaded K/V tile. A program therefore takes G = group_h * group_w
neighbouring query blocks (pairs adjacent in w, then h: neighbours in the 3-D grid select the most common key blocks)
as one 64 * G-row tile (one warpgroup per 64 rows, Hopper's m64 wgmma shape), and iterates the UNION of their
selections in ascending order (``group_selection``: one sort of the G concatenated lists, keys block * G + member,
plus an O(n) merge that also yields a G-bit mask per union entry); rows of a member that did not select a block get
-inf scores for it (p = 0, alpha = 1: an exact no-op on m, l and acc, so each row computes the same sums in the same
order as the 64-row kernel, up to the MMA's own rounding of a different tile shape). Members past the grid edge (odd
block counts) are masked rows. Cost model per pair, with neighbour overlap o (share of K_sel both select): K/V bytes
(2 - o) / 2 of the 64-row kernel; MMA work (2 - o) x the useful work. RoPE-structured heads (bench "rope",
o = 0.51): 0.75x the bytes, 1.49x the MMA; at the same 4.2 TB/s the kernel would run ~1.34x faster while tensor
cores stay below ~400 TFLOP/s of (partly masked) work; iid inputs (o = 0.065): the same bytes, ~2x the MMA: slower,
so the 64-row kernel stays the default (``DEFAULT_CONFIG``) and ``GROUPED_CONFIG`` / bench/bench_bsa.py's sweep
decide on the GPU (2 x 2 groups: ~0.55x bytes, ~2.2x MMA on rope). The choice is static (no data-dependent host
sync, so the op stays CUDA-graph capturable); the kernels agree to fp32 rounding, so it never changes results beyond
that.

Selection: in topk mode the op selects each row's key blocks straight in ascending order with the Triton top-k of
``triton_topk.py`` (interpolation search + grouped prefix-sum compaction, the row in two tiles: 1.0-1.4 ms at the
720p refine shape, 1.3-1.7 ms in one tile; the radix search 3.0 ms; ``torch.topk`` 4.2 ms plus 3.5 ms for the
ascending sort; bench/results/bsa_op_probe_*-s12*, -s15*, bsa_nvidia-h200_20261122-0027-topk.md); the cdf modes sort
their descending selection; group unions cost one more sort. The block means come from ``blocks_and_means``: with
the copy in one pass (one program per block), alone in runs of ``MEANS_RUN`` blocks (0.4 ms per tensor at the 720p
refine shape against 0.6-0.7 ms as one program per block, session 15).

Limits: block size prod(chunk_3d_shape) must be a power of two >= 16 (tl.dot tile), D one of 16..256 (power of
two), q/k/v must have unit stride along D (other strides are free); sizes must be exact multiples (no boundary
checks: the op validates shapes first). Forward only, no log-sum-exp output, no dropout, no causal mask.
"""

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lc_runtime.ops.block_sparse_attention import ascending_selection, group_selection

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class BsaKernelConfig:
    """Launch parameters. n_sub: key blocks per loop iteration (tile width 64 * n_sub keys); kv_passes: key-range
    passes (None: as many as keep a head's K/V slice within half the L2, see the design note); group_h x group_w:
    neighbouring query blocks per program (tile height 64 * group_h * group_w rows; they iterate the union of their
    selections, see the design note); tma: K/V tiles by TMA from a block-major copy (sm_90+; n_sub 1 or 2 (pairs of
    blocks per softmax update), no groups; see
    "TMA variant" in the design note); warp_specialize: Triton's automatic producer/consumer warp specialization of
    the TMA loop; maxnreg: a register cap per thread for the TMA kernel (more programs per SM); gluon: 1 to 4,
    the TMA kernel software-pipelined by hand in Gluon (gluon_bsa.py; 2: Q held in registers; 3: also pairs of key
    blocks per softmax update; 4: version 3 with a load warp of its own issuing the TMA loads; needs tma, n_sub 1,
    4 (compute) warps; num_stages = its K and V ring depth, version 3's V ring
    one deeper), used where it applies (sm_90, bf16/fp16, 64-token blocks, head_dim
    64..256), the Triton TMA kernel elsewhere; rotate: R > 0 (Gluon kernel, one pass) starts each program's walk over
    its ascending list at the phase of the key range that all programs share at that moment (key blocks done so far
    in the launch, one turn per R x SMs programs' selections), wrapping around, so that the resident programs read
    one region of K/V (see "Rotated walks" in the design note; the output bits depend on timing); raster (Gluon kernel):
    K/V boxes straight from the raster layout through 5-D TMA descriptors (``gluon_bsa.raster_view``) instead of
    block-major copies, where the strides allow one (else the copies are made)."""

    n_sub: int = 1
    num_warps: int = 4
    num_stages: int = 3
    kv_passes: int | None = None
    group_h: int = 1
    group_w: int = 1
    tma: bool = False
    warp_specialize: bool = False
    maxnreg: int | None = None
    gluon: int = 0
    rotate: int = 0
    raster: bool = False

    @property
    def group(self) -> int:
        return self.group_h * self.group_w


# The original's preset for 64-token blocks (num_warps 4, num_stages 3; SPEC §5 step 4): the gathered kernel, any GPU.
DEFAULT_CONFIG = BsaKernelConfig()
# Hopper and newer: the TMA kernel, one pass (bench/results/bsa_nvidia-h200_20261121-1819-tma.md: 0.072 s at the 720p
# refine shape against 0.108 s for DEFAULT_CONFIG; key-range passes and pairs of blocks per update were slower).
TMA_CONFIG = BsaKernelConfig(num_stages=4, kv_passes=1, tma=True)
# sm_90 (Hopper): the Gluon kernel (gluon_bsa.py; version 3: pairs of key blocks per softmax update, Q in registers),
# a K ring of 3 boxes and a V ring of 4, key-range passes as the L2 size suggests (3 on an H200). Kernel times on two
# fresh H200s (bench/results/bsa_h200_20261122-v3.md, -v3-run2.md), iid / rope inputs: 3 passes 0.0622-0.0630 /
# 0.0598-0.0613 s in both; one pass 0.0617 / 0.0570 s on the first but 0.0727-0.0747 / 0.0595 s on the second (L2
# misses: a head's K/V is 86.5 MB), so the passes stay; version 2 in 3 passes 0.0648-0.0651 / 0.0643-0.0645 s. From an
# L2-resident slice (bsa_kernel_probe_nvidia-h200_20261122-v3.json) 0.0554-0.0560 s against 0.0592 s (v2), 0.0656 s
# (TMA_CONFIG).
# Session 12: rotated walks (``rotate``, one pass; see "Rotated walks" in the design note) keep the resident
# programs on one region of a head's K/V without the passes' fp32 state: uniformly random selections 0.0571 s against
# 0.0597 s in 3 passes and 0.0690 s in one unrotated pass, same run
# (bench/results/bsa_kernel_probe_nvidia-h200_20261122-rotate.json). Their walk order depends on timing, so their
# output bits can differ from run to run (by fp32 rounding); ``GLUON_DETERMINISTIC_CONFIG`` (3 passes on an H200) is
# what the op runs under ``torch.use_deterministic_algorithms(True)``.
# Session 13: K/V boxes read in place from the raster layout (``raster``, 5-D TMA descriptors) instead of block-major
# copies: op 0.0595-0.0607 s against 0.0608-0.0625 s with copies, same runs (bsa_op_probe_*-s13a..c).
# Session 14: version 4 (version 3 with a load warp of its own; the same bits): kernel 0.0561-0.0580 s against
# 0.0574-0.0587 s, op 0.0587-0.0606 s against 0.0603-0.0613 s, four runs of 15 interleaved rounds on three H200
# starts (bsa_op_probe_*-s14d..g); within 0.5-2% either way on another (3 rounds, s14b). Deterministic mode keeps
# version 3 (the same bits; version 4 in passes was not timed against it).
GLUON_CONFIG = BsaKernelConfig(num_stages=3, kv_passes=1, tma=True, gluon=4, rotate=2, raster=True)
GLUON_DETERMINISTIC_CONFIG = BsaKernelConfig(num_stages=3, kv_passes=None, tma=True, gluon=3, raster=True)
# Grouped variant: pairs of w-neighbouring query blocks, 128-row tiles over the union of their selections (two
# warpgroups). Wins when neighbours share selections (real / RoPE-structured heads), loses on iid inputs.
GROUPED_CONFIG = BsaKernelConfig(num_warps=8, num_stages=3, group_w=2)
_override: BsaKernelConfig | None = None


def set_default_config(config: BsaKernelConfig | None) -> BsaKernelConfig | None:
    """Make ``config`` the op's launch configuration on every device (bench/bench_bsa.py, after validating it;
    None: back to the automatic choice, :func:`default_config`); returns the previous override."""
    global _override
    old, _override = _override, config
    return old


def default_config(q: torch.Tensor) -> BsaKernelConfig:
    """The launch configuration the op uses for ``q``: an override (:func:`set_default_config`), else the Gluon
    kernel on sm_90 GPUs (when this Triton has Gluon; with rotated walks, or in key-range passes when
    ``torch.are_deterministic_algorithms_enabled()``), the Triton TMA kernel on other sm_90+ GPUs, else the gathered
    kernel."""
    if _override is not None:
        return _override
    if q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9:
        if not _gluon_runs_on(q.device):
            return TMA_CONFIG
        return GLUON_DETERMINISTIC_CONFIG if torch.are_deterministic_algorithms_enabled() else GLUON_CONFIG
    return DEFAULT_CONFIG


def _gluon_runs_on(device: torch.device) -> bool:
    """Whether the Gluon kernel can run on ``device``: an sm_90 GPU (its wgmma is Hopper's) and a Triton whose Gluon
    API the kernel was written for (Triton 3.6; an older or newer one without it falls back to the Triton kernels)."""
    return torch.cuda.get_device_capability(device)[0] == 9 and _gluon_module() is not None


@functools.lru_cache
def _gluon_module():
    try:
        from lc_runtime.ops import gluon_bsa
    except (ImportError, AttributeError):
        return None
    return gluon_bsa


@triton.jit
def _attend_tile(
    q,
    m_i,
    l_i,
    acc,
    slot0,
    end,
    idx_row,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    k_rows_in_block,
    sub,
    offs_d,
    k_blocks_h,
    k_blocks_w,
    k_grid_h,
    k_grid_w,
    qk_scale,
    bits_row,
    member,
    CT: tl.constexpr,
    CH: tl.constexpr,
    CW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
    GROUPED: tl.constexpr,
):
    # One tile of N_SUB selected key blocks: column c of the tile belongs to the block in list slot slot0 + sub[c].
    slot = slot0 + sub
    if MASKED:
        valid = slot < end
        blk = tl.load(idx_row + slot, mask=valid, other=0)
    else:
        blk = tl.load(idx_row + slot)
    if GROUPED:  # bit j of a union entry: query block j of the group selected it
        if MASKED:
            bits = tl.load(bits_row + slot, mask=valid, other=0)
        else:
            bits = tl.load(bits_row + slot)
    bt = blk // (k_blocks_h * k_blocks_w)
    bh = (blk // k_blocks_w) % k_blocks_h
    bw = blk % k_blocks_w
    first_token = (bt * CT * k_grid_h + bh * CH) * k_grid_w + bw * CW
    rows = (first_token + k_rows_in_block).to(tl.int64)
    k = tl.load(k_base + rows[:, None] * stride_ks + offs_d[None, :])
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if GROUPED:
        s = tl.where(((bits[None, :] >> member[:, None]) & 1) != 0, s, float("-inf"))
    elif MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    if GROUPED:
        # a row may have seen no selected block yet (m = -inf): subtract 0 instead, p = 0 and alpha = 0 (acc, l = 0)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    p = tl.math.exp2(s * qk_scale - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + rows[:, None] * stride_vs + offs_d[None, :])
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return m_new, l_i, acc


# Grid sizes and index strides vary per call and gain nothing from value specialization (1 / multiple of 16):
# leaving them unspecialized keeps one compiled variant per (dtype, config, chunk, head_dim, data strides).
_NO_SPECIALIZE = ["stride_ib", "stride_ih", "stride_iq", "stride_cb", "stride_ch", "num_heads", "seq_q"]
_NO_SPECIALIZE += [f"{w}_{a}" for w in ("q_grid", "q_blocks", "k_grid", "k_blocks") for a in ("h", "w")]


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bsa_fwd_kernel(
    Q,
    K,
    V,
    O,
    IDX,
    BITS,
    START,
    END,
    ACC,
    M_STATE,
    L_STATE,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
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
    qk_scale,
    q_grid_h,
    q_grid_w,
    q_blocks_h,
    q_blocks_w,
    k_grid_h,
    k_grid_w,
    k_blocks_h,
    k_blocks_w,
    CT: tl.constexpr,
    CH: tl.constexpr,
    CW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    N_SUB: tl.constexpr,
    GH: tl.constexpr,
    GW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
):
    BLOCK: tl.constexpr = CT * CH * CW
    GROUP: tl.constexpr = GH * GW
    GROUPED: tl.constexpr = GROUP > 1
    pid_g = tl.program_id(0)  # group of GH x GW neighbouring query blocks (one block when GROUP == 1)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)

    # Tile row r: member j = r // BLOCK of the group (block (gt, gh * GH + j // GW, gw * GW + j % GW)), row r % BLOCK
    # of that block = token (r // (CH*CW), (r // CW) % CH, r % CW) of the chunk: SPEC §5 step 1 order.
    r = tl.arange(0, BLOCK * GROUP)
    member = r // BLOCK
    rb = r % BLOCK
    offs_d = tl.arange(0, HEAD_DIM)
    groups_h = (q_blocks_h + GH - 1) // GH
    groups_w = (q_blocks_w + GW - 1) // GW
    gt = pid_g // (groups_h * groups_w)
    qh = ((pid_g // groups_w) % groups_h) * GH + member // GW
    qw = (pid_g % groups_w) * GW + member % GW
    q_rows = ((gt * CT + rb // (CH * CW)) * q_grid_h + qh * CH + (rb // CW) % CH) * q_grid_w + qw * CW + rb % CW
    q_rows = q_rows.to(tl.int64)
    q_ptrs = Q + b * stride_qb + h * stride_qh + q_rows[:, None] * stride_qs + offs_d[None, :]
    if GROUPED:  # members past the grid edge (partial groups): no rows to load or store
        row_ok = (qh < q_blocks_h) & (qw < q_blocks_w)
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs)

    # Key tile columns: N_SUB blocks side by side; offset of each column's token from its block's first token.
    rn = tl.arange(0, BLOCK * N_SUB)
    sub = rn // BLOCK
    rk = rn % BLOCK
    k_rows_in_block = ((rk // (CH * CW)) * k_grid_h + (rk // CW) % CH) * k_grid_w + rk % CW
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    idx_row = IDX + b * stride_ib + h * stride_ih + pid_g.to(tl.int64) * stride_iq
    bits_row = BITS + b * stride_ib + h * stride_ih + pid_g.to(tl.int64) * stride_iq
    sel = b * stride_cb + h * stride_ch + pid_g
    end = tl.load(END + sel)
    # online-softmax state: fresh, or carried from the previous key-range pass (fp32, rows in raster order)
    state_rows = pid_bh.to(tl.int64) * seq_q + q_rows
    if FIRST:
        start = 0
        m_i = tl.full([BLOCK * GROUP], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK * GROUP], tl.float32)
        acc = tl.zeros([BLOCK * GROUP, HEAD_DIM], tl.float32)
    else:
        start = tl.load(START + sel)
        if GROUPED:
            m_i = tl.load(M_STATE + state_rows, mask=row_ok, other=float("-inf"))
            l_i = tl.load(L_STATE + state_rows, mask=row_ok, other=0.0)
            acc = tl.load(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        else:
            m_i = tl.load(M_STATE + state_rows)
            l_i = tl.load(L_STATE + state_rows)
            acc = tl.load(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :])

    n_full = (end - start) // N_SUB
    for it in range(0, n_full):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, start + it * N_SUB, end, idx_row, k_base, v_base, stride_ks, stride_vs,
            k_rows_in_block, sub, offs_d, k_blocks_h, k_blocks_w, k_grid_h, k_grid_w, qk_scale, bits_row, member,
            CT, CH, CW, DOT_PRECISION, MASKED=False, GROUPED=GROUPED,
        )  # fmt: skip
    if N_SUB > 1:  # noqa: SIM102 (a constexpr test of its own: the tail code is not even compiled for N_SUB == 1)
        if start + n_full * N_SUB < end:
            m_i, l_i, acc = _attend_tile(
                q, m_i, l_i, acc, start + n_full * N_SUB, end, idx_row, k_base, v_base, stride_ks, stride_vs,
                k_rows_in_block, sub, offs_d, k_blocks_h, k_blocks_w, k_grid_h, k_grid_w, qk_scale, bits_row,
                member, CT, CH, CW, DOT_PRECISION, MASKED=True, GROUPED=GROUPED,
            )  # fmt: skip

    if LAST:
        if GROUPED:  # rows of members past the grid edge have l = 0 (never stored): keep them finite anyway
            l_i = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_i[:, None]
        o_ptrs = O + b * stride_ob + h * stride_oh + q_rows[:, None] * stride_os + offs_d[None, :]
        if GROUPED:
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
        else:
            tl.store(o_ptrs, out.to(O.dtype.element_ty))
    elif GROUPED:
        tl.store(M_STATE + state_rows, m_i, mask=row_ok)
        tl.store(L_STATE + state_rows, l_i, mask=row_ok)
        tl.store(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
    else:
        tl.store(M_STATE + state_rows, m_i)
        tl.store(L_STATE + state_rows, l_i)
        tl.store(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :], acc)


@triton.jit(do_not_specialize=_NO_SPECIALIZE + ["nk_blocks"])
def _bsa_fwd_tma_kernel(
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
    CT: tl.constexpr,
    CH: tl.constexpr,
    CW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    PAIRS: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
):
    # The 64-row kernel above with its K/V gathers replaced by TMA tile loads: desc_k / desc_v describe block-major
    # K / V as [B * H * nk_blocks * BLOCK, HEAD_DIM] with [BLOCK, HEAD_DIM] boxes, so a selected key block is one
    # box at row (pid_bh * nk_blocks + blk) * BLOCK. Same arithmetic, in the same order, as _attend_tile.
    BLOCK: tl.constexpr = CT * CH * CW
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    rb = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    qt = pid_q // (q_blocks_h * q_blocks_w)
    qh = (pid_q // q_blocks_w) % q_blocks_h
    qw = pid_q % q_blocks_w
    q_rows = ((qt * CT + rb // (CH * CW)) * q_grid_h + qh * CH + (rb // CW) % CH) * q_grid_w + qw * CW + rb % CW
    q_rows = q_rows.to(tl.int64)
    q = tl.load(Q + b * stride_qb + h * stride_qh + q_rows[:, None] * stride_qs + offs_d[None, :])

    idx_row = IDX + b * stride_ib + h * stride_ih + pid_q.to(tl.int64) * stride_iq
    sel = b * stride_cb + h * stride_ch + pid_q
    end = tl.load(END + sel)
    state_rows = pid_bh.to(tl.int64) * seq_q + q_rows
    if FIRST:
        start = 0
        m_i = tl.full([BLOCK], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    else:
        start = tl.load(START + sel)
        m_i = tl.load(M_STATE + state_rows)
        l_i = tl.load(L_STATE + state_rows)
        acc = tl.load(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :])

    kv_row0 = pid_bh * nk_blocks
    if PAIRS:
        # two selected blocks per iteration (one online-softmax update, one rescale of acc per pair), then the odd
        # block out, if any, alone
        n_pairs = (end - start) // 2
        for it in tl.range(0, n_pairs, warp_specialize=WARP_SPECIALIZE):
            slot = start + 2 * it
            row_a = (kv_row0 + tl.load(idx_row + slot)) * BLOCK
            row_b = (kv_row0 + tl.load(idx_row + slot + 1)) * BLOCK
            s_a = tl.dot(q, tl.trans(desc_k.load([row_a, 0])), input_precision=DOT_PRECISION)
            s_b = tl.dot(q, tl.trans(desc_k.load([row_b, 0])), input_precision=DOT_PRECISION)
            m_new = tl.maximum(m_i, tl.maximum(tl.max(s_a, 1), tl.max(s_b, 1)) * qk_scale)
            p_a = tl.math.exp2(s_a * qk_scale - m_new[:, None])
            p_b = tl.math.exp2(s_b * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + (tl.sum(p_a, 1) + tl.sum(p_b, 1))
            v_a = desc_v.load([row_a, 0])
            acc = tl.dot(p_a.to(v_a.dtype), v_a, acc * alpha[:, None], input_precision=DOT_PRECISION)
            v_b = desc_v.load([row_b, 0])
            acc = tl.dot(p_b.to(v_b.dtype), v_b, acc, input_precision=DOT_PRECISION)
            m_i = m_new
        start = start + 2 * n_pairs
    for slot in tl.range(start, end, warp_specialize=WARP_SPECIALIZE):
        row = (kv_row0 + tl.load(idx_row + slot)) * BLOCK
        k = desc_k.load([row, 0])
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = desc_v.load([row, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    if LAST:
        out = acc / l_i[:, None]
        o_ptrs = O + b * stride_ob + h * stride_oh + q_rows[:, None] * stride_os + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty))
    else:
        tl.store(M_STATE + state_rows, m_i)
        tl.store(L_STATE + state_rows, l_i)
        tl.store(ACC + state_rows[:, None] * HEAD_DIM + offs_d[None, :], acc)


def _launch(kernel, grid, x, args, meta) -> None:
    """``kernel[grid](*args, **meta)`` on x's GPU (or on CPU under TRITON_INTERPRET=1)."""
    if x.is_cuda:
        with torch.cuda.device(x.device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


@functools.lru_cache
def _l2_bytes(device_index: int) -> int:
    return getattr(torch.cuda.get_device_properties(device_index), "L2_cache_size", 0)


def auto_kv_passes(k: torch.Tensor) -> int:
    """Key-range passes that keep one head's K+V slice within half the L2 (1 on CPU / when it already fits)."""
    if not k.is_cuda:
        return 1
    l2 = _l2_bytes(k.device.index if k.device.index is not None else torch.cuda.current_device())
    kv_head = 2 * k.shape[2] * k.shape[3] * k.element_size()
    return 1 if l2 <= 0 else max(1, min(8, math.ceil(kv_head / (0.5 * l2))))


def bsa_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    latent_shape_q,
    latent_shape_k,
    chunk_3d_shape,
    config: BsaKernelConfig | None = None,
    out: torch.Tensor | None = None,
    *,
    order: str = "sort",
    bits: torch.Tensor | None = None,
    kv_blocks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sparse attention of raster-ordered q [B, H, Sq, D] over k, v [B, H, Sk, D] and a block selection.

    ``indices`` [B, H, Nq_blk, K_max] (key blocks, row-major (t, h, w) block numbering) and ``counts``
    [B, H, Nq_blk] as returned by ``select_blocks``; row (b, h, i) uses ``indices[b, h, i, :counts[b, h, i]]``.
    ``order``: "sort" sorts each row ascending first (what the op runs), "sorted" promises it already is
    (``ascending_selection``), "as_given" keeps the given order (one pass only, no groups; for measurements).
    Grouped configs (``group_h * group_w > 1``) build the groups' unions (``group_selection``) unless ``bits`` is
    given: then ``indices``, ``bits`` and ``counts`` are that union already (for timing the kernel alone).
    Returns [B, H, Sq, D] laid out like ``torch.empty_like(q)``, or writes ``out`` (same shape and dtype as q,
    unit stride along D). ``kv_blocks``: the TMA kernel's block-major copies of k and v when the caller made them
    already (:func:`blocks_and_means`, which pools k in the same pass); made here when None.
    Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.
    """
    cfg = config or default_config(q)
    bsz, heads, sq, d = q.shape
    ct, ch, cw = (int(c) for c in chunk_3d_shape)
    block = ct * ch * cw
    if block < 16 or block & (block - 1):
        raise ValueError(f"Triton BSA needs a power-of-two block of >= 16 tokens; chunk {tuple(chunk_3d_shape)}")
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"Triton BSA supports head_dim 16..256 (power of two); got q {list(q.shape)}")
    if cfg.group < 1 or cfg.group & (cfg.group - 1):
        raise ValueError(f"group_h * group_w must be a power of two; got {cfg.group_h} x {cfg.group_w}")
    if cfg.tma and (cfg.group > 1 or cfg.n_sub not in (1, 2)):
        raise ValueError(f"the TMA kernel takes one or two key blocks per iteration and no groups; got {cfg}")
    if cfg.gluon not in (0, 1, 2, 3, 4) or cfg.gluon and not (cfg.tma and cfg.n_sub == 1 and cfg.num_warps == 4):
        raise ValueError(f"the Gluon kernel (version 1 to 4) is a TMA kernel of 4 warps, n_sub 1; got {cfg}")
    if cfg.tma and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] < 9:
        raise ValueError("the TMA kernel needs an sm_90+ GPU (Hopper or newer); use BsaKernelConfig(tma=False)")
    passes = cfg.kv_passes or auto_kv_passes(k)
    if cfg.raster and not cfg.gluon:
        raise ValueError(f"raster K/V reads (5-D TMA boxes) need the Gluon kernel; got {cfg}")
    if cfg.rotate and not (cfg.gluon and passes == 1 and order != "as_given"):
        raise ValueError(f"rotated walks need the Gluon kernel, one key-range pass and a sorted selection; got {cfg}")
    if order not in ("sort", "sorted", "as_given") or (order == "as_given" and (passes > 1 or cfg.group > 1)):
        raise ValueError(
            f"order must be 'sort' or 'sorted' ('as_given' needs kv_passes=1 and no groups); got {order!r}, {passes}"
        )
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if out is None:
        out = torch.empty_like(q)
        if out.stride(-1) != 1:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {list(q.shape)} {q.dtype} with unit stride along D; got {list(out.shape)}")
    tq, hq, wq = (int(s) for s in latent_shape_q)
    tk, hk, wk = (int(s) for s in latent_shape_k)
    gh, gw = cfg.group_h, cfg.group_w
    if cfg.group > 1 and bits is None:
        indices, bits, counts = group_selection(indices, counts, (tq // ct, hq // ch, wq // cw), (gh, gw))
    elif order == "sort" and cfg.group == 1:
        indices = ascending_selection(indices, counts)
    idx = indices.to(torch.int32).contiguous()
    bits = idx if cfg.group == 1 else bits.to(torch.int32).contiguous()  # not read without groups
    if bits.stride() != idx.stride():
        raise ValueError(f"bits {list(bits.shape)} must match indices {list(idx.shape)}")
    bounds = _pass_bounds(indices, counts, passes, (tk, hk, wk), chunk_3d_shape)
    if passes > 1:
        acc = torch.empty(bsz * heads, sq, d, dtype=torch.float32, device=q.device)
        m_state, l_state = torch.empty(2, bsz * heads, sq, dtype=torch.float32, device=q.device)
    else:
        acc = m_state = l_state = torch.empty(1, dtype=torch.float32, device=q.device)  # unused
    grid = ((tq // ct) * -(-(hq // ch) // gh) * -(-(wq // cw) // gw), bsz * heads)
    # fp32 inputs get exact fp32 products (Triton would use TF32); bf16/fp16 ignore the setting.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    if cfg.tma:
        _launch_tma(q, k, v, out, idx, bounds, (acc, m_state, l_state), (hq, wq), (tk, hk, wk), chunk_3d_shape, cfg,
                    grid, precision, kv_blocks)  # fmt: skip
        return out
    for p in range(passes):
        start, end = bounds[p], bounds[p + 1]
        # fmt: off
        args = (
            q, k, v, out, idx, bits, start, end, acc, m_state, l_state,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            idx.stride(0), idx.stride(1), idx.stride(2), end.stride(0), end.stride(1),
            heads, sq, _LOG2E / math.sqrt(d),
            hq, wq, hq // ch, wq // cw, hk, wk, hk // ch, wk // cw,
        )
        # fmt: on
        meta = dict(CT=ct, CH=ch, CW=cw, HEAD_DIM=d, N_SUB=cfg.n_sub, GH=gh, GW=gw, DOT_PRECISION=precision)
        meta.update(FIRST=p == 0, LAST=p == passes - 1, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        _launch(_bsa_fwd_kernel, grid, q, args, meta)
    return out


def _runs_gluon(q: torch.Tensor, chunk, cfg: BsaKernelConfig) -> bool:
    """Whether ``cfg`` launches the Gluon kernel for q (else the Triton TMA kernel)."""
    return bool(cfg.gluon) and q.is_cuda and _gluon_runs_on(q.device) and _gluon_module().supports(q, chunk)


def raster_kv(q, k, v, latent_shape_k, chunk, cfg: BsaKernelConfig):
    """The Gluon kernel's TMA descriptors over raster-ordered k and v and its (kv_xb, kv_tb) when ``cfg`` reads K/V
    boxes from the raster layout (``cfg.raster``, the Gluon kernel runs, and ``gluon_bsa.raster_view`` describes both
    tensors); None when the kernel reads block-major copies instead."""
    if not (cfg.raster and _runs_gluon(q, chunk, cfg)):
        return None
    return _gluon_module().raster_descriptors(k, v, latent_shape_k, chunk)


def _launch_tma(q, k, v, out, idx, bounds, state, q_hw, latent_k, chunk, cfg, grid, precision, kv_blocks) -> None:
    """The TMA kernels' passes (the Gluon kernel where ``cfg.gluon`` applies, else the Triton one; the same
    arguments). K/V boxes come from the raster layout through 5-D descriptors (``raster_kv``), or from block-major
    copies of K and V made once (one read and one write of each, ~0.7 ms each at the 720p refine shape on an H200;
    or ``kv_blocks``, copies made by the caller), one [BLOCK, D] box per selected key block."""
    bsz, heads, sq, d = q.shape
    ct, ch, cw = (int(c) for c in chunk)
    block = ct * ch * cw
    (hq, wq), sk = q_hw, k.shape[2]
    gluon = _runs_gluon(q, chunk, cfg)
    raster = raster_kv(q, k, v, latent_k, chunk, cfg) if kv_blocks is None else None
    if raster is None:
        if kv_blocks is None:
            kv_blocks = tuple(blocks_and_means(x, latent_k, chunk, pool=False)[0] for x in (k, v))
        for blocked in kv_blocks:
            if blocked.shape != (bsz * heads * sk, d) or not blocked.is_contiguous() or blocked.dtype != k.dtype:
                raise ValueError(f"kv_blocks must be contiguous [{bsz * heads * sk}, {d}] {k.dtype}; got "
                                 f"{list(blocked.shape)} {blocked.dtype}")  # fmt: skip
    if gluon:
        kernel, meta = _gluon_module().kernel_and_meta(cfg.gluon, cfg.num_stages)  # constexprs and launch options
        if raster is None:
            descs, view = _gluon_module().kv_descriptors(kv_blocks, d), (0, 0)
        else:
            descs, view = raster
            meta.update(RASTER=True, NB_H=int(latent_k[1]) // ch, NB_W=int(latent_k[2]) // cw)
        if cfg.rotate:  # the common phase: key blocks done so far in all, one turn per resident programs' work
            resident = cfg.rotate * torch.cuda.get_device_properties(q.device).multi_processor_count
            counts = bounds[-1]
            turn = (counts.sum(dtype=torch.int64) * resident // counts.numel()).clamp(min=1).reshape(1)
            progress = torch.zeros(1, dtype=torch.int64, device=q.device)
            meta.update(ROTATE=True, K_MAX=triton.next_power_of_2(idx.shape[-1]))
        else:
            turn = progress = idx  # not read
        extra = (progress, turn, *view)
    else:
        descs = [TensorDescriptor(blocked, [bsz * heads * sk, d], [d, 1], [block, d]) for blocked in kv_blocks]
        kernel = _bsa_fwd_tma_kernel
        meta = dict(DOT_PRECISION=precision, WARP_SPECIALIZE=cfg.warp_specialize, PAIRS=cfg.n_sub == 2)
        meta.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if cfg.maxnreg:
            meta["maxnreg"] = cfg.maxnreg
        extra = ()
    meta.update(CT=ct, CH=ch, CW=cw, HEAD_DIM=d)
    acc, m_state, l_state = state
    passes = len(bounds) - 1
    for p in range(passes):
        # fmt: off
        args = (
            q, *descs, out, idx, bounds[p], bounds[p + 1], acc, m_state, l_state,
            q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
            idx.stride(0), idx.stride(1), idx.stride(2), bounds[-1].stride(0), bounds[-1].stride(1),
            heads, sq, sk // block, _LOG2E / math.sqrt(d), hq, wq, hq // ch, wq // cw, *extra,
        )
        # fmt: on
        _launch(kernel, grid, q, args, {**meta, "FIRST": p == 0, "LAST": p == passes - 1})


@triton.jit
def _blocks_means_kernel(
    X, OUT, MEAN,
    sx_b, sx_h, sx_s,
    heads, H, W, nb_h, nb_w, seq, n_blocks,
    CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, HEAD_DIM: tl.constexpr,
    STORE: tl.constexpr, POOL: tl.constexpr,
):  # fmt: skip
    # One program per (3-D block n, batch·head): the block's rows gathered from the raster layout (16-byte runs), then
    # stored block-major (STORE) and / or summed into the block's mean (POOL).
    BLOCK: tl.constexpr = CT * CH * CW
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    bt, bhh, bw = n // (nb_h * nb_w), (n // nb_w) % nb_h, n % nb_w
    r = tl.arange(0, BLOCK)
    tok = ((bt * CT + r // (CH * CW)) * H + bhh * CH + (r // CW) % CH).to(tl.int64) * W + bw * CW + r % CW
    d = tl.arange(0, HEAD_DIM)
    x = tl.load(X + b * sx_b + h * sx_h + tok[:, None] * sx_s + d[None, :])
    if STORE:
        tl.store(OUT + (bh * seq + n * BLOCK + r)[:, None] * HEAD_DIM + d[None, :], x)
    if POOL:  # fp32 sum, times 1 / BLOCK (a power of two: exact), rounded once to the input dtype (SPEC §5 step 2)
        mean = tl.sum(x.to(tl.float32), axis=0) * (1.0 / BLOCK)
        tl.store(MEAN + (bh * n_blocks + n) * HEAD_DIM + d, mean.to(X.dtype.element_ty).to(tl.float32))


@triton.jit
def _run_means_kernel(
    X, MEAN,
    sx_b, sx_h, sx_s,
    heads, H, W, nb_h, nb_w, n_blocks, runs_w,
    CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, HEAD_DIM: tl.constexpr, WB: tl.constexpr,
):  # fmt: skip
    # One program per (run of WB neighbouring blocks along w, block row (bt, bh), batch·head): the run's CT·CH token
    # rows, WB·CW consecutive tokens each (contiguous in the raster layout), summed in fp32 row by row, then the CW
    # columns of each block; times 1 / BLOCK (a power of two: exact), rounded once to the input dtype.
    TOK: tl.constexpr = WB * CW
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    run, row = pid % runs_w, pid // runs_w
    bt, bhh = row // nb_h, row % nb_h
    w = run * TOK + tl.arange(0, TOK)
    d = tl.arange(0, HEAD_DIM)
    inside = (w < W)[:, None]
    base = X + b * sx_b + h * sx_h + d[None, :]
    acc = tl.zeros([TOK, HEAD_DIM], tl.float32)
    for r in tl.static_range(CT * CH):
        tok = ((bt * CT + r // CH) * H + bhh * CH + r % CH).to(tl.int64) * W + w
        acc += tl.load(base + tok[:, None] * sx_s, mask=inside, other=0.0).to(tl.float32)
    sums = tl.sum(tl.reshape(acc, [WB, CW, HEAD_DIM]), axis=1)
    bw = run * WB + tl.arange(0, WB)
    mean = (sums * (1.0 / (CT * CH * CW))).to(X.dtype.element_ty).to(tl.float32)
    tl.store(MEAN + (bh * n_blocks + row * nb_w + bw)[:, None] * HEAD_DIM + d[None, :], mean, mask=(bw < nb_w)[:, None])


# Means alone: programs over runs of MEANS_RUN neighbouring blocks along w, reading CT·CH contiguous stretches of
# MEANS_RUN·CW tokens (``_run_means_kernel``) instead of one program per block summing its [64, D] tile at once. At
# the 720p refine shape on an H200: 0.4 ms against 0.6-0.7 ms per tensor, for runs of 1 to 8 blocks at 4 or 8 warps
# alike (bench/bsa_op_probe.py, results/bsa_op_probe_nvidia-h200_20261122-s15b, -s15c).
MEANS_RUN = 4


def blocks_and_means(x: torch.Tensor, latent_shape, chunk, *, store: bool = True, pool: bool = True, run=None):
    """One pass over raster-ordered x [B, H, S, D] (unit stride along D): its block-major copy ([B·H·S, D]
    contiguous, as ``reorder_to_blocks(x).reshape(-1, D)``) when ``store``, and its per-block means ([B, H, N_blk, D]
    fp32 holding values rounded to x's dtype, as ``raster_block_means``) when ``pool``; None for what is not asked.
    The block must be a power of two of >= 16 tokens and D a power of two (what the BSA kernels take). ``run``: the
    means-alone pass's blocks per program along w (a power of two; default ``MEANS_RUN``; 0: one program per block,
    as the pass that also copies)."""
    bsz, heads, seq, d = x.shape
    ct, ch, cw = (int(c) for c in chunk)
    block = ct * ch * cw
    if block < 16 or block & (block - 1) or d < 16 or d & (d - 1) or x.stride(-1) != 1:
        raise ValueError(f"blocks_and_means needs a power-of-two block and head dim, unit D stride; got "
                         f"chunk {tuple(chunk)}, x {list(x.shape)} strides {x.stride()}")  # fmt: skip
    t, hh, w = (int(s) for s in latent_shape)
    if t * hh * w != seq or t % ct or hh % ch or w % cw:
        raise ValueError(f"latent shape {tuple(latent_shape)} does not tile {seq} tokens by chunk {tuple(chunk)}")
    n_blocks = seq // block
    out = torch.empty(bsz * heads * seq, d, dtype=x.dtype, device=x.device) if store else None
    mean = torch.empty(bsz, heads, n_blocks, d, dtype=torch.float32, device=x.device) if pool else None
    if not (store or pool):
        return out, mean
    run = MEANS_RUN if run is None else int(run)
    if run < 0 or run & (run - 1):
        raise ValueError(f"blocks_and_means: run must be 0 or a power of two; got {run}")
    if run and not store:
        nb_h, nb_w = hh // ch, w // cw
        runs_w = -(-nb_w // run)
        args = (x, mean, x.stride(0), x.stride(1), x.stride(2), heads, hh, w, nb_h, nb_w, n_blocks, runs_w)
        meta = dict(CT=ct, CH=ch, CW=cw, HEAD_DIM=d, WB=run, num_warps=4)
        _launch(_run_means_kernel, ((t // ct) * nb_h * runs_w, bsz * heads), x, args, meta)
        return out, mean
    # fmt: off
    args = (
        x, out if store else x, mean if pool else x,
        x.stride(0), x.stride(1), x.stride(2),
        heads, hh, w, hh // ch, w // cw, seq, n_blocks,
    )
    # fmt: on
    meta = dict(CT=ct, CH=ch, CW=cw, HEAD_DIM=d, STORE=store, POOL=pool, num_warps=4)
    _launch(_blocks_means_kernel, (n_blocks, bsz * heads), x, args, meta)
    return out, mean


def _pass_bounds(indices, counts, passes, latent_shape_k, chunk) -> list[torch.Tensor]:
    """Start/end list positions [B, H, Nq_blk] (int32) of each pass: pass r takes the selected blocks whose index
    lies in the r-th of ``passes`` equal slices of the key blocks (a contiguous run of the ascending list)."""
    tk, hk, wk = latent_shape_k
    nk = (tk // chunk[0]) * (hk // chunk[1]) * (wk // chunk[2])
    end = counts.to(torch.int32).contiguous()
    if passes == 1:
        return [end, end]  # the first pass starts at 0 without reading its start
    valid = torch.arange(indices.shape[-1], device=indices.device) < counts.unsqueeze(-1)
    inner = [((indices < nk * r // passes) & valid).sum(-1).to(torch.int32) for r in range(1, passes)]
    return [torch.zeros_like(end), *inner, end]
