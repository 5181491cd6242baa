"""One declarative spec per exported graph (STYLE #6): names, static shapes, dtypes, sample inputs, module.

A :class:`GraphSpec` says everything a backend needs to build and bind one graph: its input and output tensors
(name, shape, dtype, in order), how to make sample inputs for tracing, and which wrapper module
(:mod:`lc_runtime.export.modules`) exposes it as ``forward``. Shapes are static per :class:`ShapeProfile`; the
TensorRT optimization profile of an input is therefore (min = opt = max = its shape).

Graphs of one profile (``graph_specs``):
    text_encoder                      input_ids, attention_mask [1, 512] int64 -> hidden [1, 512, d]
    vae_encode_first / vae_encode     video [1, 3, 1|4, H, W], cache_i -> moments [1, 32, 1, h, w], cache_out_i
    vae_decode_first / vae_decode     z [1, 16, 1, h, w], cache_i -> frames [1, 3, 1|4, H, W], cache_out_i
    dit_forward_nc{n}                 latents [B, 16, T, h, w], timestep [B, T] fp32, text_k, text_v
                                      [depth, B, heads, 512, head_dim] (+ text_mask [B, 512] bool when the
                                      checkpoint masks pad tokens) -> velocity [B, 16, T, h, w] fp32
    dit_prefill                       cond_latents [1, 16, nc, h, w] -> cache_k, cache_v [depth, 1, heads, Nc, D]
    dit_decode                        latents [B, 16, T-nc, h, w], timestep, text_k, text_v (+ text_mask),
                                      cache_k, cache_v -> velocity [B, 16, T-nc, h, w] fp32
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import DiTConfig, VAEConfig
from . import modules
from .profiles import PATCH, TEXT_LENGTH, VAE_SPATIAL, VAE_TEMPORAL, ProfileError, ShapeProfile

COMPONENTS = ("text_encoder", "vae", "dit")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``sample`` says how to draw a tracing input: normal, timestep (uniform in
    [0, 1000)), token_ids (integers in [0, high)), mask (int64 ones then zeros), bool_mask, zeros."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    sample: str = "normal"
    high: int = 0

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}

    def make(self, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """A sample tensor, drawn on ``device`` (``generator`` lives there too: full-size text K/V are GBs)."""
        kw = {"device": device, "generator": generator}
        if self.sample == "timestep":
            t = torch.rand(self.shape, **kw) * 1000.0
        elif self.sample == "token_ids":
            t = torch.randint(0, self.high, self.shape, **kw)
        elif self.sample in ("mask", "bool_mask"):
            t = torch.zeros(self.shape, dtype=torch.long, device=device)
            t[..., : max(1, self.shape[-1] // 8)] = 1
        elif self.sample == "zeros":
            t = torch.zeros(self.shape, device=device)
        else:
            t = torch.randn(self.shape, **kw)
        return t.to(dtype=self.dtype)


@dataclass(frozen=True, kw_only=True)
class GraphSpec:
    """An exported graph: ``name`` (artefact stem and manifest key), the ``component`` it comes from, and its
    flat, ordered inputs and outputs."""

    name: str
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def module(self, model: nn.Module) -> nn.Module:
        """The wrapper whose ``forward(*inputs) -> outputs`` is this graph, around the loaded component."""
        raise NotImplementedError

    def sample_inputs(self, device: torch.device | str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
        device = torch.device(device)
        g = torch.Generator(device=device).manual_seed(seed)
        return tuple(t.make(device, g) for t in self.inputs)

    def trt_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimization profile: (min, opt, max) per input; static shapes, so all three are equal."""
        return {t.name: (t.shape, t.shape, t.shape) for t in self.inputs}

    def describe(self) -> dict:
        return {
            "component": self.component,
            "inputs": [t.describe() for t in self.inputs],
            "outputs": [t.describe() for t in self.outputs],
        }


# ------------------------------------------------------------------------------------------------ DiT
@dataclass(frozen=True, kw_only=True)
class DiTForwardSpec(GraphSpec):
    num_cond_latents: int
    masked: bool

    def module(self, model: nn.Module) -> nn.Module:
        return modules.DiTForward(model, self.num_cond_latents, self.masked)


@dataclass(frozen=True, kw_only=True)
class DiTPrefillSpec(GraphSpec):
    def module(self, model: nn.Module) -> nn.Module:
        return modules.DiTPrefill(model)


@dataclass(frozen=True, kw_only=True)
class DiTDecodeSpec(GraphSpec):
    cache_latents: int
    masked: bool

    def module(self, model: nn.Module) -> nn.Module:
        return modules.DiTDecode(model, self.masked)


def _text_inputs(cfg: DiTConfig, batch: int, dtype: torch.dtype) -> list[TensorSpec]:
    kv = (cfg.depth, batch, cfg.num_heads, TEXT_LENGTH, cfg.head_dim)
    out = [TensorSpec("text_k", kv, dtype), TensorSpec("text_v", kv, dtype)]
    if not cfg.text_tokens_zero_pad:  # pad tokens are masked out of cross-attention instead of zeroed
        out.append(TensorSpec("text_mask", (batch, TEXT_LENGTH), torch.bool, "bool_mask"))
    return out


def check_bsa_grid(profile: ShapeProfile, cfg: DiTConfig) -> None:
    """ProfileError unless every block-sparse attention call of the profile's forward graphs tiles into the
    config's 3-D chunks: the full token grid (T, h, w) and, for a conditioned graph, its conditioning part (the
    original runs BSA on both halves of a conditioned call, SPEC §5)."""
    ct, ch, cw = (int(c) for c in cfg.bsa_params.chunk_3d_shape_q)
    T, h, w = profile.latent_frames, profile.latent_height // PATCH, profile.latent_width // PATCH
    if T == 1:  # one latent frame: the DiT keeps dense attention
        return
    bad = [f"{name} {n}" for name, n, c in (("height", h, ch), ("width", w, cw)) if n % c]
    bad += [f"{T - nc} noise latents" for nc in profile.cond_latents if (T - nc) % ct]
    bad += [f"{nc} conditioning latents" for nc in profile.cond_latents if nc % ct]
    if bad:
        raise ProfileError(
            f"profile {profile.name!r}: block-sparse attention tiles the token grid (T={T}, h={h}, w={w}) into "
            f"{ct}x{ch}x{cw} chunks, which does not divide: {', '.join(bad)}; use a size whose latent frames are "
            f"a multiple of {ct} and whose token height/width are multiples of {ch}/{cw} (the refinement pads to "
            f"these), --cond-latents with multiples of {ct} (e.g. 0,8), or build without --bsa"
        )


def dit_graph_specs(profile: ShapeProfile, cfg: DiTConfig, dtype: torch.dtype) -> list[GraphSpec]:
    """Forward graphs for each conditioning count of the profile, plus prefill + cached decode if it caches."""
    B, T = profile.batch, profile.latent_frames
    if profile.bsa:
        check_bsa_grid(profile, cfg)
    masked = not cfg.text_tokens_zero_pad
    text = _text_inputs(cfg, B, dtype)
    specs: list[GraphSpec] = []
    for nc in profile.cond_latents:
        specs.append(
            DiTForwardSpec(
                name=f"dit_forward_nc{nc}",
                component="dit",
                inputs=(
                    TensorSpec("latents", profile.latent_shape(), dtype),
                    TensorSpec("timestep", (B, T), torch.float32, "timestep"),
                    *text,
                ),
                outputs=(TensorSpec("velocity", profile.latent_shape(), torch.float32),),
                num_cond_latents=nc,
                masked=masked,
            )
        )
    if profile.cache_latents is None:
        return specs
    nc = profile.cache_latents
    cache = (cfg.depth, 1, cfg.num_heads, nc * profile.tokens_per_frame, cfg.head_dim)
    specs.append(
        DiTPrefillSpec(
            name="dit_prefill",
            component="dit",
            inputs=(TensorSpec("cond_latents", profile.latent_shape(nc, batch=1), dtype),),
            outputs=(TensorSpec("cache_k", cache, dtype), TensorSpec("cache_v", cache, dtype)),
        )
    )
    noise = profile.latent_shape(T - nc)
    specs.append(
        DiTDecodeSpec(
            name="dit_decode",
            component="dit",
            inputs=(
                TensorSpec("latents", noise, dtype),
                TensorSpec("timestep", (B, T - nc), torch.float32, "timestep"),
                *text,
                TensorSpec("cache_k", cache, dtype),
                TensorSpec("cache_v", cache, dtype),
            ),
            outputs=(TensorSpec("velocity", noise, torch.float32),),
            cache_latents=nc,
            masked=masked,
        )
    )
    return specs


# ------------------------------------------------------------------------------------------------ VAE
@dataclass(frozen=True, kw_only=True)
class VAEEncodeSpec(GraphSpec):
    first: bool

    def module(self, model: nn.Module) -> nn.Module:
        return modules.VAEEncodeChunk(model, self.first)


@dataclass(frozen=True, kw_only=True)
class VAEDecodeSpec(GraphSpec):
    first: bool

    def module(self, model: nn.Module) -> nn.Module:
        return modules.VAEDecodeFrame(model, self.first)


def _caches(prefix: str, shapes, dtype) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}_{i}", (1, *s), dtype, "zeros") for i, s in enumerate(shapes))


def vae_graph_specs(profile: ShapeProfile, cfg: VAEConfig, dtype: torch.dtype) -> list[GraphSpec]:
    """Encode (first chunk of 1 frame, then chunks of 4) and decode (first latent frame, then the others), batch 1,
    each with its explicit causal cache in and out."""
    from ..models.vae import WanVAE

    with torch.device("meta"):  # only for the cache shapes: no weights
        vae = WanVAE(cfg)
    H, W, h, w = profile.height, profile.width, profile.latent_height, profile.latent_width
    enc_cache = vae.encoder.cache_shapes(H, W)
    dec_cache = vae.decoder.cache_shapes(h, w)
    z = cfg.z_dim
    specs: list[GraphSpec] = []
    for first in (True, False):
        suffix = "_first" if first else ""
        n = 1 if first else VAE_TEMPORAL
        specs.append(
            VAEEncodeSpec(
                name=f"vae_encode{suffix}",
                component="vae",
                inputs=(TensorSpec("video", (1, cfg.in_channels, n, H, W), dtype), *_caches("cache", enc_cache, dtype)),
                outputs=(TensorSpec("moments", (1, 2 * z, 1, h, w), dtype), *_caches("cache_out", enc_cache, dtype)),
                first=first,
            )
        )
        specs.append(
            VAEDecodeSpec(
                name=f"vae_decode{suffix}",
                component="vae",
                inputs=(TensorSpec("z", (1, z, 1, h, w), dtype), *_caches("cache", dec_cache, dtype)),
                outputs=(
                    TensorSpec("frames", (1, cfg.out_channels, n, H, W), dtype),
                    *_caches("cache_out", dec_cache, dtype),
                ),
                first=first,
            )
        )
    return specs


# ------------------------------------------------------------------------------------------------ text
@dataclass(frozen=True, kw_only=True)
class TextEncoderSpec(GraphSpec):
    def module(self, model: nn.Module) -> nn.Module:
        return modules.TextEncoderGraph(model)


def text_encoder_graph_specs(d_model: int, vocab_size: int, dtype: torch.dtype) -> list[GraphSpec]:
    """One prompt at a time (the pipeline encodes the negative and positive prompts separately, SPEC §2.1)."""
    ids = (1, TEXT_LENGTH)
    return [
        TextEncoderSpec(
            name="text_encoder",
            component="text_encoder",
            inputs=(
                TensorSpec("input_ids", ids, torch.int64, "token_ids", high=vocab_size),
                TensorSpec("attention_mask", ids, torch.int64, "mask"),
            ),
            outputs=(TensorSpec("hidden", (1, TEXT_LENGTH, d_model), dtype),),
        )
    ]


def check_patchable(profile: ShapeProfile, cfg: DiTConfig) -> None:
    """The profile's latent grid must be divisible by the DiT patch (guaranteed by the 16-pixel rule for (1, 2, 2))."""
    _, ph, pw = cfg.patch_size
    if (ph, pw) != (PATCH, PATCH) or profile.height % (VAE_SPATIAL * ph) or profile.width % (VAE_SPATIAL * pw):
        raise ValueError(f"profile {profile.name!r} does not fit the DiT patch {list(cfg.patch_size)}")
