"""Library functions behind the CLI (and the Triton model): run a request end to end and write the mp4."""

from __future__ import annotations

import importlib.util
import platform
import resource
from collections.abc import Iterator

import numpy as np
import torch

from .pipeline import Output, Pipeline


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


def output_frames(opts, out: Output) -> Iterator[np.ndarray]:
    """What the demos save: i2v resized to the input image's size; vc = the input video (at 15 fps) followed
    by the new frames resized to the source size; t2v as generated."""
    from .media import load_image, load_video

    frames = iter(out.frames)
    if opts.task == "i2v":
        img = load_image(opts.image)
        yield from _resized(frames, (img.width, img.height))
    elif opts.task == "vc":
        source, _ = load_video(opts.video)
        size = (source[0].width, source[0].height)
        for f in source:
            yield np.asarray(f.convert("RGB"))
        yield from _resized(iter(out.frames[opts.num_cond_frames :]), size)
    else:
        yield from frames


def run_generate(opts) -> dict:
    """Load the model, generate, write ``opts.out`` atomically; returns a summary dict."""
    from .media import VideoWriter

    device = resolve_device(opts.device)
    if opts.out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must be an .mp4 path, got {opts.out}")
    if not opts.out.parent.exists():
        raise ValueError(f"output folder does not exist: {opts.out.parent}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe = Pipeline.from_pretrained(opts.model, device=device, dtype=resolve_dtype(opts.dtype))
    kwargs = {
        "task": opts.task,
        "prompt": opts.prompt,
        "negative_prompt": opts.negative_prompt,
        "image": opts.image,
        "video": opts.video,
        "use_distill": opts.use_distill,
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
    out = pipe.generate(**kwargs)
    n = 0
    with VideoWriter(opts.out, fps=out.fps, crf=18) as writer:
        for frame in output_frames(opts, out):
            writer.write(frame)
            n += 1
    mem, kind = peak_memory(device)
    return {
        "steps": out.timings["steps"],
        "per_step_s": out.timings["denoise_s"] / max(out.timings["steps"], 1),
        "peak_memory_gb": mem,
        "memory_kind": kind,
        "frames": n,
        "height": frame.shape[0],
        "width": frame.shape[1],
        "fps": out.fps,
    }


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
