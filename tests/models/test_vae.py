"""Wan2.1 VAE: key parity and numerical parity with diffusers' AutoencoderKLWan, golden parity with the original,
explicit-cache chunk graphs (static shapes, streaming, torch.export), strict loading.

Tolerances: fp32 against fp32 references. Against diffusers (same ops in the same order) we expect, and observe,
bitwise equality; the bound is still the fp32 one, rtol 1e-5 and atol 1e-5·max|ref|. The goldens were made by the
original code on another machine and torch version, so they carry ~1e-6 relative float noise (golden README);
the same fp32 bound covers it. bf16 is checked against the fp32 reference relative to diffusers' own bf16 error.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from conftest import TINY, assert_close
from safetensors.torch import load_file, save_file
from torch import nn

from lc_runtime.config import VAEConfig
from lc_runtime.models.vae import (
    WanVAE,
    denormalize_latents,
    load_vae,
    normalize_latents,
    sample_posterior,
)
from lc_runtime.weights import CheckpointError

VAE_DIR = TINY / "vae"


def tol(ref: torch.Tensor) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5 * float(ref.abs().max())}


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return load_vae(VAE_DIR, dtype=torch.float32)


@pytest.fixture(scope="module")
def diffusers_wan():
    return pytest.importorskip("diffusers").AutoencoderKLWan


@pytest.fixture(scope="module")
def ref(diffusers_wan):
    return diffusers_wan.from_pretrained(VAE_DIR, torch_dtype=torch.float32).eval()


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating, in the video's dtype (SPEC §2.9)."""
    return ((video * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 3, 0)


# ---------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize("flavour", ["tiny", "wan2.1"])
def test_state_dict_matches_diffusers(diffusers_wan, flavour):
    """Same key names and shapes as diffusers, for the fixture and for the real Wan2.1 architecture (on meta)."""
    with torch.device("meta"):
        if flavour == "tiny":
            cfg = VAEConfig.from_json(VAE_DIR / "config.json")
            theirs = diffusers_wan.from_config(diffusers_wan.load_config(VAE_DIR))
        else:  # the real checkpoint's architecture = the class defaults (SPEC §9)
            theirs = diffusers_wan()
            cfg = VAEConfig(latents_mean=theirs.config.latents_mean, latents_std=theirs.config.latents_std)
        ours = WanVAE(cfg)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(want) ^ set(got)) == []
    assert got == want


# ---------------------------------------------------------------------------------------------- diffusers parity
@torch.no_grad()
def test_encode_decode_match_diffusers_random(vae, ref):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 13, 32, 48, generator=g) * 2 - 1
    mean, logvar = vae.encode(video)
    post = ref.encode(video).latent_dist
    assert_close(mean, post.mean, **tol(post.mean), what="mean")
    assert_close(logvar, post.logvar, **tol(post.logvar), what="logvar")

    latents = torch.randn(2, 16, 4, 4, 6, generator=g)
    out = vae.decode(latents)
    want = ref.decode(latents).sample
    assert out.shape == (2, 3, 13, 32, 48)
    assert_close(out, want, **tol(want), what="decode")


@torch.no_grad()
def test_encode_decode_match_diffusers_golden_inputs(vae, ref, golden):
    g = golden("vae")
    for name in ("video", "image", "video_11f"):
        mean, logvar = vae.encode(g[name])
        post = ref.encode(g[name]).latent_dist
        assert_close(mean, post.mean, **tol(post.mean), what=f"{name} mean")
        assert_close(logvar, post.logvar, **tol(post.logvar), what=f"{name} logvar")
    for name in ("latents_denormalized", "image_posterior_mean"):
        want = ref.decode(g[name]).sample
        assert_close(vae.decode(g[name]), want, **tol(want), what=f"decode {name}")


@torch.no_grad()
def test_bf16_error_no_worse_than_diffusers(vae, ref, diffusers_wan, golden):
    """bf16 runs like the original on GPU: our error vs the fp32 reference <= 2x diffusers' own bf16 error."""
    g = golden("vae")
    ours = load_vae(VAE_DIR, dtype=torch.bfloat16)
    theirs = diffusers_wan.from_pretrained(VAE_DIR, torch_dtype=torch.bfloat16).eval()
    video, z = g["video"], g["latents_denormalized"]
    cases = {
        "encode": (ours.encode(video)[0], theirs.encode(video.bfloat16()).latent_dist.mean, g["posterior_mean"]),
        "decode": (ours.decode(z), theirs.decode(z.bfloat16()).sample, g["decoded"]),
    }
    for what, (mine, other, exact) in cases.items():
        assert mine.dtype == torch.bfloat16
        err = (mine.float() - exact).abs().max().item()
        budget = (other.float() - exact).abs().max().item()
        assert err <= 2 * budget + 1e-6, f"{what}: bf16 error {err:.3e} vs diffusers' {budget:.3e}"


# ---------------------------------------------------------------------------------------------- goldens
@torch.no_grad()
def test_golden_posterior(vae, golden):
    g = golden("vae")
    mean, logvar = vae.encode(g["video"])
    assert_close(mean, g["posterior_mean"], **tol(g["posterior_mean"]), what="posterior_mean")
    assert_close(logvar, g["posterior_logvar"], **tol(g["posterior_logvar"]), what="posterior_logvar")
    sample = sample_posterior(mean, logvar, torch.Generator("cpu").manual_seed(8))
    assert_close(sample, g["posterior_sample"], **tol(g["posterior_sample"]), what="posterior_sample")

    image_mean, _ = vae.encode(g["image"])
    assert_close(image_mean, g["image_posterior_mean"], **tol(g["image_posterior_mean"]), what="image mean")
    # frames beyond 1 + 4k are ignored: 11 frames encode like the first 9
    mean_11f, _ = vae.encode(g["video_11f"])
    want = g["video_11f_posterior_mean"]
    assert_close(mean_11f, want, **tol(want), what="video_11f_posterior_mean")
    assert torch.equal(mean_11f, vae.encode(g["video_11f"][:, :, :9])[0])


@torch.no_grad()
def test_golden_normalize_and_decode(vae, golden):
    g = golden("vae")
    z_n = vae.normalize_latents(g["posterior_mean"])
    assert_close(z_n, g["latents_normalized"], **tol(g["latents_normalized"]), what="latents_normalized")
    z = vae.denormalize_latents(g["latents_normalized"])
    assert_close(z, g["latents_denormalized"], **tol(g["latents_denormalized"]), what="latents_denormalized")

    decoded = vae.decode(z)
    assert_close(decoded, g["decoded"], **tol(g["decoded"]), what="decoded")
    assert decoded.abs().max() <= 1.0
    diff = (to_uint8(decoded).int() - g["decoded_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"uint8: max {diff.max()}, {(diff > 0).sum()} off"

    image = vae.decode(g["image_posterior_mean"])
    assert_close(image, g["image_decoded"], **tol(g["image_decoded"]), what="image_decoded")


def test_normalize_roundtrip_and_dtype():
    cfg = VAEConfig.from_json(VAE_DIR / "config.json")
    z = torch.randn(1, 16, 2, 3, 5, generator=torch.Generator().manual_seed(1)).bfloat16()
    z_n = normalize_latents(z, cfg.latents_mean, cfg.latents_std)
    assert z_n.dtype == torch.bfloat16
    # stats are cast to the latents' dtype before 1/std, as the original does (SPEC §2.2)
    m = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).bfloat16()
    inv = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).bfloat16()
    assert torch.equal(z_n, (z - m) * inv)
    assert torch.equal(denormalize_latents(z_n, cfg.latents_mean, cfg.latents_std), z_n / inv + m)


def test_sample_posterior_clamps_logvar():
    mean = torch.zeros(1, 16, 1, 2, 2)
    logvar = torch.full_like(mean, 100.0)  # clamped to 20 -> std e^10
    a = sample_posterior(mean, logvar, torch.Generator().manual_seed(3))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, mean + torch.exp(torch.tensor(10.0)) * noise)


# ---------------------------------------------------------------------------------------------- chunk graphs
@torch.no_grad()
def test_decode_stream_concat_equals_decode_and_caches_are_static(vae, golden):
    z = golden("vae")["latents_denormalized"]
    chunks = list(vae.decode_stream(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), vae.decode(z))

    # one graph per (first, shape): every step returns caches of exactly the initial shapes and dtype
    for init, step, x0, x1 in (
        (vae.init_decode_cache(1, 3, 5), vae.decode_frame, z[:, :, :1], z[:, :, 1:2]),
        (
            vae.init_encode_cache(1, 24, 40),
            vae.encode_chunk,
            torch.zeros(1, 3, 1, 24, 40),
            torch.zeros(1, 3, 4, 24, 40),
        ),
    ):
        _, c1 = step(x0, init, first=True)
        _, c2 = step(x1, c1, first=False)
        for c in (c1, c2):
            assert [(t.shape, t.dtype) for t in c] == [(t.shape, t.dtype) for t in init]


def test_chunk_frame_counts_are_checked(vae):
    with pytest.raises(ValueError, match="takes 4 frame"):
        vae.encode_chunk(torch.zeros(1, 3, 2, 24, 40), vae.init_encode_cache(1, 24, 40), first=False)
    with pytest.raises(ValueError, match="one latent frame"):
        vae.decode_frame(torch.zeros(1, 16, 2, 3, 5), vae.init_decode_cache(1, 3, 5), first=False)


class _DecodeStep(nn.Module):
    def __init__(self, vae: WanVAE):
        super().__init__()
        self.vae = vae

    def forward(self, z, *cache):
        return self.vae.decode_frame(z, cache, first=False)


class _EncodeStep(nn.Module):
    def __init__(self, vae: WanVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x, *cache):
        return self.vae.encode_chunk(x, cache, first=False)


@torch.no_grad()
@pytest.mark.parametrize("which", ["decode_frame", "encode_chunk"])
def test_torch_export_chunk_graph(vae, which):
    g = torch.Generator().manual_seed(2)
    if which == "decode_frame":
        module, x = _DecodeStep(vae), torch.randn(1, 16, 1, 3, 5, generator=g)
        cache = vae.init_decode_cache(1, 3, 5)
    else:
        module, x = _EncodeStep(vae), torch.rand(1, 3, 4, 24, 40, generator=g) * 2 - 1
        cache = vae.init_encode_cache(1, 24, 40)
    cache = tuple(torch.randn(c.shape, generator=g) for c in cache)  # a mid-video cache
    ep = torch.export.export(module, (x, *cache))
    out, new_cache = ep.module()(x, *cache)
    want, want_cache = module(x, *cache)
    assert_close(out, want, **tol(want), what=which)
    assert len(new_cache) == len(cache)
    for a, b in zip(new_cache, want_cache):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- loading
def _corrupt_copy(tmp_path, edit) -> str:
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(VAE_DIR / "config.json", folder / "config.json")
    sd = load_file(str(VAE_DIR / "diffusion_pytorch_model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_load_missing_key_names_it(tmp_path):
    key = "decoder.up_blocks.0.upsamplers.0.time_conv.weight"
    folder = _corrupt_copy(tmp_path, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_vae(folder)


def test_load_wrong_shape_names_it(tmp_path):
    key = "encoder.mid_block.attentions.0.to_qkv.weight"
    folder = _corrupt_copy(tmp_path, lambda sd: sd.update({key: sd[key][:-1].clone()}))
    with pytest.raises(CheckpointError, match=rf"shape mismatch for '{key}'"):
        load_vae(folder)


def test_unsupported_config_is_refused():
    cfg = VAEConfig.from_json(VAE_DIR / "config.json")
    with pytest.raises(ValueError, match=r"attn_scales must be empty.*\[0\.5\]"):
        WanVAE(dataclasses.replace(cfg, attn_scales=(0.5,)))


def test_load_dtype_and_no_grad():
    model = load_vae(VAE_DIR, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training
    assert all(not p.requires_grad and p.device.type == "cpu" for p in model.parameters())
