"""Wan2.1 causal video VAE (diffusers ``AutoencoderKLWan``, as copied by LongCat-Video; SPEC §9, §2.2).

Attribute names mirror the diffusers checkpoint keys, so loading is a strict identity map.

Design note: the time cache is explicit.
    Every causal 3-D conv with a temporal kernel of 3 needs the last ``CACHE_T = 2`` frames of its input from the
    previous chunk. The reference keeps them in a Python list it mutates by index, with ``None`` / ``"Rep"``
    markers for the first chunk. Here a cache is a flat tuple of tensors in module order (encoder: conv_in, the
    down blocks, the mid block, conv_out; decoder: conv_in, the mid block, the up blocks, conv_out), passed in and
    returned, so one encode chunk and one decoded latent frame are plain functions of tensors with static shapes
    (``torch.export``-able, CUDA-graph capturable). The first-chunk behaviour is a Python bool, static per graph.

    * causal conv: ``y = conv(cat(cache, x))``, ``cache' = cat(cache, x)[-2:]``. A zero cache before the first
      chunk equals the reference's 2-frame causal zero padding, and keeping 2 frames (padded with those zeros)
      after a 1-frame chunk equals the reference's "prepend the previous last frame" rule.
    * temporal downsample (encoder, cache [B, C, 1, h, w]): the first chunk (1 frame) skips the stride-2 time
      conv; every later chunk is convolved with the previous chunk's last frame in front.
    * temporal upsample (decoder, cache [B, C, 2, h, w]): the first latent frame is not doubled in time and
      leaves the cache at zeros (the reference's "Rep" marker); every later one doubles T.
    So the encoder takes 1 frame, then chunks of 4, each giving 1 latent frame; the decoder turns the first latent
    frame into 1 frame and every later one into 4.

Precision: everything runs in the module dtype (bf16 on GPU, like the original), except where diffusers up-casts
to fp32: the RMS norm statistics and the nearest-neighbour spatial upsampling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VAEConfig
from ..weights import load_into, shard_files

CACHE_T = 2  # frames of history per causal conv (temporal kernel 3, causal padding 2)

Cache = tuple[torch.Tensor, ...]
Shape = tuple[int, int, int, int]  # (channels, frames, height, width) of one cache tensor, batch excluded


# ---------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """Channel RMS norm over dim 1: ``x / ||x||_2 · sqrt(C) · gamma``; gamma [C, 1, ...] (``spatial_dims`` ones).

    The statistics of half-precision inputs are computed in fp32 and cast back before the scale, as diffusers does.
    """

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upcast = x.dtype in (torch.float16, torch.bfloat16)
        normed = F.normalize(x.float() if upcast else x, dim=1).to(x.dtype)
        return normed * self.scale * self.gamma


class CausalConv3d(nn.Conv3d):
    """Conv3d, temporal kernel 3, causal in time through an explicit cache; 'same' zero padding in space.

    ``forward(x [B, Cin, T, H, W], cache [B, Cin, 2, H, W]) -> (y [B, Cout, T, H, W], cache')``.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int], spatial_padding: int = 1):
        super().__init__(in_dim, out_dim, kernel)
        if self.kernel_size[0] != CACHE_T + 1:
            raise ValueError(f"CausalConv3d needs a temporal kernel of {CACHE_T + 1}, got {self.kernel_size}")
        p = spatial_padding
        self.spatial_pad = (p, p, p, p, 0, 0)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([cache, x], dim=2)
        # clone: a view would keep the whole concatenated input alive for as long as the cache lives
        new_cache = x[:, :, -CACHE_T:].clone()
        return super().forward(F.pad(x, self.spatial_pad)), new_cache


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame: [B, C, T, H, W] -> [B, C', T, H', W'] (a permuted view, as diffusers)."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal conv) x 2 plus a 1x1x1 conv shortcut when the width changes. Two caches.

    Dropout is inference-time identity and is left out.
    """

    n_cache = 2

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(in_dim, spatial_dims=3)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3)
        self.norm2 = RMSNorm(out_dim, spatial_dims=3)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3)
        self.conv_shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        return [(self.conv1.in_channels, CACHE_T, h, w), (self.conv2.in_channels, CACHE_T, h, w)]

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        shortcut = self.conv_shortcut(x)
        y, c1 = self.conv1(F.silu(self.norm1(x)), cache[0])
        y, c2 = self.conv2(F.silu(self.norm2(y)), cache[1])
        return y + shortcut, (c1, c2)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time). No cache."""

    n_cache = 0

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        return []

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        # [BT, 3C, H, W] -> [BT, 1, HW, 3C] -> q, k, v [BT, 1, HW, C]: one head of width C, tokens = pixels
        qkv = self.to_qkv(y).reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj(y.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        # out = permuted attention + x (not x + ...): the sum takes the first operand's strides, which decides the
        # reduction order of the next RMS norm; diffusers' order keeps us bitwise equal to it
        return y.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x, ()


class Upsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling of [N, C, H, W], run in fp32 as diffusers does (a pure copy, so the
    up-cast changes no value; kept so the op and its dtype match the reference graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Downsample(nn.Module):
    """2x spatial downsampling (pad right/bottom by 1, 3x3 conv stride 2), optionally 2x in time (causal).

    The temporal part is a (3, 1, 1) conv with stride 2 over [last frame of the previous chunk, chunk]; the first
    chunk (1 frame) passes unchanged. Cache: the last frame after the spatial downsampling, [B, C, 1, h/2, w/2].
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.n_cache = 1 if temporal else 0
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        return [(self.time_conv.in_channels, 1, h // 2, w // 2)] if self.temporal else []

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        x = _per_frame(self.resample, x)
        if not self.temporal:
            return x, ()
        new_cache = x[:, :, -1:].clone()
        if not first:
            x = self.time_conv(torch.cat([cache[0], x], dim=2))
        return x, (new_cache,)


class Upsample(nn.Module):
    """2x nearest spatial upsampling + 3x3 conv to ``dim // 2`` channels, optionally 2x in time first (causal).

    The temporal part is a causal (3, 1, 1) conv to 2·dim channels whose halves are interleaved as even/odd
    frames. The first latent frame skips it, so it yields 1 frame, and leaves its cache [B, C, 2, h, w] at zeros.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.n_cache = 1 if temporal else 0
        self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), spatial_padding=0)

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        return [(self.time_conv.in_channels, CACHE_T, h, w)] if self.temporal else []

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        new_cache: Cache = ()
        if self.temporal and first:
            new_cache = (cache[0],)
        elif self.temporal:
            b, c, t, h, w = x.shape
            y, c0 = self.time_conv(x, cache[0])  # [B, 2C, T, H, W]
            # channel halves are the even and odd output frames: [B, 2, C, T] -> [B, C, T, 2] -> [B, C, 2T]
            x = y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            new_cache = (c0,)
        return _per_frame(self.resample, x), new_cache


def _chain(layers: Sequence[nn.Module], x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
    """Run cached layers in order; each takes the next ``layer.n_cache`` cache tensors and returns as many."""
    new: list[torch.Tensor] = []
    for layer in layers:
        x, c = layer(x, cache[len(new) : len(new) + layer.n_cache], first)
        new.extend(c)
    return x, tuple(new)


class MidBlock(nn.Module):
    """Residual block, attention, residual block (keys ``resnets.{0,1}``, ``attentions.0``). Four caches."""

    n_cache = 4

    def __init__(self, dim: int):
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        return [s for r in self.resnets for s in r.cache_shapes(h, w)]

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        return _chain([self.resnets[0], self.attentions[0], self.resnets[1]], x, cache, first)


class UpBlock(nn.Module):
    """``num_res_blocks + 1`` residual blocks, then an optional ``upsamplers.0``."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None):
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList([ResidualBlock(i, o) for i, o in zip(dims[:-1], dims[1:])])
        self.upsamplers = nn.ModuleList([Upsample(out_dim, temporal=upsample == "3d")] if upsample else [])
        self.n_cache = sum(m.n_cache for m in self.layers)

    @property
    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *self.upsamplers]

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        return _chain(self.layers, x, cache, first)


# ---------------------------------------------------------------------------------------------- encoder / decoder
class Encoder(nn.Module):
    """[B, 3, T, H, W] -> [B, 2·z_dim, T', H/8, W/8]; one chunk (1 frame first, then 4) -> 1 latent frame."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level != len(cfg.dim_mult) - 1:
                blocks.append(Downsample(out_dim, temporal=cfg.temperal_downsample[level]))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1], spatial_dims=3)
        self.conv_out = CausalConv3d(dims[-1], cfg.z_dim * 2, 3)

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        """Shapes of the cache tensors for input frames of h x w pixels, in cache order."""
        shapes = [(self.conv_in.in_channels, CACHE_T, h, w)]
        for layer in self.down_blocks:
            shapes += layer.cache_shapes(h, w)
            if isinstance(layer, Downsample):
                h, w = h // 2, w // 2  # pad 1 + 3x3 stride 2 halves (floor) any size
        shapes += self.mid_block.cache_shapes(h, w)
        return [*shapes, (self.conv_out.in_channels, CACHE_T, h, w)]

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        x, c_in = self.conv_in(x, cache[0])
        x, c_mid = _chain([*self.down_blocks, self.mid_block], x, cache[1:-1], first)
        x, c_out = self.conv_out(F.silu(self.norm_out(x)), cache[-1])
        return x, (c_in, *c_mid, c_out)


class Decoder(nn.Module):
    """[B, z_dim, 1, h, w] -> [B, 3, 1 (first latent frame) or 4, 8h, 8w], one latent frame per call."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = tuple(reversed(cfg.temperal_downsample))
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            last = level == len(cfg.dim_mult) - 1
            upsample = None if last else ("3d" if temporal_up[level] else "2d")
            # every upsampler halves the channels, so all levels but the first start at half their width
            blocks.append(UpBlock(in_dim // 2 if level else in_dim, out_dim, cfg.num_res_blocks, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1], spatial_dims=3)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3)

    def cache_shapes(self, h: int, w: int) -> list[Shape]:
        """Shapes of the cache tensors for latent frames of h x w, in cache order."""
        shapes = [(self.conv_in.in_channels, CACHE_T, h, w), *self.mid_block.cache_shapes(h, w)]
        for block in self.up_blocks:
            shapes += [s for r in block.resnets for s in r.cache_shapes(h, w)]
            for up in block.upsamplers:
                shapes += up.cache_shapes(h, w)
                h, w = 2 * h, 2 * w
        return [*shapes, (self.conv_out.in_channels, CACHE_T, h, w)]

    def forward(self, x: torch.Tensor, cache: Cache, first: bool) -> tuple[torch.Tensor, Cache]:
        x, c_in = self.conv_in(x, cache[0])
        x, c_mid = _chain([self.mid_block, *self.up_blocks], x, cache[1:-1], first)
        x, c_out = self.conv_out(F.silu(self.norm_out(x)), cache[-1])
        return x, (c_in, *c_mid, c_out)


# ---------------------------------------------------------------------------------------------- VAE
class WanVAE(nn.Module):
    """Wan2.1 VAE: video [B, 3, 1+4k, H, W] in [-1, 1] <-> latents [B, z_dim, 1+k, H/8, W/8].

    Chunk-level graphs (static shapes, explicit caches): :meth:`encode_chunk`, :meth:`decode_frame`, started from
    :meth:`init_encode_cache` / :meth:`init_decode_cache`. Whole-video helpers: :meth:`encode`, :meth:`decode`,
    :meth:`decode_stream`.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        if config.attn_scales:
            # diffusers builds down-block attention for these but cannot run it (and Wan2.1 has none)
            raise ValueError(f"WanVAE: attn_scales must be empty (Wan2.1), got {list(config.attn_scales)}")
        self.config = config
        z = config.z_dim
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv3d(z, z, 1)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    def _zeros(self, shapes: list[Shape], batch: int) -> Cache:
        return tuple(torch.zeros(batch, *s, device=self.device, dtype=self.dtype) for s in shapes)

    def init_encode_cache(self, batch: int, height: int, width: int) -> Cache:
        """Zero cache for encoding a video of ``height x width`` pixels (module dtype and device)."""
        return self._zeros(self.encoder.cache_shapes(height, width), batch)

    def init_decode_cache(self, batch: int, height: int, width: int) -> Cache:
        """Zero cache for decoding latents of ``height x width`` (latent pixels; module dtype and device)."""
        return self._zeros(self.decoder.cache_shapes(height, width), batch)

    def encode_chunk(self, x: torch.Tensor, cache: Cache, *, first: bool) -> tuple[torch.Tensor, Cache]:
        """One encoder step: ``x`` [B, 3, 1 if first else 4, H, W] -> moments [B, 2·z_dim, 1, H/8, W/8].

        The moments are [mean ; logvar] along channels (logvar not yet clamped). ``cache'`` has the shapes of
        ``cache``; the first chunk of a video takes :meth:`init_encode_cache`.
        """
        want = 1 if first else self.config.scale_factor_temporal
        if x.shape[2] != want:
            raise ValueError(f"encode_chunk(first={first}) takes {want} frame(s), got {x.shape[2]}")
        h, new_cache = self.encoder(x, cache, first)
        return self.quant_conv(h), new_cache

    def decode_frame(self, z: torch.Tensor, cache: Cache, *, first: bool) -> tuple[torch.Tensor, Cache]:
        """One decoder step: latent frame ``z`` [B, z_dim, 1, h, w] (denormalized) -> frames [B, 3, n, 8h, 8w]
        clamped to [-1, 1], n = 1 for the first latent frame of a video and 4 after."""
        if z.shape[2] != 1:
            raise ValueError(f"decode_frame takes one latent frame, got {z.shape[2]}")
        x, new_cache = self.decoder(self.post_quant_conv(z), cache, first)
        return x.clamp(-1.0, 1.0), new_cache

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of ``video`` [B, 3, F, H, W] (values in [-1, 1], cast to the module dtype).

        Returns (mean, logvar), each [B, z_dim, 1 + (F-1)//4, H/8, W/8]; logvar clamped to [-30, 20] as diffusers'
        ``DiagonalGaussianDistribution``. Frames beyond 1 + 4·((F-1)//4) are ignored, as in the original.
        """
        if video.ndim != 5 or video.shape[1] != self.config.in_channels or video.shape[2] < 1:
            raise ValueError(f"encode expects [B, {self.config.in_channels}, F>=1, H, W], got {list(video.shape)}")
        video = video.to(self.dtype)
        b, _, f, h, w = video.shape
        step = self.config.scale_factor_temporal
        cache = self.init_encode_cache(b, h, w)
        moments = []
        for i in range(1 + (f - 1) // step):
            chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + step * (i - 1) : 1 + step * i]
            m, cache = self.encode_chunk(chunk, cache, first=i == 0)
            moments.append(m)
        mean, logvar = torch.cat(moments, dim=2).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_stream(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Decode ``latents`` [B, z_dim, T, h, w] (denormalized; cast to the module dtype) one latent frame at a
        time, yielding frames [B, 3, 1, 8h, 8w] first, then [B, 3, 4, 8h, 8w] per latent frame, in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim:
            raise ValueError(f"decode expects [B, {self.config.z_dim}, T, h, w], got {list(latents.shape)}")
        latents = latents.to(self.dtype)
        b, _, t, h, w = latents.shape
        cache = self.init_decode_cache(b, h, w)
        for i in range(t):
            frames, cache = self.decode_frame(latents[:, :, i : i + 1], cache, first=i == 0)
            yield frames

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode ``latents`` [B, z_dim, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1]."""
        return torch.cat(list(self.decode_stream(latents)), dim=2)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """:func:`normalize_latents` with this checkpoint's ``latents_mean`` / ``latents_std``."""
        return normalize_latents(z, self.config.latents_mean, self.config.latents_std)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """:func:`denormalize_latents` with this checkpoint's ``latents_mean`` / ``latents_std``."""
        return denormalize_latents(z, self.config.latents_mean, self.config.latents_std)


# ---------------------------------------------------------------------------------------------- pure functions
def sample_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``mean + exp(logvar/2) · randn`` exactly as diffusers' ``DiagonalGaussianDistribution.sample``.

    mean, logvar: [B, z_dim, T, h, w]; logvar is clamped to [-30, 20]. The noise is drawn in ``mean.dtype`` from
    ``generator``; a CPU generator draws on the CPU and the noise is moved to ``mean.device`` (diffusers'
    ``randn_tensor``), so a seeded CPU generator gives the same sample on every device.
    """
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    on_cpu = generator is not None and generator.device.type == "cpu"
    draw_device = torch.device("cpu") if on_cpu else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=draw_device, dtype=mean.dtype).to(mean.device)
    return mean + std * noise


def _stats(
    z: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and 1/std as [1, C, 1, 1, 1] in z's dtype; the reciprocal is taken after the cast (SPEC §2.2)."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    return m, inv_std


def normalize_latents(
    z: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """VAE latents [B, C, T, h, w] -> DiT latents: ``(z - mean) · (1/std)``, in z's dtype (SPEC §2.2)."""
    m, inv_std = _stats(z, mean, std)
    return (z - m) * inv_std


def denormalize_latents(
    z: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """DiT latents [B, C, T, h, w] -> VAE latents: ``z / (1/std) + mean``, in z's dtype (SPEC §2.2)."""
    m, inv_std = _stats(z, mean, std)
    return z / inv_std + m


def load_vae(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Load a diffusers-format ``vae/`` folder (config.json + safetensors) strictly onto ``device`` in ``dtype``.

    Raises ``ConfigError`` for an invalid config and ``CheckpointError`` naming any missing, unexpected or
    mis-shaped tensor.
    """
    folder = Path(folder)
    config = VAEConfig.from_json(folder / "config.json")
    with torch.device("meta"):
        model = WanVAE(config)
    load_into(model, shard_files(folder), device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


__all__ = [
    "CACHE_T",
    "WanVAE",
    "denormalize_latents",
    "load_vae",
    "normalize_latents",
    "sample_posterior",
]
