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
    frames: slice | None = None  # which decoded frames are the output (refine drops its padding frames)
    fps: int = 15


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


# ------------------------------------------------------------------------------------------------ refine
REFINE_SCALE_FACTOR = 64  # 8 (VAE) x 2 (patch) x 4 (BSA block): the 720p buckets refine picks from (SPEC §2.8)


def stage1_tensor(video) -> torch.Tensor:
    """Stage-1 frames (list of PIL, uint8 [F, H, W, 3] array or a video path, kept at its own frame rate) as
    uint8 [F, 3, h, w]."""
    import numpy as np

    from .media import load_video

    frames, _ = load_video(video, target_fps=None)
    return torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in frames])).permute(0, 3, 1, 2)


def upsample_stage1(u8: torch.Tensor, height: int, width: int, num_frames: int, dtype) -> torch.Tensor:
    """uint8 [F, 3, h, w] -> [1, 3, F', H, W] in [-1, 1]: bilinear to (H, W) on 0..255, /255, trilinear to F'
    frames (both align_corners=True), *2-1, all in ``dtype`` as the original (SPEC §2.8 step 3)."""
    import torch.nn.functional as F

    x = F.interpolate(u8.to(dtype), size=(height, width), mode="bilinear", align_corners=True)
    x = x.permute(1, 0, 2, 3)[None] / 255
    x = F.interpolate(x, size=(num_frames, height, width), mode="trilinear", align_corners=True)
    return x * 2 - 1


def refine_padding(num_frames: int, num_cond_frames: int) -> tuple[int, int, int]:
    """(nc, added_cond, added_noise) frames so that conditioning and noise are whole 4-latent BSA blocks."""
    if num_cond_frames > 0:
        nc = ceil_to(1 + math.ceil((num_cond_frames - 1) / 4), 4)
        added_c = 1 + 4 * (nc - 1) - num_cond_frames
    else:
        nc = added_c = 0
    noise_frames = num_frames - num_cond_frames
    if noise_frames < 1:
        raise ValueError(f"refine: {num_cond_frames} conditioning frames leave no frame of the {num_frames} to refine")
    added_n = 4 * ceil_to(math.ceil(noise_frames / 4), 4) - noise_frames
    return nc, added_c, added_n


def _refine_cond_pixels(pipe, req, h: int, w: int, ncf: int, added_c: int) -> torch.Tensor | None:
    """Conditioning pixels [1, 3, ncf + added_c, H, W]: the image repeated, or the video's last ncf frames,
    front-padded with copies of their first frame."""
    from .media import load_image, load_video, preprocess_frames

    if req.image is not None:
        px = preprocess_frames([load_image(req.image)], h, w)
        return px.repeat(1, 1, 1 + added_c, 1, 1)
    if req.video is not None:
        video, _ = load_video(req.video, target_fps=None)
        if len(video) < ncf:
            raise ValueError(
                f"refine needs at least num_cond_frames={ncf} conditioning frames, the video has {len(video)}"
            )
        px = preprocess_frames(video[-ncf:], h, w)
        return torch.cat([px[:, :, :1].expand(-1, -1, added_c, -1, -1), px], dim=2)
    return None


def prepare_refine(pipe, req, gen: torch.Generator) -> Conditioning:
    """720p refinement of a stage-1 video (SPEC §2.8): upsample (x2 in time unless spatial only), pad to whole
    BSA blocks, encode, noise to sigma = t_thresh, condition the leading frames on the image/video, no CFG."""
    from .buckets import get_condition_shape
    from .sampling import refine_schedule

    if req.stage1_video is None:
        raise ValueError("task refine needs stage1_video (the stage-1 frames to refine)")
    if req.image is not None and req.video is not None:
        raise ValueError("refine takes an image or a video to condition on, not both")
    u8 = stage1_tensor(req.stage1_video)
    if req.height is not None and req.width is not None:
        h, w = req.height, req.width
    else:
        h, w = get_condition_shape(u8.shape[2], u8.shape[3], "720p", REFINE_SCALE_FACTOR)
    check_size(h, w, pipe.vae.config.scale_factor_spatial * pipe.dit.config.patch_size[1])
    f_out = u8.shape[0] if req.spatial_refine_only else 2 * u8.shape[0]
    ncf = req.num_cond_frames if (req.image is not None or req.video is not None) else 0
    nc, added_c, added_n = refine_padding(f_out, ncf)
    x = upsample_stage1(u8.to(pipe.device), h, w, f_out, pipe.dtype)
    x = torch.cat([x[:, :, :1].expand(-1, -1, added_c, -1, -1), x, x[:, :, -1:].expand(-1, -1, added_n, -1, -1)], 2)
    z = pipe.encode_frames(x, gen, pipe.vae.dtype)
    noise = _noise(pipe, req, tuple(z.shape), z.dtype, gen)
    latents = ((1 - req.t_thresh) * z + req.t_thresh * noise).to(torch.float32)
    cond_px = _refine_cond_pixels(pipe, req, h, w, ncf, added_c)
    if cond_px is not None:
        latents[:, :, :nc] = pipe.encode_frames(cond_px, gen, torch.float32)
    return Conditioning(
        latents=latents,
        schedule=refine_schedule(req.num_inference_steps, pipe.scheduler.shift, req.t_thresh),
        text=pipe.encode_text(req),
        guidance=None,
        num_cond_latents=nc,
        per_frame_timestep=True,
        frames=slice(added_c, added_c + f_out),
        fps=15 if req.spatial_refine_only else 30,
    )
