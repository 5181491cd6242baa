"""Image/video I/O: round trips, atomic writes, resampling, preprocessing numerics and error messages."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from lc_runtime.media import (
    MediaError,
    VideoWriter,
    frame_stride,
    load_image,
    load_video,
    preprocess_frames,
    read_video_info,
    to_uint8_frames,
    write_video,
)


def _ramp_frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth frames (x/y gradients plus a per-frame brightness) that H.264 reproduces closely. [n, h, w, 3] uint8."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 200 // max(w - 1, 1)) + 2 * i
        frames[i, ..., 1] = (y * 200 // max(h - 1, 1)) + 2 * i
        frames[i, ..., 2] = 40 + 15 * i
    return frames


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- writing
def test_round_trip_count_size_fps_and_content(tmp_path):
    frames = _ramp_frames(12, 48, 64)
    path = tmp_path / "out.mp4"
    write_video(path, frames, fps=15, crf=10)
    assert read_video_info(path) == (12, 48, 64, 15.0)
    decoded, fps = load_video(path, target_fps=None)
    assert fps == 15.0 and len(decoded) == 12
    err = np.abs(np.stack([np.asarray(f) for f in decoded]).astype(int) - frames.astype(int))
    assert err.mean() < 2.0, err.mean()  # lossy codec with 4:2:0 chroma: small, not zero
    assert _files(tmp_path) == ["out.mp4"]  # no temporary left behind


def test_streaming_batches_and_single_frames(tmp_path):
    frames = _ramp_frames(7, 32, 32)
    path = tmp_path / "s.mp4"
    with VideoWriter(path, fps=30) as w:
        w.write(frames[:3])  # a batch [F, H, W, 3]
        w.write(torch.from_numpy(frames[3]))  # one torch frame [H, W, 3]
        w.write(frames[4:])
        assert not path.exists()  # nothing at the target before a clean close
    assert w.frames_written == 7
    assert read_video_info(path) == (7, 32, 32, 30.0)


def test_odd_sizes_are_edge_padded_to_even(tmp_path):
    frames = _ramp_frames(3, 33, 47)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, fps=15, crf=10)
    assert read_video_info(path) == (3, 34, 48, 15.0)
    decoded = np.asarray(load_video(path, None)[0][0]).astype(int)
    # The picture sits unscaled in the top-left corner; the extra row / column repeat the last ones.
    assert np.abs(decoded[:33, :47] - frames[0]).mean() < 2.0
    assert np.abs(decoded[33, :47] - frames[0, 32]).mean() < 3.0
    assert np.abs(decoded[:33, 47] - frames[0, :, 46]).mean() < 3.0


def test_exception_leaves_nothing_and_keeps_existing_target(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(path, fps=15) as w:
        w.write(_ramp_frames(4, 16, 16))
        raise RuntimeError("boom")
    assert _files(tmp_path) == []
    # A failed rewrite leaves the previous video byte for byte.
    write_video(path, _ramp_frames(2, 16, 16), fps=15)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), VideoWriter(path, fps=15) as w:
        w.write(_ramp_frames(5, 16, 16))
        raise RuntimeError("boom")
    assert path.read_bytes() == before and _files(tmp_path) == ["v.mp4"]


def test_writer_rejects_bad_frames_and_empty_videos(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(MediaError, match="uint8"), VideoWriter(path, fps=15) as w:
        w.write(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(MediaError, match="differs"), VideoWriter(path, fps=15) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
        w.write(np.zeros((16, 18, 3), np.uint8))
    with pytest.raises(MediaError, match="no frames"), VideoWriter(path, fps=15):
        pass
    assert _files(tmp_path) == []
    with pytest.raises(MediaError, match="does not exist"), VideoWriter(tmp_path / "nope" / "a.mp4", fps=15):
        pass
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(path, fps=15, crf=60)


# ---------------------------------------------------------------------------------------------- reading videos
def test_resampling_stride_from_file(tmp_path):
    frames = _ramp_frames(12, 32, 32)  # brightness of channel 2 encodes the frame index: 40 + 15 i
    path = tmp_path / "v30.mp4"
    write_video(path, frames, fps=30, crf=0)
    kept, fps = load_video(path, target_fps=15)
    assert fps == 30.0 and len(kept) == 6
    index = [round((np.asarray(f)[..., 2].mean() - 40) / 15) for f in kept]
    assert index == [0, 2, 4, 6, 8, 10]
    assert len(load_video(path, target_fps=30)[0]) == 12
    assert len(load_video(path, target_fps=7)[0]) == 3  # round(30 / 7) = 4


@pytest.mark.parametrize(
    ("src", "dst", "stride"), [(30, 15, 2), (29.97, 15, 2), (24, 15, 2), (10, 15, 1), (60, 15, 4), (37.5, 15, 2)]
)
def test_frame_stride(src, dst, stride):
    assert frame_stride(src, dst) == stride  # 37.5/15 = 2.5 rounds half to even, as Python's round in the demos


def test_in_memory_videos():
    arr = _ramp_frames(6, 8, 10)
    frames, fps = load_video(arr)
    assert fps == 15.0 and len(frames) == 6 and frames[0].mode == "RGB" and frames[0].size == (10, 8)
    frames, fps = load_video(arr, target_fps=15, source_fps=30)
    assert fps == 30 and len(frames) == 3
    assert np.array_equal(np.asarray(frames[1]), arr[2])
    pil = [PIL.Image.fromarray(a).convert("RGBA") for a in arr]
    frames, _ = load_video(pil)
    assert all(f.mode == "RGB" for f in frames)


def test_bad_videos(tmp_path):
    with pytest.raises(MediaError, match="not found.*missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(MediaError, match="junk.mp4"):
        load_video(junk)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4"):
        load_video(empty)
    with pytest.raises(MediaError, match="no frames"):
        load_video([])
    with pytest.raises(MediaError, match="uint8"):
        load_video(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(MediaError, match="PIL"):
        load_video([np.zeros((4, 4, 3), np.uint8)])


# ---------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_load_image_formats(tmp_path, fmt):
    src = PIL.Image.fromarray(_ramp_frames(1, 20, 30)[0]).convert("RGBA" if fmt != "JPEG" else "L")
    path = tmp_path / f"img.{fmt.lower()}"
    src.save(path, format=fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert load_image(str(path)).size == (30, 20)


def test_load_image_applies_exif_orientation(tmp_path):
    src = PIL.Image.fromarray(_ramp_frames(1, 20, 30)[0])
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    src.save(path, format="JPEG", exif=exif)
    assert load_image(path).size == (20, 30)


def test_bad_images(tmp_path):
    with pytest.raises(MediaError, match="not found.*nope.png"):
        load_image(tmp_path / "nope.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="junk.png"):
        load_image(junk)
    gif = tmp_path / "a.gif"
    PIL.Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(MediaError, match="unsupported image format GIF.*a.gif"):
        load_image(gif)
    good = tmp_path / "t.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(MediaError, match="truncated.png"):
        load_image(truncated)
    assert issubclass(MediaError, ValueError)


# ---------------------------------------------------------------------------------------------- tensors
def test_preprocess_frames_numerics():
    frames = [PIL.Image.fromarray(f) for f in _ramp_frames(3, 40, 52)]
    x = preprocess_frames(frames, 32, 48)
    assert x.shape == (1, 3, 3, 32, 48) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    by_hand = np.asarray(frames[1].resize((48, 32), PIL.Image.LANCZOS)).astype(np.float32) / 255.0 * 2 - 1
    assert np.array_equal(x[0, :, 1].permute(1, 2, 0).numpy(), by_hand)
    assert preprocess_frames(frames[0], 32, 48).shape == (1, 3, 1, 32, 48)


def test_preprocess_frames_matches_diffusers_bitwise():
    pytest.importorskip("diffusers")
    from diffusers.video_processor import VideoProcessor

    frames = [PIL.Image.fromarray(f) for f in _ramp_frames(4, 50, 70)]
    ref = VideoProcessor(vae_scale_factor=8).preprocess_video(frames, height=48, width=64)
    assert torch.equal(preprocess_frames(frames, 48, 64), ref)


def test_to_uint8_frames_rounding():
    # 0.5 * x + 0.5 = 0.999 -> 254.7 -> 254 (truncation, not rounding); out of range clamps.
    video = torch.tensor([0.998, -1.5, 1.5, 0.0]).view(1, 1, 4, 1, 1).expand(2, 3, 4, 1, 1).clone()
    out = to_uint8_frames(video)
    assert out.shape == (4, 1, 1, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [254, 0, 255, 127]
    # The clamp happens in the tensor's dtype: bf16 rounds 0.998 to 1.0 first.
    assert to_uint8_frames(video.bfloat16())[0, 0, 0, 0] == 255


def test_to_uint8_frames_matches_diffusers_postprocess():
    pytest.importorskip("diffusers")
    from diffusers.video_processor import VideoProcessor

    video = torch.rand(1, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    for dtype in (torch.float32, torch.bfloat16):
        ref = VideoProcessor(vae_scale_factor=8).postprocess_video(video.to(dtype), output_type="np")
        assert np.array_equal(to_uint8_frames(video.to(dtype)), (ref[0] * 255).astype(np.uint8))
