"""``lc-runtime build-engines``: the subcommand's parser, its frozen options and the call into :func:`build_engines`.

    lc-runtime build-engines --model-dir DIR --backend aoti|onnx|tensorrt --profile 480p-93f --out engines/NAME

``lc_runtime/cli.py`` wires it in with ``add_build_engines_parser(sub)``. Errors are raised (ProfileError,
CheckpointError, EngineError: all ``ValueError``/``CheckpointError``), which the main CLI prints as
``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..export.profiles import PROFILES
from ..export.specs import COMPONENTS
from .manifest import BACKENDS


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Everything ``build-engines`` needs; field names are :func:`build_engines`'s argument names."""

    model_dir: Path
    backend: str
    profile: str
    out: Path
    batch: int | None = None
    bsa: bool | None = None
    cond_latents: tuple[int, ...] | None = None
    components: tuple[str, ...] | None = None
    graphs: tuple[str, ...] | None = None
    device: str | None = None
    dtype: str | None = None
    overwrite: bool = False
    attention: str | None = None
    progress: bool = True


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_build_engines_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``build-engines`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "build-engines",
        help="build compiled engines (AOTInductor, ONNX, TensorRT) for a checkpoint and a shape profile",
        description="Build compiled engines for a LongCat-Video checkpoint at static shapes; "
        "`lc-runtime run --engines DIR` uses them.",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a LongCat-Video checkpoint folder")
    p.add_argument("--backend", required=True, choices=BACKENDS, help="aoti (default choice on GPU), onnx, tensorrt")
    p.add_argument("--profile", required=True, help=f"shape profile: {', '.join(PROFILES)}, or HxWxF (e.g. 480x832x93)")
    p.add_argument("--out", type=Path, required=True, help="engine folder to create (e.g. engines/480p)")
    p.add_argument("--batch", type=int, choices=[1, 2], help="DiT batch: 2 with CFG (default), 1 without (distill)")
    p.add_argument(
        "--bsa",
        action=argparse.BooleanOptionalAction,
        help="block-sparse attention inside the DiT forward graphs, as refinement runs (aoti only; default: on for "
        "720p-refine, off otherwise)",
    )
    p.add_argument(
        "--cond-latents",
        type=_ints,
        help="conditioned forward graphs to build, as conditioning latent counts (e.g. 0,8; default: the profile's)",
    )
    p.add_argument("--components", type=_csv, help=f"subset of {','.join(COMPONENTS)} (default: all)")
    p.add_argument("--graphs", type=_csv, help="subset of graph names, e.g. dit_forward_nc0,dit_decode")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available; tensorrt needs cuda)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default bf16 on CUDA, fp32 on the CPU")
    p.add_argument(
        "--attention",
        help="attention backend traced into aoti graphs (default: the fast path's: FA3 on Hopper with fa3-fwd, "
        "else cuDNN, else flash)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    p.set_defaults(func=_cmd_build_engines)
    return p


def parse_build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        model_dir=args.model_dir,
        backend=args.backend,
        profile=args.profile,
        out=args.out,
        batch=args.batch,
        bsa=args.bsa,
        cond_latents=args.cond_latents,
        components=args.components,
        graphs=args.graphs,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        attention=args.attention,
        progress=not args.quiet,
    )


def _cmd_build_engines(args: argparse.Namespace) -> int:
    import torch

    from .build import build_engines

    opts = parse_build_options(args)
    summary = build_engines(
        opts.model_dir,
        opts.backend,
        opts.profile,
        opts.out,
        progress=opts.progress,
        components=opts.components,
        graphs=opts.graphs,
        device=opts.device,
        dtype={None: None, "bf16": torch.bfloat16, "fp32": torch.float32}[opts.dtype],
        batch=opts.batch,
        bsa=opts.bsa,
        cond_latents=opts.cond_latents,
        overwrite=opts.overwrite,
        attention=opts.attention,
    )
    if not opts.progress:
        print(summary.table())
    return 0
