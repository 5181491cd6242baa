"""The default CUDA path (fused Triton kernels + best attention + CUDA-graph step, bf16) against fp32 on the
tiny checkpoint. Skipped without CUDA (CI is CPU-only; run on the GPU machine).

Bound (STYLE #9): relative L2 error of the fast bf16 path vs an fp32 run <= 2 x that of the plain eager bf16
path (the original's math in bf16) + 1e-3 for the accumulated rounding of a few denoising steps.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from lc_runtime.pipeline import Pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def pipes():
    fast = Pipeline.from_pretrained(TINY, device="cuda")  # defaults on CUDA: bf16, graph, triton, best attention
    eager = Pipeline.from_pretrained(TINY, device="cuda", dtype=torch.bfloat16, compile="none", kernels="torch")
    fp32 = Pipeline.from_pretrained(TINY, device="cuda", dtype=torch.float32, compile="none", kernels="torch")
    return fast, eager, fp32


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


CASES = {
    "t2v": {"task": "t2v", "height": 64, "width": 96, "num_frames": 9},
    "vc": {"task": "vc", "height": 64, "width": 96, "num_frames": 13, "num_cond_frames": 5},
    "vc_nokv": {"task": "vc", "height": 64, "width": 96, "num_frames": 13, "num_cond_frames": 5, "use_kv_cache": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_within_bf16_precision(pipes, case):
    import numpy as np

    kw = dict(CASES[case], prompt="a red fox", num_inference_steps=4, seed=1, output_type="latent")
    if kw["task"] == "vc":
        kw["video"] = np.random.default_rng(0).integers(0, 255, (9, 64, 96, 3), dtype=np.uint8)
    frames = (kw["num_frames"] - 1) // 4 + 1
    kw["latents"] = torch.randn(1, 16, frames, 8, 12, generator=torch.Generator().manual_seed(2))
    fast, eager, fp32 = pipes
    ref = fp32.generate(**kw).latents
    err_fast = rel(fast.generate(**kw).latents, ref)
    err_eager = rel(eager.generate(**kw).latents, ref)
    assert err_fast <= 2 * err_eager + 1e-3, f"{case}: fast {err_fast:.2e}, eager bf16 {err_eager:.2e}"


def test_refine_with_block_sparse_attention_runs(pipes):
    import numpy as np

    fast = pipes[0]
    stage1 = np.random.default_rng(1).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    out = fast.generate(task="refine", prompt="", stage1_video=stage1, height=64, width=64, seed=3)
    assert out.frames.shape == (18, 64, 64, 3) and out.fps == 30
    assert not fast.dit.bsa_enabled and fast.dit.active_loras == {}
