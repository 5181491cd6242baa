"""GraphDenoiser (lc_runtime/graphs.py): graph keys, the static-buffer protocol (on CPU through eager_capture, the
same code path with the CUDA graph replaced by an eager call), the Pipeline's speed options, and — on CUDA — that
graph replay equals the eager DiT."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from lc_runtime import tasks
from lc_runtime.config import DiTConfig
from lc_runtime.graphs import GraphDenoiser, eager_capture, graph_key
from lc_runtime.models.dit import LongCatDiT, TextContext, init_random_
from lc_runtime.sampling import make_schedule

CUDA = torch.cuda.is_available()


def tiny_dit(device="cpu", dtype=torch.float32) -> LongCatDiT:
    cfg = DiTConfig(hidden_size=64, depth=2, num_heads=2, caption_channels=24, adaln_tembed_dim=32,
                    text_tokens_zero_pad=True)  # fmt: skip
    return init_random_(LongCatDiT(cfg), seed=21, device=device, dtype=dtype).eval()


def inputs(dit, seed=0, batch=2, frames=3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, 4, 6, generator=g).to(device, dit.dtype)
    t = torch.full((batch,), 700.0, device=device)
    y = torch.randn(batch, 1, 512, 24, generator=g).to(device)
    text = dit.prepare_text(y, torch.ones(batch, 512, dtype=torch.long, device=device))
    return x, t, text


# ---------------------------------------------------------------------------------------------- keys
def test_graph_key_buckets():
    dit = tiny_dit()
    x, t, text = inputs(dit)
    kv = dit.prefill(x[:1, :, :1])
    base = graph_key(dit, x, t, text, 0, None)
    x2, t2, text2 = inputs(dit, seed=1)
    assert graph_key(dit, x2, t2, text2, 0, None) == base  # new values, new prompt: same graph
    assert graph_key(dit, x[:1], t[:1], text, 0, None) != base  # batch
    assert graph_key(dit, x[:, :, :2], t, text, 0, None) != base  # frames
    assert graph_key(dit, x, t, text, 1, None) != base  # conditioning latents
    assert graph_key(dit, x, t[:, None].expand(2, 3), text, 0, None) != base  # per-frame timestep
    cached = graph_key(dit, x, t, text, 0, kv)
    assert cached != base and graph_key(dit, x2, t2, text2, 0, kv) == cached
    assert graph_key(dit, x, t, text, 0, dit.prefill(x[1:, :, :1])) != cached  # a new cache is read in place
    masked = TextContext(text.k, text.v, torch.ones(2, 512, dtype=torch.bool))
    assert graph_key(dit, x, t, masked, 0, None) != base
    dit.use_kernels("triton", attention="sdpa")
    assert graph_key(dit, x, t, text, 0, None) != base  # the kernel table is part of the graph


# ---------------------------------------------------------------------------------------------- protocol
@torch.no_grad()
def test_static_buffer_protocol_equals_eager_on_cpu():
    dit = tiny_dit()
    den = GraphDenoiser(dit, use_cuda_graph=True, capture=eager_capture, max_graphs=2)
    x, t, text = inputs(dit)
    kv = dit.prefill(x[:1, :, :1])
    for nc, cache in ((0, None), (1, None), (0, kv)):
        assert torch.equal(
            den(x, t, text, nc, cache), dit(x, t, text_context=text, num_cond_latents=nc, kv_cache=cache)
        )
    assert den.captures == 3 and len(den._buckets) == 2  # least recently used bucket dropped
    assert den.replays == 0  # a new bucket's first call returns its warm-up's result: one forward, no replay
    x2, t2, text2 = inputs(dit, seed=1)
    out = den(x2, t2, text2, 0, kv)  # same bucket, new latents, new text copied into the static buffers
    assert den.captures == 3
    assert torch.equal(out, dit(x2, t2, text_context=text2, kv_cache=kv))
    text2.k.mul_(0.5)  # an in-place edit of the context is noticed too
    assert torch.equal(den(x2, t2, text2, 0, kv), dit(x2, t2, text_context=text2, kv_cache=kv))
    assert den.replays == 2
    out.zero_()  # outputs never alias the static output buffer
    assert den(x2, t2, text2, 0, kv).abs().sum() > 0


@torch.no_grad()
def test_denoise_loop_with_graph_denoiser_equals_eager():
    dit = tiny_dit()
    x, _, text = inputs(dit, batch=1)
    cond = tasks.Conditioning(latents=x.float(), schedule=make_schedule(4, 12.0, False), text=text, guidance=None)
    eager = tasks.denoise(tasks.dit_denoiser(dit), cond, dit.dtype)
    den = GraphDenoiser(dit, use_cuda_graph=True, capture=eager_capture)
    assert torch.equal(tasks.denoise(den, cond, dit.dtype), eager)
    assert den.captures == 1 and den.replays == 3  # step 1: the warm-up's result
    assert torch.equal(tasks.denoise(GraphDenoiser(dit, use_cuda_graph=False), cond, dit.dtype), eager)


@torch.no_grad()
def test_release_drops_graphs_and_recaptures_without_warmup():
    dit = tiny_dit()
    warmups = []

    def capture(fn, *, warmup, pool):
        warmups.append(warmup)
        return eager_capture(fn, warmup=warmup)

    den = GraphDenoiser(dit, use_cuda_graph=True, capture=capture, warmup=2)
    x, t, text = inputs(dit)
    kv = dit.prefill(x[:1, :, :1])
    first = den(x, t, text, 0, kv)
    den.release()
    assert not den._buckets and not den._texts
    den.release()  # nothing held: a no-op
    assert torch.equal(den(x, t, text, 0, kv), first)
    den(x, t, text, 0, dit.prefill(x[1:, :, :1]))  # a new cache of the same shape: a new graph, no warm-up
    den(x, t, text, 1, None)  # a new shape: warmed up
    assert warmups == [2, 0, 0, 2] and den.captures == 4
    assert den.replays == 2  # the calls captured without warm-up replay; the warmed ones return the warm-up's result


def test_pipeline_releases_graphs_before_decode_unless_kept():
    from lc_runtime.pipeline import Pipeline

    calls = []

    class Den:
        def __call__(self, *a):
            raise AssertionError("not called")

        def release(self):
            calls.append("release")

    lat = torch.zeros(1, 16, 1, 8, 8)
    for keep in (False, True):
        pipe = Pipeline.from_pretrained("tiny")
        pipe.denoiser, pipe.keep_graphs = Den(), keep
        assert pipe.decode(lat, progress=False).shape[0] == 1
    assert calls == ["release"]


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphDenoiser(tiny_dit(), use_cuda_graph=True)
    assert GraphDenoiser(tiny_dit()).use_cuda_graph is False  # auto: off on CPU


# ---------------------------------------------------------------------------------------------- pipeline
@torch.no_grad()
def test_pipeline_speed_options_on_cpu():
    from lc_runtime.pipeline import Pipeline

    with pytest.raises(ValueError, match="compile must be"):
        Pipeline.from_pretrained("tiny", compile="inductor")
    with pytest.raises(ValueError, match="CUDA device"):
        Pipeline.from_pretrained("tiny", compile="graph")
    args = dict(task="t2v", prompt="a cat", num_inference_steps=2, num_frames=5, height=64, width=64,
                output_type="latent")  # fmt: skip
    ref = Pipeline.from_pretrained("tiny").generate(**args).latents
    fast = Pipeline.from_pretrained("tiny", kernels="triton", attention="sdpa")
    assert fast.dit.kernels == "triton"
    assert_close(fast.generate(**args).latents, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), what="t2v")


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kernels", ["torch", "triton"])
@torch.no_grad()
def test_cuda_graph_replay_equals_eager(kernels):
    import importlib.util

    if kernels == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    dit = tiny_dit("cuda", torch.bfloat16).use_kernels(kernels)
    den = GraphDenoiser(dit)
    x, t, text = inputs(dit, device="cuda")
    kv = dit.prefill(x[:1, :, :1])
    for nc, cache in ((0, None), (1, None), (0, kv)):
        eager = dit(x, t, text_context=text, num_cond_latents=nc, kv_cache=cache)
        assert torch.equal(den(x, t, text, nc, cache), eager)
        x2, t2, text2 = inputs(dit, seed=5, device="cuda")
        assert torch.equal(den(x2, t2, text2, nc, cache), dit(x2, t2, text_context=text2, num_cond_latents=nc,
                                                                 kv_cache=cache))  # fmt: skip
    assert den.captures == 3 and den.replays == 3  # the first call of each bucket: its warm-up's result
