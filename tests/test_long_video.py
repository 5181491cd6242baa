"""Long video: stitching parity with the original demo's stage 1 (golden ``pipe_long``), the mp4, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY
from test_pipeline_golden import check_frames

from lc_runtime.long_video import LongVideoOptions, Parts, generate_long, stage1_segments
from lc_runtime.media import read_video_info
from lc_runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(TINY, device="cpu", dtype=torch.float32)


def golden_options(g) -> LongVideoOptions:
    t2v, vc = g.meta["t2v_call"], g.meta["vc_call"]
    return LongVideoOptions(
        prompts=(g.meta["prompt"],),
        num_segments=len(g.meta["segments"]) - 1,
        negative_prompt=g.meta["negative_prompt"],
        num_frames=t2v["num_frames"],
        num_cond_frames=vc["num_cond_frames"],
        num_inference_steps=t2v["num_inference_steps"],
        guidance_scale=t2v["guidance_scale"],
        height=t2v["height"],
        width=t2v["width"],
        seed=g.meta["generator"]["seed"],
    )


def test_long_video_stitching_matches_golden(pipe, golden, tmp_path):
    g = golden("pipe_long")
    opts = golden_options(g)
    parts = Parts(tmp_path / "long.mp4", opts)
    kept = list(stage1_segments(pipe, opts, parts, pipe.generator(opts.seed)))
    ncf = opts.num_cond_frames
    for i, k in enumerate(kept):
        ref = g[f"seg{i}.frames_uint8"]
        check_frames(np.asarray(k), ref if i == 0 else ref[ncf:], f"segment {i}")
    check_frames(np.concatenate(kept), g["all_frames_uint8"], "all frames")


def test_long_video_mp4_and_resume(pipe, golden, tmp_path, monkeypatch):
    """An interrupted run, rerun with the same arguments, resumes after its last finished segment and feeds the
    encoder exactly the frames of an uninterrupted run (compared before H.264, which is lossy)."""
    import lc_runtime.media

    written: dict[str, list[np.ndarray]] = {}
    real_write = lc_runtime.media.VideoWriter.write

    def recording_write(self, frames):
        written.setdefault(self.path.name, []).append(np.array(frames))
        return real_write(self, frames)

    monkeypatch.setattr(lc_runtime.media.VideoWriter, "write", recording_write)
    opts = golden_options(golden("pipe_long"))
    out = tmp_path / "long.mp4"
    reference = generate_long(pipe, opts, tmp_path / "ref.mp4", progress=False)
    assert reference["frames"] == 13 + 2 * 8
    assert read_video_info(tmp_path / "ref.mp4")[:3] == (29, 32, 48)
    assert not (tmp_path / "ref.mp4.parts").exists()

    calls = {"n": 0}
    real_run = Pipeline.run

    def failing_run(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")
        return real_run(self, *a, **k)

    monkeypatch.setattr(Pipeline, "run", failing_run)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_long(pipe, opts, out, progress=False)
    assert not out.exists(), "no half-written mp4"
    assert (tmp_path / "long.mp4.parts" / "seg0001.npy").exists()
    monkeypatch.setattr(Pipeline, "run", real_run)
    written.pop("long.mp4")  # what the interrupted run had streamed (then discarded)
    resumed = generate_long(pipe, opts, out, progress=False)
    assert resumed["frames"] == reference["frames"] and read_video_info(out)[0] == 29
    a, b = np.concatenate(written["long.mp4"]), np.concatenate(written["ref.mp4"])
    assert np.array_equal(a, b), "resume must give the frames of an uninterrupted run"


def test_long_video_options_errors():
    with pytest.raises(ValueError, match="one per segment"):
        LongVideoOptions(prompts=("a", "b"), num_segments=3)
    with pytest.raises(ValueError, match="num_cond_frames"):
        LongVideoOptions(prompts=("a",), num_cond_frames=93)
