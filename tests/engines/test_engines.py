"""Compiled engines on the tiny model: onnx and aoti engines built here equal the eager model; manifests refuse
what they were not built for; build-engines fails clearly on bad input. TensorRT tests skip without tensorrt.

Profile: ``32x48x21`` -> DiT latents [2, 16, 6, 4, 6] (6 latent frames of 2x3 tokens); forward graphs for 0 and 1
conditioning latents; prefill of 4 cached latents + cached decode of the 2 others.

The CPU tests build for ``device="cpu"`` explicitly (on a GPU machine the default device is CUDA and bf16).

Tolerances: every engine runs the same fp32 math as the eager model with other kernels and reduction orders
(onnxruntime's MLAS GEMMs and Attention, Inductor's generated C++), over two blocks: the DiT golden tests' fp32
bound, rtol 1e-5 and atol 1e-5·max|ref| (test_dit.py). The VAE and text encoder graphs get the same bound.

Run time on the 2-core CI machine, cold Inductor cache: ~2:45 min (the three aoti DiT graphs are ~90 s of it); the
aoti builds of the VAE and text-encoder graphs (~125 s more) are marked slow.
"""

from __future__ import annotations

import argparse
import json
import shutil

import onnx
import pytest
import torch
from conftest import TINY, assert_close

from lc_runtime.config import LONGCAT_TINY
from lc_runtime.engines import EngineError, EngineMismatchError, build_engines, load_engines
from lc_runtime.engines.cli import add_build_engines_parser
from lc_runtime.engines.manifest import Manifest, checkpoint_hash
from lc_runtime.engines.runtime import EngineShapeError
from lc_runtime.export import ProfileError, dit_graph_specs, resolve_profile
from lc_runtime.export.onnx_export import export_onnx, op_counts
from lc_runtime.models.dit import LongCatDiT, init_random_, load_dit
from lc_runtime.ops.attention import available_backends
from lc_runtime.weights import CheckpointError

PROFILE = "32x48x21"
DIT_GRAPHS = ("dit_forward_nc0", "dit_forward_nc1", "dit_prefill", "dit_decode")


def tol(ref: torch.Tensor) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5 * float(ref.abs().max())}


@pytest.fixture(scope="module")
def dit():
    return load_dit(TINY / "dit", dtype=torch.float32)


@pytest.fixture(scope="module")
def case(dit):
    """Inputs of one CFG step: text of two prompts (one short: zero-padded slots), latents, conditioning."""
    g = torch.Generator().manual_seed(11)
    mask = torch.zeros(2, 512, dtype=torch.long)
    mask[0, :7], mask[1, :40] = 1, 1
    with torch.no_grad():
        text = dit.prepare_text(torch.randn(2, 1, 512, 24, generator=g), mask)
        cond = torch.randn(1, 16, 4, 4, 6, generator=g)
        return {
            "text": text,
            "latents": torch.randn(2, 16, 6, 4, 6, generator=g),
            "cond": cond,
            "kv": dit.prefill(cond),
        }


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "onnx"
    build_engines(TINY, "onnx", PROFILE, out, components=("dit",), device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def aoti_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "aoti"
    graphs = ("dit_forward_nc1", "dit_prefill", "dit_decode")  # nc0 is the same graph without the cond split
    build_engines(TINY, "aoti", PROFILE, out, components=("dit",), graphs=graphs, device="cpu", progress=False)
    return out


@torch.no_grad()
def check_dit_engine(den, dit, case, graphs) -> None:
    """Every built DiT graph, through the EngineDenoiser, equals the eager DiT."""
    x, text, kv = case["latents"], case["text"], case["kv"]
    dev = x.device
    if "dit_forward_nc0" in graphs:
        t = torch.tensor([700.0, 700.0], device=dev)
        ref = dit(x, t, text_context=text)
        assert_close(den(x, t, text, 0, None), ref, **tol(ref), what="forward nc=0")
    if "dit_forward_nc1" in graphs:
        t = torch.tensor([[0.0] + [450.0] * 5] * 2, device=dev)
        ref = dit(x, t, text_context=text, num_cond_latents=1)
        assert_close(den(x, t, text, 1, None), ref, **tol(ref), what="forward nc=1")
    if "dit_prefill" in graphs:
        got = den.prefill(case["cond"])
        assert_close(got.k, kv.k, **tol(kv.k), what="prefill K")
        assert_close(got.v, kv.v, **tol(kv.v), what="prefill V")
    if "dit_decode" in graphs:
        xn, t = x[:, :, 4:], torch.tensor([300.0, 300.0], device=dev)
        ref = dit(xn, t, text_context=text, kv_cache=kv)
        assert_close(den(xn, t, text, 0, kv), ref, **tol(ref), what="cached decode")


# --------------------------------------------------------------------------------------------- profiles
def test_named_profiles():
    p = resolve_profile("480p-93f")
    assert p.latent_shape() == (2, 16, 24, 60, 104) and p.tokens == 24 * 30 * 52
    assert (p.cache_latents, p.latent_frames - p.cache_latents) == (4, 20)  # vc: 4 cached + 20 noise
    r = resolve_profile("720p-refine")
    assert r.latent_shape() == (1, 16, 48, 88, 160) and r.tokens == 168_960
    assert r.bsa and r.cond_latents == (0, 8)  # t2v and vc refinement (26 conditioning frames -> 8 latents)
    assert not p.bsa and not resolve_profile("720p-refine", bsa=False).bsa
    u = resolve_profile("320x512x33", batch=1)
    assert u.latent_shape() == (1, 16, 9, 40, 64) and u.cache_latents == 4
    specs = {s.name: s for s in dit_graph_specs(p, LONGCAT_TINY, torch.bfloat16)}
    assert list(specs) == list(DIT_GRAPHS)
    assert specs["dit_decode"].inputs[0].shape == (2, 16, 20, 60, 104)
    assert specs["dit_prefill"].outputs[0].shape == (2, 1, 2, 4 * 30 * 52, 32)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("481x832x93", "height 481 must be a positive multiple of 16"),
        ("480x830x93", "width 830 must be a positive multiple of 16"),
        ("480x832x94", "num_frames 94 must be 4k\\+1"),
        ("1080p", "unknown profile '1080p'"),
    ],
)
def test_impossible_profiles(spec, match):
    with pytest.raises(ProfileError, match=match):
        resolve_profile(spec)


@pytest.mark.parametrize(
    "spec, options, match",
    [
        ("720p-refine", {"cond_latents": (0, 1)}, "does not divide: 47 noise latents, 1 conditioning latents"),
        ("480p-93f", {"bsa": True}, "token grid \\(T=24, h=30, w=52\\) into 4x4x4 chunks.*height 30"),
    ],
)
def test_block_sparse_profiles_must_tile(spec, options, match):
    """Block-sparse attention needs every attention call's token grid in whole 4x4x4 chunks (SPEC §5)."""
    profile = resolve_profile(spec, **options)
    with pytest.raises(ProfileError, match=match):
        dit_graph_specs(profile, LONGCAT_TINY, torch.bfloat16)
    with pytest.raises(ProfileError, match="batch must be 1"):
        resolve_profile("480p-93f", batch=3)


# --------------------------------------------------------------------------------------------- onnx
def test_onnx_dit_engine_matches_eager(onnx_dir, dit, case):
    engines = load_engines(onnx_dir, modules={"dit": dit}, model_dir=TINY)
    assert sorted(engines.graphs) == sorted(DIT_GRAPHS)
    check_dit_engine(engines.denoiser(), dit, case, DIT_GRAPHS)


def test_onnx_single_ops(onnx_dir):
    """Attention and RotaryEmbedding (opset 23) as single ops: 2 blocks x (self + cross) attention, 2 blocks x
    (q, k) RoPE; the cached decode's LSE-merged prefix attention is decomposed (ONNX Attention has no LSE)."""
    ops = {g: op_counts(onnx.load(str(onnx_dir / f"{g}.onnx"))) for g in DIT_GRAPHS}
    assert onnx.load(str(onnx_dir / "dit_forward_nc0.onnx")).opset_import[0].version == 23
    assert ops["dit_forward_nc0"]["Attention"] == 4 and ops["dit_forward_nc0"]["RotaryEmbedding"] == 4
    assert ops["dit_forward_nc1"]["Attention"] == 6  # + the conditioning-only self-attention of each block
    # prefill returns only K/V: the last block's queries, attention and everything after are dead code
    assert ops["dit_prefill"]["RotaryEmbedding"] == 3 and ops["dit_prefill"]["Attention"] == 1
    assert ops["dit_decode"]["RotaryEmbedding"] == 4 and ops["dit_decode"]["ReduceLogSumExp"] == 4
    assert all(ops[g]["Neg"] == 0 for g in DIT_GRAPHS)  # no decomposed rotation left


@torch.no_grad()
def test_onnx_decomposed_for_tensorrt_matches_eager(tmp_path, dit, case):
    """The ONNX a TensorRT build parses (Attention, RMSNormalization, RotaryEmbedding decomposed) computes the same;
    weights in external data (what models above 2 GB get) load as well."""
    import onnxruntime as ort

    spec = dit_graph_specs(resolve_profile(PROFILE), dit.config, torch.float32)[0]
    path = tmp_path / "forward.onnx"
    decompose = ("Attention", "RMSNormalization", "RotaryEmbedding")
    ops = export_onnx(spec, spec.module(dit), path, decompose=decompose, external_data=True)
    assert not set(decompose) & set(ops)
    assert (tmp_path / "forward.onnx.data").stat().st_size > path.stat().st_size  # the weights went out
    t = torch.full((2, 6), 650.0)
    inputs = (case["latents"], t, case["text"].k, case["text"].v)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {n: x.numpy() for n, x in zip(spec.input_names, inputs)})
    ref = dit(case["latents"], t, text_context=case["text"])
    assert_close(torch.from_numpy(out), ref, **tol(ref), what="decomposed forward")


@torch.no_grad()
def test_onnx_vae_and_text_encoder_match_eager(tmp_path):
    from lc_runtime.models.text_encoder import TextEncoder
    from lc_runtime.models.vae import load_vae

    out = tmp_path / "vt"
    build_engines(TINY, "onnx", PROFILE, out, components=("vae", "text_encoder"), device="cpu", progress=False)
    vae = load_vae(TINY / "vae", dtype=torch.float32)
    te = TextEncoder.from_pretrained(TINY, dtype=torch.float32)
    engines = load_engines(out, modules={"vae": vae, "text_encoder": te.model}, model_dir=TINY)
    check_vae_text(engines, vae, te)


def check_vae_text(engines, vae, te) -> None:
    ids, mask = te.tokenize(["a red fox runs through the snow"])
    ref = te.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close(engines.graphs["text_encoder"](ids, mask)[0], ref, **tol(ref), what="text encoder")
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    cache, moments = vae.init_encode_cache(1, 32, 48), []
    for i in range(3):  # chunk slices are non-contiguous views: engines must take them as they are
        chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + 4 * (i - 1) : 1 + 4 * i]
        m, *cache = engines.graphs["vae_encode_first" if i == 0 else "vae_encode"](chunk, *cache)
        moments.append(m)
    mean, _ = vae.encode(video)
    assert_close(torch.cat(moments, 2)[:, :16], mean, **tol(mean), what="VAE encode")
    z = torch.randn(1, 16, 3, 4, 6, generator=g)
    cache, frames = vae.init_decode_cache(1, 4, 6), []
    for i in range(3):
        f, *cache = engines.graphs["vae_decode_first" if i == 0 else "vae_decode"](z[:, :, i : i + 1], *cache)
        frames.append(f)
    ref = vae.decode(z)
    assert_close(torch.cat(frames, 2), ref, **tol(ref), what="VAE decode")


def test_onnx_engine_refuses_other_weights_and_loras(onnx_dir, case):
    other = init_random_(LongCatDiT(LONGCAT_TINY), seed=5).eval()
    with pytest.raises(EngineMismatchError, match="weights differ from the ones baked into the engine"):
        load_engines(onnx_dir, modules={"dit": other})
    m = load_dit(TINY / "dit", dtype=torch.float32)
    den = load_engines(onnx_dir, modules={"dit": m}).denoiser()
    m.load_lora(TINY / "lora" / "cfg_step_lora.safetensors", "cfg_step")
    m.set_loras({"cfg_step": 1.0})
    with pytest.raises(EngineError, match="hold the base weights"):
        den(case["latents"], torch.tensor([1.0, 1.0]), case["text"], 0, None)


@torch.no_grad()
def test_denoise_loop_through_engines_equals_eager(onnx_dir):
    """`lc-runtime run --engines`: the one denoise loop, every step through the engine, gives the eager latents."""
    from lc_runtime import tasks
    from lc_runtime.engines.runtime import engines_for_pipeline
    from lc_runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(TINY, device="cpu", dtype=torch.float32, compile="none")
    engines = engines_for_pipeline(pipe, onnx_dir, model_dir=TINY)
    req = pipe.request(task="t2v", prompt="a red fox", height=32, width=48, num_frames=21, num_inference_steps=4)
    cond = tasks.prepare_t2v(pipe, req, pipe.generator(0))
    ref = tasks.denoise(tasks.dit_denoiser(pipe.dit), cond, pipe.dtype)
    got = tasks.denoise(engines.denoiser(), cond, pipe.dtype)
    assert_close(got, ref, **tol(ref), what="4 denoising steps")


# --------------------------------------------------------------------------------------------- aoti
def test_aoti_dit_engine_matches_eager(aoti_dir, dit, case):
    engines = load_engines(aoti_dir, modules={"dit": dit}, model_dir=TINY, use_cuda_graph=False)
    check_dit_engine(engines.denoiser(), dit, case, ("dit_forward_nc1", "dit_prefill", "dit_decode"))


def test_aoti_load_skips_the_device_probe(aoti_dir, dit, case, monkeypatch):
    """Loading never runs torch's device-information probe, which compiles C++ test programs at every process
    start (45 s of a 55 s cold start on the H200): the engine still loads and matches eager without it."""
    import torch._inductor.codecache as codecache

    def probe(*_):
        raise AssertionError("get_device_information was called")

    monkeypatch.setattr(codecache, "get_device_information", probe)
    engines = load_engines(aoti_dir, modules={"dit": dit}, model_dir=TINY, use_cuda_graph=False)
    check_dit_engine(engines.denoiser(), dit, case, ("dit_forward_nc1",))


@torch.no_grad()
def test_aoti_engine_runs_on_the_models_own_weights(aoti_dir, case):
    """Weights are not baked in: the same package bound to another checkpoint of the same layout computes that
    model, and a LoRA merged in place after binding is what the engine runs; unmerged adapters are refused."""
    x, text = case["latents"], case["text"]
    t = torch.tensor([[0.0] + [450.0] * 5] * 2)
    other = init_random_(LongCatDiT(LONGCAT_TINY), seed=5).eval()
    den = load_engines(aoti_dir, modules={"dit": other}).denoiser()
    ref = other(x, t, text_context=text, num_cond_latents=1)
    assert_close(den(x, t, text, 1, None), ref, **tol(ref), what="other weights")
    m = load_dit(TINY / "dit", dtype=torch.float32)
    den = load_engines(aoti_dir, modules={"dit": m}).denoiser()
    m.load_lora(TINY / "lora" / "refinement_lora.safetensors", "refinement")
    m.set_loras({"refinement": 0.8}, merged=True)
    ref = m(x, t, text_context=text, num_cond_latents=1)
    assert_close(den(x, t, text, 1, None), ref, **tol(ref), what="merged LoRA")
    m.set_loras({"refinement": 0.8}, merged=False)
    with pytest.raises(EngineError, match="merged LoRAs only"):
        den(x, t, text, 1, None)


@torch.no_grad()
def test_aoti_engine_with_the_fused_kernel_table_matches_eager(tmp_path, dit, case):
    """kernels="triton" (the default for aoti on CUDA): the graph calls the runtime's fused ops and the one [w1; w3]
    FFN GEMM, as the fast path does (here the ops' CPU references, through AOTInductor's proxy executor), binds the
    fused weight the loader derives from w1 and w3, and equals the eager DiT."""
    import zipfile

    from lc_runtime.engines.build import build_engines_from_modules

    out = tmp_path / "kern"
    build_engines_from_modules(
        {"dit": dit}, "aoti", PROFILE, out, graphs=("dit_forward_nc1",), device="cpu", kernels="triton", progress=False
    )
    assert Manifest.load(out).kernels == "triton"
    assert dit.kernels == "torch"  # the caller's module comes back with its own table
    with zipfile.ZipFile(out / "dit_forward_nc1.pt2") as z:
        text = " ".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith(".json"))
    ops = ("modulate", "gated_add", "qk_norm_rope", "layer_norm", "linear_swiglu")  # the [w1; w3] GEMM + swiglu
    assert all(f"lc_runtime::fused_{op}" in text for op in ops)
    den = load_engines(out, modules={"dit": dit}, use_cuda_graph=False).denoiser()
    ffn = dit.blocks[0].ffn  # the engine binds the fused weight, whose halves are w1 and w3 (no copy)
    assert ffn.w13.data_ptr() == ffn.w1.weight.data_ptr() and "blocks.0.ffn.w13" not in dit.state_dict()
    x, t = case["latents"], torch.tensor([[0.0] + [450.0] * 5] * 2)
    ref = dit(x, t, text_context=case["text"], num_cond_latents=1)
    assert_close(den(x, t, case["text"], 1, None), ref, **tol(ref), what="forward nc=1, fused kernel table")
    with pytest.raises(EngineError, match="onnx engines trace the reference kernels only"):
        build_engines(TINY, "onnx", PROFILE, tmp_path / "o", components=("dit",), kernels="triton", progress=False)


BSA_PROFILE = "128x128x29"  # token grid (8, 8, 8): 2x2x2 blocks of 4x4x4; 8 latents, 4 of them conditioning


@pytest.fixture(scope="module")
def bsa_dir(tmp_path_factory):
    """An aoti engine with block-sparse attention in its forward graph (batch 1, as refinement runs)."""
    out = tmp_path_factory.mktemp("engines") / "aoti_bsa"
    build_engines(
        TINY, "aoti", BSA_PROFILE, out, components=("dit",), graphs=("dit_forward_nc4",), batch=1, bsa=True,
        cond_latents=(0, 4), device="cpu", progress=False,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def bsa_case(dit):
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        text = dit.prepare_text(torch.randn(1, 1, 512, 24, generator=g), torch.ones(1, 512, dtype=torch.long))
    t = torch.tensor([[0.0] * 4 + [450.0] * 4])
    return {"text": text, "latents": torch.randn(1, 16, 8, 16, 16, generator=g), "t": t}


@torch.no_grad()
def test_aoti_engine_with_block_sparse_attention_matches_eager(bsa_dir, dit, bsa_case):
    """The BSA op (selection + kernel) runs inside the aoti package and gives the eager DiT's BSA output, which
    differs from dense attention; a request without BSA is refused by this engine, and the manifest says BSA."""
    x, t, text = bsa_case["latents"], bsa_case["t"], bsa_case["text"]
    assert Manifest.load(bsa_dir).profile["bsa"] is True
    den = load_engines(bsa_dir, modules={"dit": dit}, use_cuda_graph=False).denoiser()
    dense = dit(x, t, text_context=text, num_cond_latents=4)
    with pytest.raises(EngineMismatchError, match="built with block-sparse attention but the request runs without"):
        den(x, t, text, 4, None)
    dit.enable_bsa()
    try:
        ref = dit(x, t, text_context=text, num_cond_latents=4)
        got = den(x, t, text, 4, None)
    finally:
        dit.disable_bsa()
    assert (ref - dense).abs().max() > 0.1 * ref.abs().max()  # BSA at this grid is not dense attention
    assert_close(got, ref, **tol(ref), what="forward nc=4 with block-sparse attention")


@torch.no_grad()
def test_several_engine_folders_route_each_step(aoti_dir, bsa_dir, dit, case, bsa_case):
    """``run --engines A --engines B``: each step runs on the folder that fits it (shape, graph, BSA); a step that
    none fits names every folder's reason."""
    from lc_runtime.engines.runtime import EngineSetDenoiser

    dens = [load_engines(d, modules={"dit": dit}, use_cuda_graph=False).denoiser() for d in (aoti_dir, bsa_dir)]
    both = EngineSetDenoiser(dens)
    x, t, text = case["latents"], torch.tensor([[0.0] + [450.0] * 5] * 2), case["text"]
    ref = dit(x, t, text_context=text, num_cond_latents=1)
    assert_close(both(x, t, text, 1, None), ref, **tol(ref), what="stage-1 step on the first folder")
    xb, tb, textb = bsa_case["latents"], bsa_case["t"], bsa_case["text"]
    dit.enable_bsa()
    try:
        ref = dit(xb, tb, text_context=textb, num_cond_latents=4)
        assert_close(both(xb, tb, textb, 4, None), ref, **tol(ref), what="refinement step on the BSA folder")
    finally:
        dit.disable_bsa()
    reasons = (
        r"aoti: no dit_forward_nc4 graph.*aoti_bsa: built with block-sparse attention but the request runs without"
    )
    with pytest.raises(EngineShapeError, match=rf"no engine folder fits this step \(.*{reasons}"):
        both(xb, tb, textb, 4, None)


def test_block_sparse_attention_is_aoti_only(tmp_path):
    with pytest.raises(EngineError, match="block-sparse attention, which only aoti engines hold"):
        build_engines(TINY, "onnx", "720p-refine", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_aoti_vae_and_text_encoder_match_eager(tmp_path):
    from lc_runtime.models.text_encoder import TextEncoder
    from lc_runtime.models.vae import load_vae

    out = tmp_path / "vt"
    build_engines(TINY, "aoti", PROFILE, out, components=("vae", "text_encoder"), device="cpu", progress=False)
    vae = load_vae(TINY / "vae", dtype=torch.float32)
    te = TextEncoder.from_pretrained(TINY, dtype=torch.float32)
    with torch.no_grad():
        check_vae_text(load_engines(out, modules={"vae": vae, "text_encoder": te.model}), vae, te)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_aoti_cuda_graph_replay_equals_direct_call(tmp_path):
    out = tmp_path / "gpu"
    build_engines(TINY, "aoti", PROFILE, out, components=("dit",), graphs=("dit_forward_nc0",), progress=False)
    m = load_dit(TINY / "dit", device="cuda", dtype=torch.bfloat16)
    direct = load_engines(out, modules={"dit": m}, use_cuda_graph=False).denoiser()
    graphed = load_engines(out, modules={"dit": m}, use_cuda_graph=True).denoiser()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        text = m.prepare_text(torch.randn(2, 1, 512, 24, generator=g).cuda(), torch.ones(2, 512, device="cuda"))
        for step in range(3):
            x = torch.randn(2, 16, 6, 4, 6, generator=g).cuda().bfloat16()
            t = torch.tensor([900.0 - 100 * step] * 2, device="cuda")
            assert torch.equal(graphed(x, t, text, 0, None), direct(x, t, text, 0, None))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_aoti_block_sparse_engine_on_cuda(tmp_path):
    """The BSA op (Triton kernel on CUDA) inside an aoti package: captured in a CUDA graph it replays bitwise as
    the direct call, and its error against the fp32 eager DiT (same BSA) is within 2x the eager bf16 DiT's
    (STYLE #9)."""
    out = tmp_path / "gpu_bsa"
    build_engines(
        TINY, "aoti", BSA_PROFILE, out, components=("dit",), graphs=("dit_forward_nc4",), batch=1, bsa=True,
        cond_latents=(0, 4), progress=False,
    )  # fmt: skip
    m = load_dit(TINY / "dit", device="cuda", dtype=torch.bfloat16)
    m32 = load_dit(TINY / "dit", device="cuda", dtype=torch.float32)
    m.enable_bsa()
    m32.enable_bsa()
    direct = load_engines(out, modules={"dit": m}, use_cuda_graph=False).denoiser()
    graphed = load_engines(out, modules={"dit": m}, use_cuda_graph=True).denoiser()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y, mask = torch.randn(1, 1, 512, 24, generator=g).cuda(), torch.ones(1, 512, device="cuda")
        text, text32 = m.prepare_text(y.bfloat16(), mask), m32.prepare_text(y, mask)
        for step in range(2):
            x = torch.randn(1, 16, 8, 16, 16, generator=g).cuda()
            t = torch.tensor([[0.0] * 4 + [800.0 - 200 * step] * 4], device="cuda")
            got = graphed(x.bfloat16(), t, text, 4, None)
            assert torch.equal(got, direct(x.bfloat16(), t, text, 4, None))
            truth = m32(x, t, text_context=text32, num_cond_latents=4)
            eager = m(x.bfloat16(), t, text_context=text, num_cond_latents=4).float()
            assert rel_err(got, truth) <= 2 * rel_err(eager, truth) + 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or "fa3" not in available_backends("cuda"), reason="needs FlashAttention-3 (Hopper)"
)
def test_aoti_engine_traces_fa3_into_every_dit_graph_by_default(tmp_path):
    """On Hopper with fa3-fwd, an aoti build's default attention is FA3, as the fast path's: every DiT graph (forward
    with and without conditioning, prefill returning K/V, cached decode) builds with it, records it, and, replayed
    as CUDA graphs, is within 2x the eager bf16 DiT's error (FA3 too) of the fp32 DiT (STYLE #9). Head dim 128."""
    from lc_runtime.config import DiTConfig
    from lc_runtime.engines.build import build_engines_from_modules
    from lc_runtime.ops.attention import get_attention_backend, select_attention_backend, set_attention_backend

    cfg = DiTConfig(hidden_size=256, depth=2, num_heads=2, caption_channels=24, adaln_tembed_dim=32)
    m = init_random_(LongCatDiT(cfg), seed=7, device="cuda", dtype=torch.bfloat16).eval()
    m32 = init_random_(LongCatDiT(cfg), seed=7, device="cuda", dtype=torch.float32).eval()
    out = tmp_path / "fa3"
    summary = build_engines_from_modules({"dit": m}, "aoti", PROFILE, out, graphs=DIT_GRAPHS, progress=False)
    assert Manifest.load(out).attention == "fa3" and len(summary.graphs) == len(DIT_GRAPHS)
    den = load_engines(out, modules={"dit": m}).denoiser()
    g = torch.Generator().manual_seed(3)
    y, mask = torch.randn(2, 1, 512, 24, generator=g).cuda(), torch.ones(2, 512, device="cuda")
    x, cond = torch.randn(2, 16, 6, 4, 6, generator=g).cuda(), torch.randn(1, 16, 4, 4, 6, generator=g).cuda()
    previous = get_attention_backend()
    try:
        select_attention_backend("fa3", "cuda")
        with torch.no_grad():
            text, text32 = m.prepare_text(y.bfloat16(), mask), m32.prepare_text(y, mask)
            kv, kv32 = den.prefill(cond.bfloat16()), m32.prefill(cond)
            kv_eager = m.prefill(cond.bfloat16())
            for what, got, eager, truth in [
                ("prefill K", kv.k, kv_eager.k, kv32.k),
                ("prefill V", kv.v, kv_eager.v, kv32.v),
            ]:
                assert rel_err(got, truth) <= 2 * rel_err(eager, truth) + 1e-6, what
            t0, t1 = torch.tensor([700.0, 700.0], device="cuda"), torch.tensor([[0.0] + [450.0] * 5] * 2).cuda()
            t_dec = torch.tensor([300.0, 300.0], device="cuda")
            for what, xi, t, nc, cached in [
                ("forward nc=0", x, t0, 0, False),
                ("forward nc=1", x, t1, 1, False),
                ("cached decode", x[:, :, 4:], t_dec, 0, True),
            ]:
                got = den(xi.bfloat16(), t, text, nc, kv if cached else None)
                assert torch.equal(got, den(xi.bfloat16(), t, text, nc, kv if cached else None)), what
                eager = m(
                    xi.bfloat16(), t, text_context=text, num_cond_latents=nc, kv_cache=kv_eager if cached else None
                )
                truth = m32(xi, t, text_context=text32, num_cond_latents=nc, kv_cache=kv32 if cached else None)
                assert rel_err(got, truth) <= 2 * rel_err(eager, truth) + 1e-6, what
    finally:
        set_attention_backend(previous)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm())


# --------------------------------------------------------------------------------------------- manifests
def copy_engine(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"dtype": "bfloat16"}, "built for bfloat16, the model runs in float32"),
        ({"format": 0}, "manifest format 0"),
        ({"backend": "tensorrt", "versions": {"tensorrt": "10.14.1"}}, "built with tensorrt 10.14.1"),
        ({"arch": "cpu-SVE", "backend": "aoti"}, "built for cpu-SVE, this machine is cpu-"),
        ({"backend": "aoti", "versions": {"torch": "2.11.0+cu130"}}, "built with torch 2.11.0\\+cu130"),
    ],
)
def test_mismatched_manifest_is_refused_with_rebuild_command(onnx_dir, tmp_path, dit, changes, reason):
    folder = copy_engine(onnx_dir, tmp_path)
    edit_manifest(folder, **changes)
    with pytest.raises(EngineMismatchError, match=reason) as err:
        load_engines(folder, modules={"dit": dit})
    msg = str(err.value)
    assert "rebuild it with" in msg and f"lc-runtime build-engines --model-dir {TINY}" in msg
    assert f"--profile {PROFILE}" in msg


def test_stale_engine_is_refused(onnx_dir, tmp_path, dit):
    folder = copy_engine(onnx_dir, tmp_path)
    components = json.loads((folder / "manifest.json").read_text())["components"]
    components["dit"]["layout"] = "0" * 64  # built from another architecture
    edit_manifest(folder, components=components)
    with pytest.raises(EngineMismatchError, match="architecture/tensor layout differs"):
        load_engines(folder, modules={"dit": dit})
    (folder / "dit_decode.onnx").unlink()
    with pytest.raises(EngineMismatchError, match="artefact dit_decode.onnx is missing"):
        load_engines(folder, modules={"dit": dit})
    with pytest.raises(EngineMismatchError, match="no manifest.json.*lc-runtime build-engines"):
        load_engines(tmp_path, modules={"dit": dit})


def test_changed_checkpoint_is_refused(onnx_dir, tmp_path, dit):
    """A checkpoint whose tensor bytes changed (same names, shapes, sizes) is not the one the engine baked."""
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    shard = sorted((model / "dit").glob("*.safetensors"))[0]
    before = checkpoint_hash(model / "dit")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # last byte of the last tensor: inside a sampled edge
    shard.write_bytes(bytes(data))
    assert checkpoint_hash(model / "dit") != before
    with pytest.raises(EngineMismatchError, match="differs from the one the engine was built from"):
        load_engines(onnx_dir, modules={"dit": dit}, model_dir=model)


def test_wrong_shapes_name_the_profile(onnx_dir, dit, case):
    den = load_engines(onnx_dir, modules={"dit": dit}).denoiser()
    x = torch.zeros(1, 16, 6, 4, 6)  # batch 1: no CFG
    with pytest.raises(EngineShapeError, match=rf"profile {PROFILE}.*takes latents \[2, 16, 6, 4, 6\].*--batch 1"):
        den(x, torch.tensor([1.0]), case["text"], 0, None)
    with pytest.raises(EngineShapeError, match="no dit_forward_nc2 graph"):
        den(case["latents"], torch.tensor([1.0, 1.0]), case["text"], 2, None)


def test_manifest_records_what_it_was_built_from(onnx_dir):
    m = Manifest.load(onnx_dir)
    assert (m.backend, m.dtype, m.device, m.profile["name"], m.attention) == ("onnx", "float32", "cpu", PROFILE, "sdpa")
    assert m.arch.startswith("cpu-") and m.versions["torch"] == torch.__version__ and m.versions["onnx"]
    assert set(m.components) == {"dit"} and all(
        len(m.components["dit"][k]) == 64 for k in ("layout", "weights", "checkpoint")
    )
    assert m.graphs["dit_decode"]["inputs"][-1] == {"name": "cache_v", "shape": [2, 1, 2, 24, 32], "dtype": "float32"}


# --------------------------------------------------------------------------------------------- build errors / CLI
def test_build_on_bad_model_folder_fails_clearly(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="model folder not found"):
        build_engines(tmp_path / "nowhere", "onnx", PROFILE, out, progress=False)
    bad = tmp_path / "model"
    shutil.copytree(TINY, bad)
    shutil.rmtree(bad / "dit")
    with pytest.raises(CheckpointError, match="not a LongCat-Video checkpoint folder: missing dit/config.json"):
        build_engines(bad, "onnx", PROFILE, out, progress=False)
    assert not out.exists()


def test_build_impossible_profile_fails_before_loading(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ProfileError, match="height 481 must be a positive multiple of 16"):
        build_engines(TINY, "aoti", "481x832x93", out, progress=False)
    with pytest.raises(EngineError, match="unknown backend 'tvm'"):
        build_engines(TINY, "tvm", PROFILE, out, progress=False)
    with pytest.raises(EngineError, match="no graph\\(s\\) \\['dit_forward_nc7'\\]"):
        build_engines(TINY, "onnx", PROFILE, out, components=("dit",), graphs=("dit_forward_nc7",), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.building*"))


def cli(argv):
    parser = argparse.ArgumentParser(prog="lc-runtime")
    add_build_engines_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_build_engines_cli(tmp_path, capsys):
    out = tmp_path / "eng"
    argv = ["build-engines", "--model-dir", str(TINY), "--backend", "onnx", "--profile", PROFILE, "--out", str(out)]
    assert cli([*argv, "--graphs", "dit_prefill", "--components", "dit", "--quiet"]) == 0
    assert "dit_prefill" in capsys.readouterr().out and (out / "dit_prefill.onnx").is_file()
    with pytest.raises(EngineError, match="exists and is not empty; pass --overwrite"):
        cli([*argv, "--graphs", "dit_prefill"])
    with pytest.raises(ProfileError, match="num_frames 94"):
        cli([*argv[:-4], "--profile", "480x832x94", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        cli([*argv[:3], "--backend", "tvm", "--profile", PROFILE, "--out", str(out)])
    refine = [*argv[:5], "--profile", "720p-refine", "--out", str(tmp_path / "r")]
    with pytest.raises(EngineError, match="only aoti engines hold"):
        cli(refine)
    with pytest.raises(ProfileError, match="1 conditioning latents"):
        cli([*refine[:3], "--backend", "aoti", *refine[5:], "--cond-latents", "0,1"])
    with pytest.raises(SystemExit):
        cli([*refine, "--cond-latents", "0,x"])


# --------------------------------------------------------------------------------------------- tensorrt
def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed")
def test_tensorrt_missing_fails_clearly(tmp_path):
    with pytest.raises(EngineError, match="needs NVIDIA TensorRT 10 \\(import tensorrt failed"):
        build_engines(TINY, "tensorrt", PROFILE, tmp_path / "trt", progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt() or not torch.cuda.is_available(), reason="needs TensorRT and a CUDA device")
def test_tensorrt_dit_engine_matches_eager(tmp_path, case):
    out = tmp_path / "trt"
    build_engines(TINY, "tensorrt", PROFILE, out, components=("dit",), dtype=torch.float32, progress=False)
    m = load_dit(TINY / "dit", device="cuda", dtype=torch.float32)
    den = load_engines(out, modules={"dit": m}, model_dir=TINY, use_cuda_graph=False).denoiser()
    moved = {k: v for k, v in case.items() if k in ("latents", "cond")}
    with torch.no_grad():
        text = m.prepare_text(torch.randn(2, 1, 512, 24).cuda(), torch.ones(2, 512, device="cuda"))
        gpu_case = {**{k: v.cuda() for k, v in moved.items()}, "text": text, "kv": m.prefill(moved["cond"].cuda())}
        check_dit_engine(den, m, gpu_case, DIT_GRAPHS)


# --------------------------------------------------------------------------------------------- csrc op
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and the built csrc library")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("channels", [64, 36])  # 36: not a multiple of the vector width -> scalar kernel
def test_csrc_gated_residual_add_is_bitwise_the_reference(dtype, channels):
    from lc_runtime.engines.csrc_ops import gated_residual_add, gated_residual_add_ref, load_csrc_ops

    if not load_csrc_ops():
        pytest.skip("lc_ops.so not built (cmake -S . -B build -DLC_CUDA_ARCHS=... && cmake --build build)")
    g = torch.Generator(device="cuda").manual_seed(0)
    B, F, N = 2, 3, 3 * 40
    x = torch.randn(B, N, channels, device="cuda", generator=g).to(dtype)
    y = torch.randn(B, N, channels, device="cuda", generator=g).to(dtype)
    gate = torch.randn(B, F, 1, channels, device="cuda", generator=g)
    assert torch.equal(gated_residual_add(x, gate, y, F), gated_residual_add_ref(x, gate, y, F))
    torch.library.opcheck(torch.ops.lc_ops.gated_residual_add.default, (x, gate, y, F))


def test_aoti_builds_declare_every_int_array():
    """The C++ wrapper's int_array declaration cache is keyed by the id() of the buffer written to; with
    short-lived buffers (custom-op calls) an id comes back and a declaration goes missing, which failed full-size
    builds at random. Under ``writers_kept_alive`` every buffer gets its declaration."""
    import itertools

    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    from torch._inductor.utils import IndentedBuffer

    from lc_runtime.engines.aoti import writers_kept_alive

    def missing_declarations() -> int:
        w = object.__new__(CppWrapperCpu)
        w.int_array_id, w.declared_int_array_vars, w.codegen_int_array_var_cache = itertools.count(), set(), {}
        missing = 0
        for _ in range(20):
            buf = IndentedBuffer()
            var = w.codegen_int_array_var("{1, 2, 3}", buf.writeline)
            missing += f"{var}[] = {{1, 2, 3}};" not in buf.getvalue()
            del buf
        return missing

    with writers_kept_alive():
        assert missing_declarations() == 0
