"""The CLI on the tiny model: every task end to end (mp4 read back), entry points, frozen flags, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lc_runtime.cli import build_parser, main
from lc_runtime.media import read_video_info, write_video

TINY_ARGS = ["--model", "tiny", "--height", "64", "--width", "64", "--num-frames", "9", "--steps", "2"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(d / "img.png")
    write_video(d / "clip.mp4", rng.integers(0, 255, (20, 48, 64, 3), dtype=np.uint8), fps=30)
    write_video(d / "short.mp4", rng.integers(0, 255, (6, 48, 64, 3), dtype=np.uint8), fps=15)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage garbage")
    return d


def run(*args) -> int:
    return main(["run", *map(str, args)])


def test_entry_points_help():
    for argv in (["--help"], ["run", "--help"], ["info", "--help"], ["build-engines", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = subprocess.run([sys.executable, "-m", "lc_runtime.cli", "info"], capture_output=True, text=True, check=True)
    assert "torch" in out.stdout and "onnxruntime" in out.stdout


def test_console_script_installed():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "lc-runtime"]
    assert ep.load() is main


FROZEN_RUN_FLAGS = {
    "--task", "--model-dir", "--model", "--prompt", "--negative-prompt", "--image", "--video", "--cond-video",
    "--distill", "--no-distill", "--steps", "--guidance", "--seed", "--num-frames", "--height", "--width",
    "--resolution", "--num-cond-frames", "--no-kv-cache", "--refine", "--refine-steps", "--t-thresh",
    "--spatial-refine-only", "--num-segments", "--device", "--dtype", "--out", "--help", "-h",
    "--compile", "--kernels", "--attention", "--nvtx", "--engines",
}  # fmt: skip


def test_run_flags_are_frozen():
    """New flags are a conscious API change: add them here in the same commit."""
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {s for a in run_parser._actions for s in a.option_strings}
    assert flags == FROZEN_RUN_FLAGS, f"added {flags - FROZEN_RUN_FLAGS}, removed {FROZEN_RUN_FLAGS - flags}"


def test_t2v(tmp_path, capsys):
    out = tmp_path / "t2v.mp4"
    assert run("--task", "t2v", "--prompt", "a fox", *TINY_ARGS, "--out", out) == 0
    assert read_video_info(out) == (9, 64, 64, 15.0)
    assert "s/step" in capsys.readouterr().out


def test_t2v_distill_and_refine(tmp_path, monkeypatch):
    import lc_runtime.buckets

    asked = []

    def small_bucket(h, w, resolution, sf):  # the real 720p bucket (960x960) is too slow for a CPU test
        asked.append((h, w, resolution, sf))
        return 64, 64

    monkeypatch.setattr(lc_runtime.buckets, "get_condition_shape", small_bucket)
    out = tmp_path / "r.mp4"
    assert run("--task", "t2v", "--prompt", "a fox", *TINY_ARGS, "--refine", "--out", out) == 0
    assert asked == [(64, 64, "720p", 64)]
    assert read_video_info(out) == (18, 64, 64, 30.0)
    assert read_video_info(tmp_path / "r.stage1.mp4")[:1] == (9,)


def test_i2v_resized_to_input(tmp_path, media):
    out = tmp_path / "i2v.mp4"
    assert run("--task", "i2v", "--prompt", "a boat", "--image", media / "img.png", *TINY_ARGS, "--out", out) == 0
    assert read_video_info(out) == (9, 48, 80, 15.0)


def test_vc_input_then_new_frames(tmp_path, media):
    out = tmp_path / "vc.mp4"
    args = ["--task", "vc", "--prompt", "waves", "--video", media / "clip.mp4", "--num-cond-frames", "5"]
    assert run(*args, *TINY_ARGS, "--out", out) == 0
    # 20 frames at 30 fps -> 10 at 15 fps, then the 9 - 5 new frames, at the source size
    assert read_video_info(out) == (10 + 4, 48, 64, 15.0)


def test_refine_existing_video(tmp_path, media):
    stage1 = tmp_path / "s1.mp4"
    assert run("--task", "t2v", "--prompt", "a fox", *TINY_ARGS, "--out", stage1) == 0
    out = tmp_path / "refined.mp4"
    args = ["--task", "refine", "--model", "tiny", "--video", stage1, "--height", "64", "--width", "64"]
    assert run(*args, "--prompt", "a fox", "--out", out) == 0
    assert read_video_info(out) == (18, 64, 64, 30.0)


def test_long_three_segments(tmp_path):
    out = tmp_path / "long.mp4"
    args = ["--task", "long", "--prompt", "a", "--prompt", "b", "--prompt", "c", "--num-segments", "2"]
    assert run(*args, *TINY_ARGS, "--num-cond-frames", "5", "--out", out) == 0
    assert read_video_info(out) == (9 + 2 * 4, 64, 64, 15.0)
    assert not (tmp_path / "long.mp4.parts").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "i2v", "--prompt", "x", "--image", "{d}/missing.png"], "image file not found"),
        (["--task", "i2v", "--prompt", "x", "--image", "{d}/corrupt.png"], "cannot read image"),
        (["--task", "vc", "--prompt", "x", "--video", "{d}/corrupt.mp4"], "cannot decode video"),
        (["--task", "vc", "--prompt", "x", "--video", "{d}/short.mp4", "--num-cond-frames", "13"], "at least"),
        (["--task", "t2v", "--prompt", "x", "--height", "72", "--width", "64"], "multiples of 16"),
        (["--task", "t2v"], "needs --prompt"),
        (["--task", "i2v", "--prompt", "x"], "needs an image"),
    ],
)
def test_bad_input(tmp_path, media, capsys, args, message):
    out = tmp_path / "bad.mp4"
    args = [a.format(d=media) for a in args]
    size = [] if "--height" in args else ["--height", "64", "--width", "64"]
    assert run(*args, "--model", "tiny", *size, "--num-frames", "9", "--steps", "1", "--out", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir()), "no output file, no temporary left behind"


def test_bad_model_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run("--task", "t2v", "--prompt", "x", "--model-dir", tmp_path / "empty", "--out", tmp_path / "o.mp4") == 2
    assert "not a LongCat-Video checkpoint folder" in capsys.readouterr().err
    assert run("--task", "t2v", "--prompt", "x", "--model-dir", tmp_path / "nope", "--out", tmp_path / "o.mp4") == 2
    assert "model folder not found" in capsys.readouterr().err


def test_unknown_task_and_frame_rounding(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run("--task", "nope", "--model", "tiny", "--out", tmp_path / "x.mp4")
    assert e.value.code == 2
    out = tmp_path / "r.mp4"
    with pytest.warns(UserWarning, match="rounded down to 9"):
        assert (
            run("--task", "t2v", "--prompt", "x", *TINY_ARGS[:6], "--num-frames", "11", "--steps", "1", "--out", out)
            == 0
        )
    assert read_video_info(out)[0] == 9


def test_run_from_engines(tmp_path, capsys):
    """build-engines (ONNX, the DiT graphs, a small profile), then run --engines; the engine-driven pipeline's
    latents equal the eager ones (fp32: 1e-4 relative after the steps, as the pipeline goldens); a request
    of another shape than the engine's profile fails clearly."""
    import torch
    from conftest import TINY, assert_close

    from lc_runtime.engines.runtime import engines_for_pipeline
    from lc_runtime.pipeline import Pipeline

    eng = tmp_path / "eng"
    build = ["build-engines", "--model-dir", TINY, "--backend", "onnx", "--profile", "32x48x9", "--out", eng]
    assert main([*map(str, build), "--components", "dit", "--batch", "2", "--device", "cpu"]) == 0
    common = ["--task", "t2v", "--model-dir", TINY, "--prompt", "a fox", "--height", "32", "--width", "48"]
    common += ["--num-frames", "9", "--steps", "2"]
    assert run(*common, "--engines", eng, "--out", tmp_path / "e.mp4") == 0
    assert run(*common, "--out", tmp_path / "ref.mp4") == 0
    assert read_video_info(tmp_path / "e.mp4") == read_video_info(tmp_path / "ref.mp4") == (9, 32, 48, 15.0)
    pipe = Pipeline.from_pretrained(TINY, dtype=torch.float32)
    kw = {"task": "t2v", "prompt": "a fox", "height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 2}
    ref = pipe.generate(**kw, output_type="latent").latents
    pipe.denoiser = engines_for_pipeline(pipe, eng, model_dir=TINY).denoiser()
    got = pipe.generate(**kw, output_type="latent").latents
    assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()), what="engine vs eager")
    bad = ["--task", "t2v", "--model-dir", TINY, "--prompt", "a", "--height", "64", "--width", "64"]
    assert run(*bad, "--num-frames", "9", "--steps", "1", "--engines", eng, "--out", tmp_path / "bad.mp4") == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()


def test_distill_and_refine_from_two_engine_folders(tmp_path, monkeypatch):
    """``run --refine --engines A --engines B``: the distilled stage 1 (batch 1, cfg_step LoRA merged into the
    weights the aoti package binds) runs on A, the refinement (its LoRA, 8 latents) on B; a step neither fits
    would fail (tests/engines)."""
    from conftest import TINY

    import lc_runtime.buckets

    monkeypatch.setattr(lc_runtime.buckets, "get_condition_shape", lambda h, w, resolution, sf: (64, 64))
    folders = {"s1": "64x64x9", "refine": "64x64x29"}  # refinement: 18 frames padded to 8 latents
    for name, profile in folders.items():
        build = ["build-engines", "--model-dir", TINY, "--backend", "aoti", "--profile", profile, "--batch", "1"]
        build += ["--cond-latents", "0", "--components", "dit", "--graphs", "dit_forward_nc0", "--device", "cpu"]
        assert main([*map(str, build), "--no-bsa", "--quiet", "--out", str(tmp_path / name)]) == 0
    args = ["--task", "t2v", "--model-dir", TINY, "--prompt", "a fox", "--height", "64", "--width", "64"]
    args += ["--num-frames", "9", "--steps", "2", "--refine", "--device", "cpu"]
    out = tmp_path / "r.mp4"
    assert run(*args, "--engines", tmp_path / "s1", "--engines", tmp_path / "refine", "--out", out) == 0
    assert read_video_info(out) == (18, 64, 64, 30.0)
    assert run(*args, "--engines", tmp_path / "s1", "--out", tmp_path / "only_s1.mp4") == 2  # no engine refines
    assert not (tmp_path / "only_s1.mp4").exists()
