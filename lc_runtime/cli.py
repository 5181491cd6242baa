"""``lc-runtime``: a thin CLI over the library (STYLE #13).

    lc-runtime run --task t2v --model tiny --prompt "a red fox" --out fox.mp4
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
    """Everything ``lc-runtime run`` needs; field names are the generate() argument names."""

    task: str
    out: Path
    model: str  # a checkpoint folder or "tiny"
    prompt: str | None = None
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    image: str | None = None
    video: str | None = None
    use_distill: bool = False
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 42
    num_frames: int = 93
    height: int | None = None
    width: int | None = None
    resolution: str = "480p"
    num_cond_frames: int = 13
    use_kv_cache: bool = True
    device: str | None = None
    dtype: str | None = None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=["t2v", "i2v", "vc"], help="what to generate")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path, help="a LongCat-Video checkpoint folder (Hugging Face layout)")
    src.add_argument("--model", choices=["tiny"], help="'tiny': a small random model built in-process")
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--negative-prompt", default=None, help="default: the original demos' negative prompt")
    p.add_argument("--image", help="conditioning image for i2v (PNG, JPEG, WebP)")
    p.add_argument("--video", help="conditioning video for vc (anything ffmpeg reads; resampled to 15 fps)")
    p.add_argument("--distill", action="store_true", help="cfg_step LoRA: 16 steps, guidance 1.0")
    p.add_argument("--steps", type=int, help="denoising steps (default 50, or 16 with --distill)")
    p.add_argument("--guidance", type=float, help="guidance scale (default 4.0, or 1.0 with --distill)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42, as the demos)")
    p.add_argument("--num-frames", type=int, default=93, help="frames to output, 4k+1 (default 93)")
    p.add_argument("--height", type=int, help="output height (multiple of 16); t2v default 480")
    p.add_argument("--width", type=int, help="output width (multiple of 16); t2v default 832")
    p.add_argument("--resolution", default="480p", choices=["480p", "720p"], help="i2v/vc size bucket")
    p.add_argument("--num-cond-frames", type=int, default=13, help="vc: conditioning frames (default 13)")
    p.add_argument("--no-kv-cache", action="store_true", help="vc: run the conditioning frames every step")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--out", type=Path, required=True, help="output .mp4 path")


def parse_generate_options(args: argparse.Namespace) -> GenerateOptions:
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither")
    negative = DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
    return GenerateOptions(
        task=args.task,
        out=args.out,
        model="tiny" if args.model else str(args.model_dir),
        prompt=args.prompt,
        negative_prompt=negative,
        image=args.image,
        video=args.video,
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
        device=args.device,
        dtype=args.dtype,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_generate

    opts = parse_generate_options(args)
    t0 = time.perf_counter()
    summary = run_generate(opts)
    total = time.perf_counter() - t0
    print(
        f"done: {summary['steps']} steps, {summary['per_step_s']:.3f} s/step, total {total:.1f} s, "
        f"peak memory {summary['peak_memory_gb']:.2f} GB ({summary['memory_kind']}), "
        f"{summary['frames']} frames {summary['width']}x{summary['height']} @ {summary['fps']} fps -> {opts.out}"
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
