"""Library functions behind the CLI (and the Triton model): run a request end to end and write the mp4."""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import time
from collections.abc import Iterator

import numpy as np
import torch

from .pipeline import Pipeline


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return dev


def resolve_dtype(name: str | None) -> torch.dtype | None:
    return {None: None, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in GB: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "CPU RSS"


def _resized(frames: Iterator[np.ndarray], size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Resize uint8 frames to (width, height) with PIL BICUBIC, as the demos do before saving."""
    from PIL import Image

    for f in frames:
        if size is None or (f.shape[1], f.shape[0]) == size:
            yield f
        else:
            yield np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC))


def assemble(task: str, frames: np.ndarray, *, image=None, video=None, num_cond_frames: int = 0, fps: int = 15):
    """What the demos save: i2v resized to the input image's size; vc = the input video (resampled to ``fps``)
    followed by the new frames resized to the source size; t2v / refine as generated."""
    from .media import load_image, load_video

    if task == "i2v":
        img = load_image(image)
        yield from _resized(iter(frames), (img.width, img.height))
    elif task == "vc":
        source, _ = load_video(video, target_fps=fps)
        size = (source[0].width, source[0].height)
        for f in source:
            yield np.asarray(f.convert("RGB"))
        yield from _resized(iter(frames[num_cond_frames:]), size)
    else:
        yield from frames


def write_frames(path, frames, fps: int, crf: int) -> tuple[int, tuple[int, int]]:
    from .media import VideoWriter

    shape = (0, 0)
    with VideoWriter(path, fps=fps, crf=crf) as writer:
        for f in frames:
            writer.write(f)
            shape = f.shape[:2]
        return writer.frames_written, shape


def _generate_kwargs(opts) -> dict:
    stage1_distill = opts.use_distill if opts.use_distill is not None else opts.refine
    return {
        "task": opts.task,
        "prompt": opts.prompt,
        "negative_prompt": opts.negative_prompt,
        "image": opts.image,
        "video": opts.video,
        "use_distill": stage1_distill,
        "num_inference_steps": opts.num_inference_steps,
        "guidance_scale": opts.guidance_scale,
        "seed": opts.seed,
        "num_frames": opts.num_frames,
        "height": opts.height,
        "width": opts.width,
        "resolution": opts.resolution,
        "num_cond_frames": opts.num_cond_frames,
        "use_kv_cache": opts.use_kv_cache,
    }


def _refine_kwargs(opts, stage1_frames=None) -> dict:
    """The refinement request; after stage 1 it conditions as the demos: i2v on the image (1 frame), vc on
    the source video at 30 fps (26 frames, 13 if spatial only)."""
    kw = {
        "task": "refine",
        "prompt": opts.prompt or "",
        "seed": opts.seed,
        "num_inference_steps": opts.refine_steps,
        "t_thresh": opts.t_thresh,
        "spatial_refine_only": opts.spatial_refine_only,
    }
    if opts.task == "refine":
        return kw | {
            "stage1_video": opts.video,
            "image": opts.image,
            "video": opts.cond_video,
            "num_cond_frames": opts.num_cond_frames,
            "height": opts.height,
            "width": opts.width,
        }
    kw["stage1_video"] = stage1_frames
    if opts.task == "i2v":
        kw["image"] = opts.image
    elif opts.task == "vc":
        from .media import load_video

        kw["video"], _ = load_video(opts.video, target_fps=30)
    return kw


def _run_long(pipe: Pipeline, opts) -> dict:
    from .long_video import LongVideoOptions, generate_long

    lopts = LongVideoOptions(
        prompts=opts.prompts,
        num_segments=opts.num_segments,
        negative_prompt=opts.negative_prompt,
        num_frames=opts.num_frames,
        num_cond_frames=13 if opts.num_cond_frames is None else opts.num_cond_frames,
        num_inference_steps=opts.num_inference_steps,
        guidance_scale=opts.guidance_scale,
        use_distill=bool(opts.use_distill),
        height=480 if opts.height is None else opts.height,
        width=832 if opts.width is None else opts.width,
        seed=opts.seed,
        refine=opts.refine,
        refine_steps=opts.refine_steps,
    )
    t0 = time.perf_counter()
    s = generate_long(pipe, lopts, opts.out)
    from .media import read_video_info

    n, h, w, _ = read_video_info(opts.out)
    return {"steps": 0, "denoise_s": time.perf_counter() - t0, "frames": n, "height": h, "width": w, "fps": s["fps"]}


def _run_single(pipe: Pipeline, opts) -> dict:
    stages = []
    if opts.task == "refine":
        stages.append(pipe.generate(**_refine_kwargs(opts)))
    else:
        stages.append(pipe.generate(**_generate_kwargs(opts)))
        if opts.refine:
            stage1 = opts.out.with_name(opts.out.stem + ".stage1.mp4")
            write_frames(stage1, assemble(opts.task, stages[0].frames, **_assembly(opts, 15)), 15, 18)
            stages.append(pipe.generate(**_refine_kwargs(opts, stages[0].frames)))
    out = stages[-1]
    steps = sum(s.timings["steps"] for s in stages)
    denoise_s = sum(s.timings["denoise_s"] for s in stages)
    crf = 10 if out.fps == 30 or opts.task == "refine" else 18
    frames = assemble(opts.task, out.frames, **_assembly(opts, out.fps, refined=opts.refine))
    n, (h, w) = write_frames(opts.out, frames, out.fps, crf)
    return {"steps": steps, "denoise_s": denoise_s, "frames": n, "height": h, "width": w, "fps": out.fps}


def _assembly(opts, fps: int, refined: bool = False) -> dict:
    ncf = opts.num_cond_frames
    if refined:
        ncf = 13 if opts.spatial_refine_only else 26
    return {"image": opts.image, "video": opts.video, "num_cond_frames": 13 if ncf is None else ncf, "fps": fps}


def run_generate(opts) -> dict:
    """Load the model, generate, write ``opts.out`` atomically; returns a summary dict."""
    # Fewer, growable allocator segments: the CUDA graph's pool, the DiT and the VAE decode reuse memory
    # instead of fragmenting it (set before the first CUDA allocation; a user's own setting wins).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    device = resolve_device(opts.device)
    if opts.nvtx:
        from .profiling import enable_nvtx

        enable_nvtx()
    if opts.out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must be an .mp4 path, got {opts.out}")
    if not opts.out.parent.exists():
        raise ValueError(f"output folder does not exist: {opts.out.parent}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    speed = {"compile": opts.compile, "kernels": opts.kernels, "attention": opts.attention}
    pipe = Pipeline.from_pretrained(opts.model, device=device, dtype=resolve_dtype(opts.dtype), **speed)
    if opts.engines:
        from .engines.runtime import engine_denoiser_for_pipeline

        model_dir = None if opts.model == "tiny" else opts.model
        pipe.denoiser = engine_denoiser_for_pipeline(pipe, opts.engines, model_dir=model_dir)
    summary = _run_long(pipe, opts) if opts.task == "long" else _run_single(pipe, opts)
    summary["per_step_s"] = summary["denoise_s"] / max(summary["steps"], 1)
    summary["peak_memory_gb"], summary["memory_kind"] = peak_memory(device)
    return summary


def environment_info() -> dict[str, str]:
    """Versions, devices and which optional accelerators are usable."""
    import lc_runtime

    def has(mod: str) -> bool:
        return importlib.util.find_spec(mod) is not None

    info = {
        "lc-runtime": lc_runtime.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda) if torch.cuda.is_available() else "not available",
        "devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "cpu only",
        "triton": "yes" if has("triton") and torch.cuda.is_available() else "no",
        "fa3": "yes"
        if has("flash_attn_interface") and torch.cuda.is_available()
        else "no (pip install lc-runtime[fa3])",
        "onnxruntime": "yes" if has("onnxruntime") else "no (pip install lc-runtime[onnx])",
        "tensorrt": "yes" if has("tensorrt") else "no (TensorRT is not installed)",
    }
    return info
