"""The public ``Pipeline``: loads the components once and runs any LongCat task (DESIGN.md, SPEC §2).

pipe = Pipeline.from_pretrained("path/to/LongCat-Video" | "tiny", device="cuda", dtype=torch.bfloat16)
out = pipe.generate(task="t2v", prompt="...")
out.latents, out.frames, out.fps
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import tasks
from .config import SchedulerConfig
from .models.dit import LongCatDiT, load_dit
from .profiling import nvtx_range
from .weights import CheckpointError, CheckpointLayout


@dataclass(frozen=True)
class Request:
    """One generation request, every default resolved (built by :meth:`Pipeline.request`)."""

    task: str
    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int = 93
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    use_distill: bool = False
    seed: int | None = 0
    image: Any = None
    video: Any = None
    resolution: str = "480p"
    num_cond_frames: int = 13
    use_kv_cache: bool = True
    enhance_hf: bool = True
    stage1_video: Any = None
    t_thresh: float = 0.5
    spatial_refine_only: bool = False
    use_bsa: bool | None = None
    latents: torch.Tensor | None = None
    output_type: str = "np"

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass
class Output:
    latents: torch.Tensor  # final latents before decoding, fp32 [1, 16, T, h, w]
    frames: np.ndarray | None  # uint8 [F, H, W, 3]; None for output_type="latent"
    fps: int
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """All LongCat components on one device, plus the LoRA files of the checkpoint."""

    def __init__(
        self,
        *,
        dit: LongCatDiT,
        vae,
        text_encoder,
        scheduler: SchedulerConfig,
        loras: dict[str, Any],
        compile: str = "auto",
        kernels: str = "auto",
        attention: str | None = None,
        keep_graphs: bool = False,
    ):
        """``compile``: "none" (eager DiT step), "graph" (the step as a CUDA graph) or "auto" (graph on CUDA);
        ``kernels``: "auto" (triton on CUDA), "torch" or
        "triton" (fused DiT kernels); ``attention``: a backend of ``lc_runtime.ops.attention`` (None: the best
        the device offers). All three are chosen once, here (see :meth:`_select_denoiser`). ``keep_graphs``:
        keep the step's CUDA graphs (and their activation memory, 9.5 GB at 480p batch 2 on an H200) through the VAE
        decode and into the next generation, instead of releasing them before decoding and capturing again (without
        warm-up) at the next generation's first step: a lower peak by default; keeping them saved 0.06 s per
        generation on the H200."""
        self.keep_graphs = keep_graphs
        self.dit, self.vae, self.text_encoder, self.scheduler = dit, vae, text_encoder, scheduler
        self.lora_sources = loras  # name -> path (or in-memory modules for the tiny model), loaded lazily
        self.device = dit.device
        self.dtype = dit.dtype
        self.denoiser = self._select_denoiser(compile, kernels, attention)

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        keep_text_encoder_resident: bool = False,
        compile: str = "auto",
        kernels: str = "auto",
        attention: str | None = None,
        keep_graphs: bool = False,
    ) -> Pipeline:
        """Load a Hugging Face LongCat-Video folder (SPEC §10), or ``"tiny"``: a small random model built
        in-process. ``dtype`` defaults to bf16 on CUDA (as the original) and fp32 on CPU. ``compile``,
        ``kernels``, ``attention``, ``keep_graphs``: the speed and memory options of :class:`Pipeline` (fastest
        on a GPU: "graph", "triton", None)."""
        speed = {"compile": compile, "kernels": kernels, "attention": attention, "keep_graphs": keep_graphs}
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if str(path) == "tiny":
            from .tiny import build_tiny_components

            return cls(**build_tiny_components(device, dtype), **speed)
        from .models.text_encoder import TextEncoder
        from .models.vae import load_vae

        layout = CheckpointLayout(Path(path))
        layout.check()
        loras = {n: p for n, p in (("cfg_step", layout.cfg_step_lora), ("refinement", layout.refinement_lora))}
        return cls(
            dit=load_dit(layout.dit, device=device, dtype=dtype),
            vae=load_vae(layout.vae, device=device, dtype=dtype),
            text_encoder=TextEncoder.from_pretrained(
                layout.root, device=device, dtype=dtype, keep_resident=keep_text_encoder_resident
            ),
            scheduler=SchedulerConfig.from_json(layout.scheduler_config),
            loras=loras,
            **speed,
        )

    # ------------------------------------------------------------------------------------------- LoRA
    def _ensure_lora(self, name: str) -> None:
        if self.dit.lora is not None and name in self.dit.lora.files:
            return
        src = self.lora_sources.get(name)
        if src is None:
            raise CheckpointError(f"this model has no {name} LoRA")
        if isinstance(src, dict):  # in-memory modules (tiny model)
            from .lora import LoRAState

            if self.dit.lora is None:
                self.dit.lora = LoRAState(self.dit)
            self.dit.lora.files[name] = src
            return
        if not Path(src).is_file():
            raise CheckpointError(f"LoRA file not found: {src} (needed for {name})")
        self.dit.load_lora(src, name)

    @contextlib.contextmanager
    def loras_for(self, names: list[str]) -> Iterator[None]:
        """Enable ``names`` (multiplier 1) for one request; restore the previous LoRA state after."""
        previous = self.dit.active_loras
        wanted = {n: 1.0 for n in names}
        for n in names:
            self._ensure_lora(n)
        if wanted != previous:
            self.dit.set_loras(wanted)
        try:
            yield
        finally:
            if self.dit.active_loras != previous:
                self.dit.set_loras(previous)

    @contextlib.contextmanager
    def bsa_for(self, req: Request) -> Iterator[None]:
        """Block-sparse attention for one request: ``use_bsa=None`` turns it on for refinement on CUDA (the
        original enables it for refinement; on CPU the dense path is the default), True forces it on for the
        request, False keeps dense attention."""
        on = req.use_bsa if req.use_bsa is not None else (req.task == "refine" and self.device.type == "cuda")
        was = self.dit.bsa_enabled
        if on:
            self.dit.enable_bsa()
        else:
            self.dit.disable_bsa()
        try:
            yield
        finally:
            if was:
                self.dit.enable_bsa()
            else:
                self.dit.disable_bsa()

    # ------------------------------------------------------------------------------------------- requests
    def request(self, **kwargs) -> Request:
        """Validate ``generate`` arguments and resolve the defaults that depend on other arguments."""
        task = kwargs.get("task")
        if task not in tasks.TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(tasks.TASKS)}")
        distill = bool(kwargs.get("use_distill", False))
        defaults = {
            "num_inference_steps": 16 if distill else 50,
            "guidance_scale": 1.0 if distill else 4.0,
            "enhance_hf": not distill,
        }
        if kwargs.get("num_cond_frames") is None:  # the demos' choices (SPEC §4)
            if task == "refine":
                video_cond = 13 if kwargs.get("spatial_refine_only") else 26
                kwargs["num_cond_frames"] = 1 if kwargs.get("image") is not None else video_cond
            else:
                kwargs["num_cond_frames"] = 13
        for k, v in defaults.items():
            if kwargs.get(k) is None:
                kwargs[k] = v
        if kwargs.get("prompt") is None:
            if task not in ("refine",):
                raise ValueError(f"task {task} needs a prompt")
            kwargs["prompt"] = ""
        for name, users in (("image", ("i2v", "refine")), ("video", ("vc", "refine", "long"))):
            if kwargs.get(name) is not None and task not in users:
                raise ValueError(f"{name}= is not used by task {task} (only by {', '.join(users)})")
        if kwargs.get("stage1_video") is not None and task != "refine":
            raise ValueError(f"stage1_video= is only used by task refine, not {task}")
        if kwargs.get("output_type", "np") not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {kwargs['output_type']!r}")
        if kwargs.get("resolution", "480p") not in ("480p", "720p"):
            raise ValueError(f"resolution must be '480p' or '720p', got {kwargs['resolution']!r}")
        if distill and kwargs["enhance_hf"] and task == "vc":
            raise ValueError(
                "enhance_hf cannot be combined with use_distill (as in the original); pass enhance_hf=False"
            )
        steps = kwargs["num_inference_steps"]
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        return Request(**{k: v for k, v in kwargs.items() if v is not None or k in ("seed", "use_bsa")})

    def generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(self.device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(int(seed))
        return g

    @torch.no_grad()
    def generate(self, task: str = "t2v", prompt: str | None = None, **kwargs) -> Output:
        """Run one task; see DESIGN.md for the arguments (names follow the original pipeline's)."""
        if task == "long":
            return self._generate_long(prompt, **kwargs)
        return self.run(self.request(task=task, prompt=prompt, **kwargs))

    def _generate_long(self, prompt, *, num_segments: int = 11, refine: bool = False, **kwargs) -> Output:
        """task="long": t2v + ``num_segments`` continuations (+ refinement windows), frames in memory; for
        long runs use :func:`lc_runtime.long_video.generate_long`, which streams to an mp4 and resumes."""
        import tempfile

        from .long_video import LongVideoOptions, Parts, refine_windows, stage1_segments

        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
        allowed = {f for f in LongVideoOptions.__dataclass_fields__} - {"prompts", "num_segments", "refine"}
        unknown = sorted(k for k, v in kwargs.items() if k not in allowed and v is not None)
        if unknown:
            raise ValueError(f"task long does not take {', '.join(unknown)}")
        opts = LongVideoOptions(
            prompts=prompts,
            num_segments=num_segments,
            refine=refine,
            **{k: v for k, v in kwargs.items() if v is not None},
        )
        gen = self.generator(opts.seed)
        with tempfile.TemporaryDirectory() as tmp:
            parts = Parts(Path(tmp) / "long.mp4", opts)
            frames = np.concatenate(list(stage1_segments(self, opts, parts, gen)))
            if refine:
                frames = np.concatenate(list(refine_windows(self, opts, parts, gen)))
        return Output(latents=torch.empty(0), frames=frames, fps=30 if refine else 15)

    def run(self, req: Request, progress: bool = True, generator: torch.Generator | None = None) -> Output:
        """Run a validated request; ``generator`` (default: seeded from ``req.seed``) can be shared by several
        requests, as the long-video demo does."""
        timings: dict[str, float] = {}
        gen = self.generator(req.seed) if generator is None else generator
        loras = (["cfg_step"] if req.use_distill else []) + (["refinement"] if req.task == "refine" else [])
        with self.loras_for(loras), self.bsa_for(req):
            t0 = time.perf_counter()
            prepare = {
                "t2v": tasks.prepare_t2v,
                "i2v": tasks.prepare_i2v,
                "vc": tasks.prepare_vc,
                "refine": tasks.prepare_refine,
            }[req.task]
            cond = prepare(self, req, gen)
            timings["prepare_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            latents = self.denoise(cond, progress=progress)
            timings["denoise_s"] = time.perf_counter() - t0
            timings["steps"] = cond.schedule.num_steps
        latents = latents.float()
        frames = None
        self._record_peak_memory(timings, "denoise_")
        if req.output_type == "np":
            t0 = time.perf_counter()
            frames = self.decode(latents, progress=progress)
            if cond.frames is not None:
                frames = frames[cond.frames]
            timings["decode_s"] = time.perf_counter() - t0
        self._record_peak_memory(timings, "")
        return Output(latents=latents, frames=frames, fps=cond.fps, timings=timings)

    def _record_peak_memory(self, timings: dict[str, float], prefix: str) -> None:
        """Peak GPU memory so far (the caching allocator's allocated and reserved bytes, in GB); a no-op off CUDA."""
        if self.device.type == "cuda":
            timings[f"{prefix}peak_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
            timings[f"{prefix}peak_reserved_gb"] = torch.cuda.max_memory_reserved(self.device) / 1e9

    def _select_denoiser(self, compile: str, kernels: str, attention: str | None) -> tasks.Denoiser:
        """The attention backend, the DiT's kernel table and the step's runner, chosen once (DESIGN: a Denoiser
        chosen at construction; the loop never asks which one it has)."""
        from .ops.attention import select_attention_backend

        cuda = self.device.type == "cuda"
        if compile == "auto":  # the fastest verified path on a GPU; plain eager elsewhere
            compile = "graph" if cuda else "none"
        if kernels == "auto":
            from .ops.fused import triton_available

            kernels = "triton" if cuda and triton_available() else "torch"
        if compile not in ("none", "graph"):
            raise ValueError(f"compile must be 'none' or 'graph', got {compile!r}")
        if attention is not None or self.device.type == "cuda":
            select_attention_backend(attention, self.device)
        self.dit.use_kernels(kernels)
        if compile == "graph":
            from .graphs import GraphDenoiser

            return GraphDenoiser(self.dit, use_cuda_graph=True)
        return tasks.dit_denoiser(self.dit)

    def denoise(self, cond: tasks.Conditioning, progress: bool = True) -> torch.Tensor:
        from tqdm.auto import tqdm

        from .profiling import nvtx_range

        def step(*args):
            with nvtx_range("denoise step"):
                return self.denoiser(*args)

        bar = tqdm(total=cond.schedule.num_steps, desc="denoise", unit="step", disable=not progress, leave=False)
        try:
            return tasks.denoise(step, cond, self.dtype, progress=lambda i: bar.update(1))
        finally:
            bar.close()

    # ------------------------------------------------------------------------------------------- VAE
    def decode_stream(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        """Decode latents [1, 16, T, h, w] latent frame by latent frame, yielding uint8 frames [f, H, W, 3]."""
        from .media import to_uint8_frames

        release = getattr(self.denoiser, "release", None)  # the CUDA-graph denoiser's memory, before the VAE's
        if release is not None and not self.keep_graphs:
            release()
        z = self.vae.denormalize_latents(latents.to(self.vae.dtype))
        stream = self.vae.decode_stream(z)
        while True:
            with nvtx_range("vae decode frame"):
                chunk = next(stream, None)
            if chunk is None:
                return
            yield to_uint8_frames(chunk)

    def decode(self, latents: torch.Tensor, progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        chunks = list(
            tqdm(self.decode_stream(latents), total=latents.shape[2], desc="decode", disable=not progress, leave=False)
        )
        return np.concatenate(chunks, axis=0)

    def encode_frames(self, pixels: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """VAE-encode pixels [1, 3, F, H, W] in [-1, 1]: posterior sample (from ``generator``), cast to
        ``dtype``, normalized (SPEC §2.2)."""
        from .models.vae import sample_posterior

        with nvtx_range("vae encode"):
            mean, logvar = self.vae.encode(pixels.to(self.device, self.vae.dtype))
        z = sample_posterior(mean, logvar, generator).to(dtype)
        return self.vae.normalize_latents(z)

    def encode_text(self, req: Request) -> Any:
        do_cfg = req.do_cfg and req.task != "refine"  # refinement runs without CFG (SPEC §2.8)
        with nvtx_range("text encode"):
            embeds, mask = self.text_encoder.encode_for_cfg(req.prompt, req.negative_prompt, do_cfg)
        return self.dit.prepare_text(embeds.to(self.device), mask.to(self.device))
