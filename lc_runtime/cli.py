"""``lc-runtime``: a thin CLI over the library (STYLE #13).

    lc-runtime run --task t2v --model tiny --prompt "a red fox" --out fox.mp4
    lc-runtime run --task i2v --model-dir weights/LongCat-Video --image girl.png --prompt ... --refine --out x.mp4
    lc-runtime run --task refine --model-dir ... --video stage1.mp4 --prompt ... --out refined.mp4
    lc-runtime run --task long --model-dir ... --prompt "p0" --prompt "p1" ... --num-segments 11 --out long.mp4
    lc-runtime build-engines --model-dir ... --backend aoti --profile 480p-93f --out engines/480p
    lc-runtime run --task t2v --model-dir ... --engines engines/480p --prompt ... --out x.mp4
    lc-runtime info

Each subcommand parses into a frozen options dataclass and calls one library function; any user error
(bad input, bad model folder, bad size) prints ``error: ...`` and exits with status 2, leaving no output file.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .tasks import DEFAULT_NEGATIVE_PROMPT


@dataclass(frozen=True, kw_only=True)
class GenerateOptions:
    """Everything ``lc-runtime run`` needs; field names follow the generate() argument names."""

    task: str
    out: Path
    model: str  # a checkpoint folder or "tiny"
    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    image: str | None = None
    video: str | None = None  # vc: conditioning video; refine: the stage-1 video
    cond_video: str | None = None  # refine: video to condition on
    use_distill: bool | None = None  # None: base model, or distilled stage 1 when refining (as the demos)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 42
    num_frames: int = 93
    height: int | None = None
    width: int | None = None
    resolution: str = "480p"
    num_cond_frames: int | None = None
    use_kv_cache: bool = True
    refine: bool = False
    refine_steps: int = 50
    t_thresh: float = 0.5
    spatial_refine_only: bool = False
    num_segments: int = 11
    device: str | None = None
    dtype: str | None = None
    compile: str = "auto"
    kernels: str = "auto"
    attention: str | None = None
    nvtx: bool = False
    engines: tuple[Path, ...] = ()

    @property
    def prompt(self) -> str | None:
        return self.prompts[0] if self.prompts else None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=["t2v", "i2v", "vc", "refine", "long"], help="what to generate")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path, help="a LongCat-Video checkpoint folder (Hugging Face layout)")
    src.add_argument("--model", choices=["tiny"], help="'tiny': a small random model built in-process")
    p.add_argument("--prompt", action="append", help="the text prompt (long: repeat it, one per segment)")
    p.add_argument("--negative-prompt", default=None, help="default: the original demos' negative prompt")
    p.add_argument("--image", help="i2v / refine: conditioning image (PNG, JPEG, WebP)")
    p.add_argument("--video", help="vc: video to continue (resampled to 15 fps); refine: the stage-1 video")
    p.add_argument("--cond-video", help="refine: video whose last --num-cond-frames frames condition it")
    distill = p.add_mutually_exclusive_group()
    distill.add_argument("--distill", dest="distill", action="store_true", default=None, help="cfg_step LoRA")
    distill.add_argument("--no-distill", dest="distill", action="store_false", help="base model for stage 1")
    p.add_argument("--steps", type=int, help="denoising steps (default 50, or 16 with --distill)")
    p.add_argument("--guidance", type=float, help="guidance scale (default 4.0, or 1.0 with --distill)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42, as the demos)")
    p.add_argument("--num-frames", type=int, default=93, help="frames per stage-1 video/segment, 4k+1 (93)")
    p.add_argument("--height", type=int, help="output height (multiple of 16); t2v default 480")
    p.add_argument("--width", type=int, help="output width (multiple of 16); t2v default 832")
    p.add_argument("--resolution", default="480p", choices=["480p", "720p"], help="i2v/vc size bucket")
    p.add_argument("--num-cond-frames", type=int, help="vc: 13; refine: 1 with --image, 26 with --cond-video")
    p.add_argument("--no-kv-cache", action="store_true", help="vc: run the conditioning frames every step")
    p.add_argument("--refine", action="store_true", help="t2v/i2v/vc/long: then refine to 720p, 30 fps")
    p.add_argument("--refine-steps", type=int, default=50, help="refinement schedule length (default 50 -> 5 steps)")
    p.add_argument("--t-thresh", type=float, default=0.5, help="refinement start noise level (default 0.5)")
    p.add_argument("--spatial-refine-only", action="store_true", help="refine: keep the frame rate (15 fps)")
    p.add_argument("--num-segments", type=int, default=11, help="long: continuation segments (default 11)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", default="auto", choices=["auto", "graph", "none"], help="DiT step as a CUDA graph")
    p.add_argument("--kernels", default="auto", choices=["auto", "triton", "torch"], help="fused Triton kernels")
    p.add_argument(
        "--attention", choices=["fa3", "cudnn", "flash", "efficient", "sdpa", "math"], help="default: best available"
    )
    p.add_argument("--nvtx", action="store_true", help="NVTX ranges (text, steps, blocks, VAE) for nsys profile")
    p.add_argument(
        "--engines",
        type=Path,
        action="append",
        help="run the DiT steps from engines built by `lc-runtime build-engines`; repeat it to give several folders "
        "(e.g. a 480p-93f one and a 720p-refine one for --refine): each step runs on the first that fits",
    )
    p.add_argument("--out", type=Path, required=True, help="output .mp4 path")


def parse_generate_options(args: argparse.Namespace) -> GenerateOptions:
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither")
    prompts = tuple(args.prompt or ())
    if len(prompts) > 1 and args.task != "long":
        raise ValueError("--prompt may be repeated only for --task long (one prompt per segment)")
    if args.task not in ("refine",) and not prompts:
        raise ValueError(f"--task {args.task} needs --prompt")
    if args.cond_video and args.task != "refine":
        raise ValueError("--cond-video is only for --task refine (--video is the video to continue)")
    negative = DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
    return GenerateOptions(
        task=args.task,
        out=args.out,
        model="tiny" if args.model else str(args.model_dir),
        prompts=prompts,
        negative_prompt=negative,
        image=args.image,
        video=args.video,
        cond_video=args.cond_video,
        use_distill=args.distill,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        resolution=args.resolution,
        num_cond_frames=args.num_cond_frames,
        use_kv_cache=not args.no_kv_cache,
        refine=args.refine,
        refine_steps=args.refine_steps,
        t_thresh=args.t_thresh,
        spatial_refine_only=args.spatial_refine_only,
        num_segments=args.num_segments,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        kernels=args.kernels,
        attention=args.attention,
        nvtx=args.nvtx,
        engines=tuple(args.engines or ()),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_generate

    opts = parse_generate_options(args)
    t0 = time.perf_counter()
    s = run_generate(opts)
    total = time.perf_counter() - t0
    print(
        f"done: {s['steps']} steps, {s['per_step_s']:.3f} s/step, total {total:.1f} s, "
        f"peak memory {s['peak_memory_gb']:.2f} GB ({s['memory_kind']}), "
        f"{s['frames']} frames {s['width']}x{s['height']} @ {s['fps']} fps -> {opts.out}"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .runner import environment_info

    for k, v in environment_info().items():
        print(f"{k:>14}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc-runtime", description="LongCat-Video inference runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate a video")
    _add_run_args(run)
    run.set_defaults(func=_cmd_run)
    info = sub.add_parser("info", help="versions, devices and usable accelerators")
    info.set_defaults(func=_cmd_info)
    from .engines.cli import add_build_engines_parser

    add_build_engines_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError
    from .weights import CheckpointError

    try:
        return args.func(args)
    except (ValueError, CheckpointError, ConfigError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def option_names() -> list[str]:
    return [f.name for f in fields(GenerateOptions)]


if __name__ == "__main__":
    sys.exit(main())
