"""Tasks and the one shared denoise loop (SPEC §2).

A task only prepares its conditioning: the initial latents, how many leading latent frames are conditioning,
an optional KV cache, the schedule and the guidance. :func:`denoise` then runs the same loop for every task:

    for each timestep: DiT on [uncond; cond] (or cond alone) -> CFG-zero -> Euler step on the noise frames.

Three DiT call modes, fixed per request: ``full`` (t2v: 1-D timestep, all frames stepped), ``cond`` (i2v, vc
without cache, refine: per-frame timestep with 0 on the nc conditioning frames, only frames nc.. stepped) and
``cached`` (vc with KV cache: only the noise frames go through the DiT, the conditioning frames' K/V come from
one prefill at batch 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models.dit import KVCache, TextContext
from .sampling import Schedule, cfg_zero, euler_step

# Default negative prompt of every original CLI demo (SPEC §2.1), verbatim.
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)

TASKS = ("t2v", "i2v", "vc", "refine", "long")


@dataclass(frozen=True)
class Conditioning:
    """What a task hands to :func:`denoise` (all tensors on the pipeline's device)."""

    latents: torch.Tensor  # [1, C, T, h, w] initial state (conditioning frames included unless cached)
    schedule: Schedule
    text: TextContext  # batch 2 ([negative; positive]) when guidance is not None, else batch 1
    guidance: float | None  # None: no CFG
    num_cond_latents: int = 0  # leading conditioning latent frames (cond mode) or cached frames (cached mode)
    kv_cache: KVCache | None = None
    cond_latents: torch.Tensor | None = None  # cached mode: prepended to the result before decoding
    per_frame_timestep: bool = False  # cond mode: timestep [B, T] with zeros on the conditioning frames


Denoiser = Callable[..., torch.Tensor]  # (latents, timestep, text_context, num_cond_latents, kv_cache) -> v


def dit_denoiser(dit) -> Denoiser:
    """The plain eager denoiser: one DiT forward."""

    def run(latents, timestep, text, num_cond_latents, kv_cache):
        return dit(latents, timestep, text_context=text, num_cond_latents=num_cond_latents, kv_cache=kv_cache)

    return run


def step_timestep(t: torch.Tensor, batch: int, frames: int, nc: int, per_frame: bool) -> torch.Tensor:
    """The DiT timestep for one step: [B] (same for all frames) or [B, T] with the conditioning frames at 0."""
    tt = t.reshape(1).expand(batch)
    if not per_frame:
        return tt
    tt = tt[:, None].repeat(1, frames)
    tt[:, :nc] = 0
    return tt


def denoise(denoiser: Denoiser, cond: Conditioning, dit_dtype: torch.dtype, progress=None) -> torch.Tensor:
    """Run the schedule; returns the final latents (conditioning frames included, cached ones prepended)."""
    lat = cond.latents
    nc = cond.num_cond_latents
    cached = cond.kv_cache is not None
    first = 0 if cached else nc  # first latent frame the scheduler updates
    sig = cond.schedule.sigmas
    for i, t in enumerate(cond.schedule.timesteps):
        inp = lat.to(dit_dtype)
        if cond.guidance is not None:
            inp = torch.cat([inp, inp])
        tt = step_timestep(t.to(lat.device), inp.shape[0], inp.shape[2], nc, cond.per_frame_timestep)
        v = denoiser(inp, tt, cond.text, 0 if cached else nc, cond.kv_cache)
        if cond.guidance is not None:
            u, c = v.chunk(2)
            v = cfg_zero(u, c, cond.guidance)
        new = euler_step(lat[:, :, first:], v[:, :, first:], sig[i], sig[i + 1])
        if first == 0:
            lat = new
        else:  # in-place into the (possibly bf16) latents, as the original assigns the slice
            lat = lat.clone()
            lat[:, :, first:] = new
        if progress is not None:
            progress(i)
    if cond.cond_latents is not None:
        lat = torch.cat([cond.cond_latents, lat], dim=2)
    return lat


# ------------------------------------------------------------------------------------------------ helpers
def round_num_frames(num_frames: int, temporal: int = 4) -> int:
    """Frame counts must be 4k+1; others are rounded down with a warning, as the original does."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    rounded = (num_frames - 1) // temporal * temporal + 1
    if rounded != num_frames:
        warnings.warn(f"num_frames={num_frames} is not 4k+1; rounded down to {rounded}", stacklevel=3)
    return rounded


def num_latent_frames(num_frames: int, temporal: int = 4) -> int:
    return (num_frames - 1) // temporal + 1


def num_cond_latents(num_cond_frames: int, temporal: int = 4) -> int:
    return 1 + (num_cond_frames - 1) // temporal


def check_size(height: int, width: int, multiple: int) -> None:
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ValueError(
            f"height and width must be positive multiples of {multiple} (VAE 8 x DiT patch 2), got {height}x{width}"
        )


def ceil_to(x: int, m: int) -> int:
    return m * math.ceil(x / m)


# ------------------------------------------------------------------------------------------------ tasks
def _schedule(pipe, req, *, enhance_hf: bool = False) -> Schedule:
    from .sampling import make_schedule

    return make_schedule(req.num_inference_steps, pipe.scheduler.shift, req.use_distill, enhance_hf=enhance_hf)


def _noise(pipe, req, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """The initial noise: the request's injected ``latents`` or the generator's first draw (SPEC §2.11)."""
    if req.latents is not None:
        if tuple(req.latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {list(shape)} for this request, got {list(req.latents.shape)}")
        return req.latents.to(device=pipe.device, dtype=dtype).clone()
    return torch.randn(shape, generator=gen, device=pipe.device, dtype=dtype)


def _latent_shape(pipe, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    sf = pipe.vae.config.scale_factor_spatial
    return (1, pipe.dit.config.in_channels, num_latent_frames(num_frames), height // sf, width // sf)


def _size(pipe, req, first_frame) -> tuple[int, int]:
    """Explicit height/width, else the aspect bucket of the conditioning frame (SPEC §2.10)."""
    from .buckets import get_condition_shape

    multiple = pipe.vae.config.scale_factor_spatial * pipe.dit.config.patch_size[1]
    if req.height is not None or req.width is not None:
        if req.height is None or req.width is None:
            raise ValueError("give both height and width, or neither (to use the resolution bucket)")
        h, w = req.height, req.width
    else:
        h, w = get_condition_shape(first_frame.height, first_frame.width, req.resolution, multiple)
    check_size(h, w, multiple)
    return h, w


def prepare_t2v(pipe, req, gen: torch.Generator) -> Conditioning:
    """Text-to-video: fp32 noise for every frame, 1-D timestep, all frames stepped (SPEC §2.5)."""
    h = 480 if req.height is None else req.height
    w = 832 if req.width is None else req.width
    check_size(h, w, pipe.vae.config.scale_factor_spatial * pipe.dit.config.patch_size[1])
    frames = round_num_frames(req.num_frames)
    latents = _noise(pipe, req, _latent_shape(pipe, frames, h, w), torch.float32, gen)
    guidance = req.guidance_scale if req.do_cfg else None
    return Conditioning(latents=latents, schedule=_schedule(pipe, req), text=pipe.encode_text(req), guidance=guidance)


def prepare_i2v(pipe, req, gen: torch.Generator) -> Conditioning:
    """Image-to-video: noise for every frame, then latent frame 0 = the encoded image (SPEC §2.6)."""
    from .media import load_image, preprocess_frames

    if req.image is None:
        raise ValueError("task i2v needs an image")
    image = load_image(req.image)
    h, w = _size(pipe, req, image)
    frames = round_num_frames(req.num_frames)
    latents = _noise(pipe, req, _latent_shape(pipe, frames, h, w), torch.float32, gen)
    latents[:, :, :1] = pipe.encode_frames(preprocess_frames([image], h, w), gen, torch.float32)
    guidance = req.guidance_scale if req.do_cfg else None
    return Conditioning(
        latents=latents,
        schedule=_schedule(pipe, req),
        text=pipe.encode_text(req),
        guidance=guidance,
        num_cond_latents=1,
        per_frame_timestep=True,
    )


def prepare_vc(pipe, req, gen: torch.Generator) -> Conditioning:
    """Video continuation: the last ``num_cond_frames`` frames condition; noise in the DiT dtype (SPEC §2.7)."""
    from .media import load_video, preprocess_frames

    if req.video is None:
        raise ValueError("task vc needs a video")
    video, _ = load_video(req.video)
    ncf = req.num_cond_frames
    if ncf < 1 or len(video) < ncf:
        raise ValueError(f"video continuation needs at least num_cond_frames={ncf} frames, the video has {len(video)}")
    frames = round_num_frames(req.num_frames)
    nc = num_cond_latents(ncf)
    if nc >= num_latent_frames(frames):
        raise ValueError(f"num_frames={frames} leaves no frame to generate after {ncf} conditioning frames")
    h, w = _size(pipe, req, video[0])
    latents = _noise(pipe, req, _latent_shape(pipe, frames, h, w), pipe.dtype, gen)
    cond = pipe.encode_frames(preprocess_frames(video[-ncf:], h, w), gen, pipe.dtype)
    latents[:, :, :nc] = cond
    schedule = _schedule(pipe, req, enhance_hf=req.enhance_hf)
    guidance = req.guidance_scale if req.do_cfg else None
    text = pipe.encode_text(req)
    if req.use_kv_cache:
        kv = pipe.dit.prefill(latents[:, :, :nc])
        return Conditioning(
            latents=latents[:, :, nc:],
            schedule=schedule,
            text=text,
            guidance=guidance,
            num_cond_latents=nc,
            kv_cache=kv,
            cond_latents=latents[:, :, :nc],
        )
    return Conditioning(
        latents=latents,
        schedule=schedule,
        text=text,
        guidance=guidance,
        num_cond_latents=nc,
        per_frame_timestep=True,
    )
