"""Long and interactive video (SPEC §4, run_demo_long_video.py / run_demo_interactive_video.py).

Stage 1: a t2v segment, then N video-continuation segments, each conditioned on the last ``num_cond_frames``
frames that exist so far, keeping only its new frames; one generator is reused across segments, as the demo.
Stage 2 (optional): refinement windows ``frames[80k : 80k + 93]``, prompt "", the first unconditioned and each
later one conditioned on the last 26 frames of the previous refined window, keeping only its new frames.

Frames stream into the mp4 as segments finish, so memory stays bounded whatever the length. Each finished
segment is also kept in a sidecar folder ``<out>.parts/`` (uint8 .npy frames + the generator state + a manifest
of the arguments); rerunning with the same arguments and output path resumes after the last finished segment
and gives the same video as an uninterrupted run. The sidecar is removed once the mp4 is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .pipeline import Pipeline


@dataclass(frozen=True, kw_only=True)
class LongVideoOptions:
    """One long / interactive video. ``prompts``: one prompt for every segment, or one per segment
    (num_segments + 1 of them: the t2v segment and each continuation)."""

    prompts: tuple[str, ...]
    num_segments: int = 11
    negative_prompt: str | None = None
    num_frames: int = 93
    num_cond_frames: int = 13
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    use_distill: bool = False
    height: int = 480
    width: int = 832
    seed: int = 42
    refine: bool = False
    refine_steps: int = 50
    refine_cond_frames: int = 26

    def __post_init__(self):
        if self.num_segments < 0:
            raise ValueError(f"num_segments must be >= 0, got {self.num_segments}")
        if len(self.prompts) not in (1, self.num_segments + 1):
            raise ValueError(
                f"give one prompt, or one per segment ({self.num_segments + 1} = t2v + {self.num_segments} "
                f"continuations), got {len(self.prompts)}"
            )
        if not 0 < self.num_cond_frames < self.num_frames:
            raise ValueError(f"num_cond_frames must be in [1, num_frames), got {self.num_cond_frames}")

    def prompt(self, segment: int) -> str:
        return self.prompts[0] if len(self.prompts) == 1 else self.prompts[segment]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class Parts:
    """The resumable sidecar of one output: finished segments' frames and the generator state after each."""

    def __init__(self, out: Path, opts: LongVideoOptions):
        self.dir = Path(str(out) + ".parts")
        self.digest = opts.digest()
        manifest = self.dir / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("digest") != self.digest:
            shutil.rmtree(self.dir)  # an interrupted run with other arguments: start over
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"digest": self.digest, "options": asdict(opts)}, indent=1))

    def path(self, stage: str, i: int) -> Path:
        return self.dir / f"{stage}{i:04d}.npy"

    def done(self, stage: str, i: int) -> bool:
        return self.path(stage, i).is_file() and self.path(stage + "_rng", i).is_file()

    def save(self, stage: str, i: int, frames: np.ndarray, gen: torch.Generator) -> None:
        for name, arr in ((stage, frames), (stage + "_rng", gen.get_state().numpy())):
            tmp = self.path(name, i).with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(self.path(name, i))  # atomic: a segment is either complete on disk or absent

    def load(self, stage: str, i: int, gen: torch.Generator | None = None) -> np.ndarray:
        if gen is not None:
            gen.set_state(torch.from_numpy(np.load(self.path(stage + "_rng", i))))
        return np.load(self.path(stage, i), mmap_mode="r")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _pil(frames: np.ndarray) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(np.ascontiguousarray(f)) for f in frames]


def stage1_segments(pipe: Pipeline, opts: LongVideoOptions, parts: Parts, gen: torch.Generator) -> Iterator[np.ndarray]:
    """Yield each segment's kept frames (uint8 [F, H, W, 3]): all of segment 0, then each continuation's new
    frames; finished segments are read back from ``parts`` (with the generator state after them)."""
    tail = None  # the last num_cond_frames frames so far
    common = {
        "negative_prompt": opts.negative_prompt,
        "num_frames": opts.num_frames,
        "num_inference_steps": opts.num_inference_steps,
        "guidance_scale": opts.guidance_scale,
        "use_distill": opts.use_distill,
        "height": opts.height,
        "width": opts.width,
    }
    for i in range(opts.num_segments + 1):
        if parts.done("seg", i):
            kept = parts.load("seg", i, gen)
        else:
            if i == 0:
                req = pipe.request(task="t2v", prompt=opts.prompt(0), **common)
            else:
                req = pipe.request(
                    task="vc", prompt=opts.prompt(i), video=_pil(tail), num_cond_frames=opts.num_cond_frames, **common
                )
            frames = pipe.run(req, generator=gen, progress=False).frames
            kept = frames if i == 0 else frames[opts.num_cond_frames :]
            parts.save("seg", i, kept, gen)
        prev = kept if tail is None else np.concatenate([tail, kept])
        tail = np.array(prev[-opts.num_cond_frames :])
        yield kept


def refine_windows(pipe: Pipeline, opts: LongVideoOptions, parts: Parts, gen: torch.Generator) -> Iterator[np.ndarray]:
    """Yield each refinement window's kept frames (stage-1 windows of num_frames, hop num_frames - cond)."""
    segs = [parts.load("seg", i) for i in range(opts.num_segments + 1)]  # memory-mapped, read per window
    starts = np.cumsum([0] + [len(s) for s in segs])

    def frames(a: int, b: int) -> np.ndarray:
        pieces = [segs[i][max(a - s0, 0) : max(b - s0, 0)] for i, s0 in enumerate(starts[:-1])]
        return np.concatenate([p for p in pieces if len(p)])

    hop = opts.num_frames - opts.num_cond_frames
    prev = None
    for k in range(opts.num_segments + 1):
        if parts.done("ref", k):
            kept = parts.load("ref", k, gen)
            prev = kept
            yield kept
            continue
        window = frames(k * hop, k * hop + opts.num_frames)
        kwargs = {"stage1_video": _pil(window), "num_inference_steps": opts.refine_steps}
        if prev is not None:
            kwargs |= {"video": _pil(prev[-opts.refine_cond_frames :]), "num_cond_frames": opts.refine_cond_frames}
        out = pipe.run(pipe.request(task="refine", prompt="", **kwargs), generator=gen, progress=False)
        kept = out.frames if prev is None else out.frames[opts.refine_cond_frames :]
        parts.save("ref", k, kept, gen)
        prev = kept
        yield kept


def generate_long(pipe: Pipeline, opts: LongVideoOptions, out: str | Path, progress: bool = True) -> dict:
    """Write the long video to ``out`` (mp4, atomically), resuming an interrupted run; returns a summary."""
    from tqdm.auto import tqdm

    from .media import VideoWriter

    out = Path(out)
    parts = Parts(out, opts)
    gen = pipe.generator(opts.seed)
    n = opts.num_segments + 1
    stage1_out = out.with_name(out.stem + ".stage1.mp4") if opts.refine else out
    with VideoWriter(stage1_out, fps=15) as writer:
        for kept in tqdm(stage1_segments(pipe, opts, parts, gen), total=n, desc="segments", disable=not progress):
            writer.write(np.asarray(kept))
        total = writer.frames_written
    summary = {"stage1_frames": total, "stage1_path": str(stage1_out), "fps": 15}
    if opts.refine:
        with VideoWriter(out, fps=30, crf=10) as writer:
            for kept in tqdm(refine_windows(pipe, opts, parts, gen), total=n, desc="refine", disable=not progress):
                writer.write(np.asarray(kept))
            summary |= {"frames": writer.frames_written, "fps": 30, "path": str(out)}
    else:
        summary |= {"frames": total, "path": str(out)}
    parts.remove()
    return summary
