"""Top-k selection in ascending order (lc_runtime/ops/triton_topk.py) against its PyTorch reference
(``topk_ascending_ref``): the reference against torch.topk, both Triton searches (``method`` "radix" and "interp")
under TRITON_INTERPRET=1 on CPU and on CUDA, and the op's selection path ("ascending" order) against the original
order re-sorted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lc_runtime.ops.block_sparse_attention import ascending_selection, select_blocks_raster, topk_ascending_ref

REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def score_cases(device="cpu") -> list[tuple[str, torch.Tensor, int]]:
    """(name, scores [..., N], k): sizes around powers of two, k from 1 to N, negative scores, ties at the k-th
    value (among equal scores the lowest columns win), signed zeros, a strided view; and rows against the
    interpolation search: all equal, +-inf, huge and subnormal magnitudes, two clusters far apart, sorted and
    reverse-sorted, adjacent floats (keys one apart), random bit patterns (every magnitude)."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for n, k in ((1, 1), (2, 1), (2, 2), (3, 2), (7, 3), (64, 64), (100, 1), (100, 37), (513, 200), (2640, 165)):
        cases.append((f"randn n={n} k={k}", torch.randn(3, 5, n, generator=g), k))
    ties = torch.randint(-3, 4, (6, 50), generator=g).float()  # seven distinct values: ties everywhere
    cases += [(f"ties k={k}", ties, k) for k in (1, 5, 17, 49, 50)]
    zeros = torch.tensor([[0.0, -0.0, 1.0, -0.0, 0.0, -1.0, -0.0, 0.0]])
    cases += [(f"signed zeros k={k}", zeros, k) for k in (2, 3, 5)]
    cases.append(("negative", -torch.rand(4, 300, generator=g) * 1e30, 31))
    cases.append(("tiny magnitudes", torch.randn(4, 300, generator=g) * 1e-38, 31))
    wide = torch.randn(4, 300, 2, generator=g)
    cases.append(("strided", wide[..., 0], 40))
    cases += [(f"all equal n={n} k={k}", torch.full((2, n), -2.5), k) for n, k in ((3, 1), (3, 2), (3, 3), (33, 7))]
    infs = torch.randn(3, 40, generator=g)
    infs[:, :9], infs[:, 9:14] = float("inf"), float("-inf")
    cases += [(f"infs k={k}", infs[:, torch.randperm(40, generator=g)], k) for k in (1, 9, 10, 30, 36)]
    cases.append(("huge magnitudes", torch.randn(3, 64, generator=g) * 3e38, 20))
    cases.append(("subnormals", torch.randn(3, 64, generator=g) * 1e-42, 20))
    far = torch.rand(3, 80, generator=g) < 0.3
    two = torch.where(far, 1e30 + 1e24 * torch.randn(3, 80, generator=g), 1e-30 * torch.randn(3, 80, generator=g))
    cases += [(f"two clusters k={k}", two, k) for k in (5, 40)]
    x = torch.randn(2, 90, generator=g)
    cases += [("sorted", x.sort(-1).values, 30), ("reverse-sorted", x.sort(-1, descending=True).values, 30)]
    one = torch.tensor(1.0).view(torch.int32)
    adjacent = (one + torch.randperm(70, generator=g).to(torch.int32)).view(torch.float32)  # keys one apart
    cases += [(f"adjacent floats k={k}", adjacent.expand(2, 70), k) for k in (1, 20, 69)]
    adjacent_ties = (one + torch.randint(0, 4, (3, 70), generator=g).to(torch.int32)).view(torch.float32)
    cases += [(f"adjacent ties k={k}", adjacent_ties, k) for k in (10, 35)]
    bits = torch.randint(-(2**31), 2**31, (4, 64), generator=g).to(torch.int32).view(torch.float32)
    cases.append(("random bits", torch.where(bits.isnan(), 0.0, bits), 16))  # every magnitude, NaNs zeroed
    return [(name, s.to(device), k) for name, s, k in cases]


@pytest.mark.parametrize(("name", "scores", "k"), score_cases())
def test_reference_selects_the_topk_set(name, scores, k):
    got = topk_ascending_ref(scores, k)
    assert got.shape == (*scores.shape[:-1], k) and got.dtype == torch.int64
    assert torch.equal(got, got.sort(-1).values) and (got.diff(dim=-1) > 0).all()
    picked = torch.gather(scores, -1, got)
    # the same values as torch.topk's (the sets can differ only among equal scores)...
    assert torch.equal(picked.sort(-1).values, torch.topk(scores, k, dim=-1).values.sort(-1).values)
    # ...and among the columns holding the k-th largest value, the lowest ones
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    tied = scores == kth
    n_above = (scores > kth).sum(-1, keepdim=True)
    want_tied = tied & (torch.cumsum(tied.long(), -1) <= k - n_above)
    want = (scores > kth) | want_tied
    assert torch.equal(torch.zeros_like(want).scatter(-1, got, True), want), name


def test_ascending_selection_order_is_the_same_sets():
    g = torch.Generator().manual_seed(1)
    lat = (8, 8, 8)
    q, k = torch.randn(2, 2, 512, 16, generator=g), torch.randn(2, 2, 512, 16, generator=g)
    for sparsity, cdf in ((0.75, None), (None, 0.5), (0.5, 0.6)):
        idx, counts = select_blocks_raster(q, k, lat, lat, sparsity, cdf)
        asc, counts_asc = select_blocks_raster(q, k, lat, lat, sparsity, cdf, order="ascending")
        assert torch.equal(counts, counts_asc)
        assert torch.equal(asc, ascending_selection(idx, counts))
    with pytest.raises(ValueError, match="selection order"):
        select_blocks_raster(q, k, lat, lat, 0.75, None, order="sorted")


@needs_triton
def test_topk_ascending_rejects_bad_arguments():
    from lc_runtime.ops.triton_topk import MAX_COLS, topk_ascending

    with pytest.raises(ValueError, match="k must be in"):
        topk_ascending(torch.randn(2, 8), 9)
    with pytest.raises(ValueError, match="k must be in"):
        topk_ascending(torch.randn(2, 8), 0)
    with pytest.raises(ValueError, match="dtype"):
        topk_ascending(torch.randn(2, 8), 2, dtype=torch.int16)
    with pytest.raises(ValueError, match="at most"):
        topk_ascending(torch.randn(1, MAX_COLS + 1), 2)
    with pytest.raises(ValueError, match="method must be one of"):
        topk_ascending(torch.randn(2, 8), 2, method="sort")
    with pytest.raises(ValueError, match="group must be 0 or a power of two"):
        topk_ascending(torch.randn(2, 8), 2, group=24)


def _check_kernel(device) -> list[dict]:
    from lc_runtime.ops.triton_topk import METHODS, topk_ascending

    records = []
    for i, (name, scores, k) in enumerate(score_cases(device)):
        want = topk_ascending_ref(scores, k)
        dtype = (torch.int64, torch.int32)[i % 2]  # (the interpreter is slow: each case with one of the two)
        # both searches; every third case also the interpolation search on one vector of columns (group 0)
        # instead of its default groups of INTERP_GROUP columns, every third other case also with its row in one
        # tile (split=False; the default splits rows of at most 3/4 of a power of two: 2,640, 513, 300, 90, ...)
        variants = [(m, None, None) for m in METHODS] + [("interp", 0, None)] * (i % 3 == 0)
        for method, group, split in variants + [("interp", None, False)] * (i % 3 == 1):
            got = topk_ascending(scores, k, dtype=dtype, method=method, group=group, split=split)
            ok = got.dtype == dtype and got.shape == want.shape and torch.equal(got.long().cpu(), want.cpu())
            records.append(dict(case=f"{name} {method} group={group} split={split} {dtype}", ok=ok))
    return records


@needs_triton
def test_triton_topk_in_interpreter():
    """Both kernels on CPU under TRITON_INTERPRET=1 (a subprocess: the flag is read when kernels are defined)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, __file__, "--interpreter-worker"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(score_cases())
    assert len(records) == 2 * n + -(-n // 3) + (n + 1) // 3
    assert all(r["ok"] for r in records), [r["case"] for r in records if not r["ok"]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_topk_on_cuda():
    records = _check_kernel("cuda")
    assert all(r["ok"] for r in records), [r["case"] for r in records if not r["ok"]]
    # the 720p refine shape: 32 heads x 2,640 query blocks x 2,640 key blocks, top 165
    scores = torch.randn(1, 32, 2640, 2640, device="cuda")
    from lc_runtime.ops.triton_topk import topk_ascending

    want = torch.topk(scores, 165, dim=-1).indices.sort(-1).values
    for method in ("radix", "interp"):
        assert torch.equal(topk_ascending(scores, 165, method=method), want), method
    means = torch.randn(1, 32, 2640, 128, device="cuda")  # scores as the op computes them: dot products of means
    scores = means @ torch.randn(1, 32, 128, 2640, device="cuda")
    assert torch.equal(topk_ascending(scores, 165, method="interp"), topk_ascending(scores, 165, method="radix"))
    # rows longer than one program holds go through the PyTorch reference in the op's dispatcher
    from lc_runtime.ops.block_sparse_attention import _topk_ascending
    from lc_runtime.ops.triton_topk import MAX_COLS

    for n in (2640, MAX_COLS + 7):
        long_rows = torch.randn(3, n, device="cuda")
        assert torch.equal(_topk_ascending(long_rows, 100), topk_ascending_ref(long_rows, 100)), n


if __name__ == "__main__" and "--interpreter-worker" in sys.argv:
    sys.path.insert(0, str(Path(__file__).parent))
    from interpreter_shims import install_interpreter_shims

    install_interpreter_shims()
    print(json.dumps(_check_kernel("cpu")))
