"""Image and video I/O around the pipeline (SPEC §2.2 preprocessing, §2.9 post-processing, §4 demos).

* Inputs are decoded to RGB PIL images (``load_image`` / ``load_video``), the way the demos' diffusers loaders do,
  and turned into the VAE's [-1, 1] tensors by ``preprocess_frames`` (diffusers ``VaeImageProcessor.preprocess``:
  LANCZOS resize to exactly (W, H), /255, *2-1; the aspect ratio is not preserved).
* Outputs go from the VAE's [-1, 1] video to uint8 frames with the reference's rounding (``to_uint8_frames``) and
  to H.264 through PyAV (``VideoWriter`` / ``write_video``), written atomically: a temporary file next to the
  target is renamed onto it only when the stream closed cleanly, so a crash never leaves a truncated video.

Every failure to read an input raises :class:`MediaError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


def _av():
    """PyAV, imported on first video read or write (the rest of the module works without it)."""
    import av

    return av


PathLike = str | os.PathLike
FramesLike = Sequence[PIL.Image.Image] | np.ndarray


class MediaError(ValueError):
    """An image or video is missing, unreadable, corrupt, empty or of an unsupported kind."""


# ---------------------------------------------------------------------------------------------- images
def load_image(source: PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """An RGB PIL image from a PNG / JPEG / WebP file or a PIL image.

    EXIF orientation is applied and the image converted to RGB, as diffusers' ``load_image`` (used by the demos) does.
    """
    if isinstance(source, PIL.Image.Image):
        return PIL.ImageOps.exif_transpose(source).convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise MediaError(f"image file not found: {path}")
    try:
        img = PIL.Image.open(path)
    except OSError:  # includes PIL.UnidentifiedImageError
        raise MediaError(f"cannot read image {path}: not a {', '.join(IMAGE_FORMATS)} file") from None
    with img:
        if img.format not in IMAGE_FORMATS:
            raise MediaError(f"unsupported image format {img.format} in {path}: expected {', '.join(IMAGE_FORMATS)}")
        try:
            img.load()  # decode now, so that a truncated file fails here with a clear message
        except (OSError, SyntaxError, ValueError) as e:
            raise MediaError(f"cannot read image {path}: corrupt or truncated ({e})") from None
        return PIL.ImageOps.exif_transpose(img).convert("RGB")


# ---------------------------------------------------------------------------------------------- videos
def frame_stride(source_fps: float, target_fps: float) -> int:
    """Keep every ``stride``-th frame to go from ``source_fps`` to about ``target_fps``: ``max(1, round(src/target))``
    (Python's round, half to even, as the demos compute it: 30 -> 15 fps is 2, 24 -> 15 fps is 2)."""
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"frame rates must be > 0, got source {source_fps}, target {target_fps}")
    return max(1, round(source_fps / target_fps))


def load_video(
    source: PathLike | FramesLike, target_fps: float | None = 15, *, source_fps: float | None = None
) -> tuple[list[PIL.Image.Image], float]:
    """RGB frames of a video, resampled toward ``target_fps`` by keeping every :func:`frame_stride`-th frame.

    ``source``: a video file (decoded with PyAV, so anything ffmpeg reads), a list of PIL images, or a uint8 numpy
    array [F, H, W, 3]. In-memory frames are taken to be at ``source_fps``, which defaults to ``target_fps`` (no
    resampling). ``target_fps=None`` keeps every frame. Returns (frames, source frame rate).
    """
    if isinstance(source, (str, os.PathLike)):
        return _decode_video(Path(source), target_fps)
    frames = _frames_in_memory(source)
    fps = source_fps if source_fps is not None else target_fps
    if fps is None:  # no resampling asked for and no rate known: keep every frame
        return frames, 0.0
    stride = frame_stride(fps, target_fps) if target_fps else 1
    return frames[::stride], float(fps)


def _frames_in_memory(source: FramesLike) -> list[PIL.Image.Image]:
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
            raise MediaError(f"video array must be uint8 [F, H, W, 3], got {source.dtype} {list(source.shape)}")
        frames = [PIL.Image.fromarray(f) for f in source]
    else:
        frames = list(source)
        bad = {type(f).__name__ for f in frames if not isinstance(f, PIL.Image.Image)}
        if bad:
            raise MediaError(f"video frames must be PIL images, got {', '.join(sorted(bad))}")
        frames = [f.convert("RGB") for f in frames]
    if not frames:
        raise MediaError("video has no frames")
    return frames


def _stream_fps(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


@contextlib.contextmanager
def _video_stream(path: Path):
    """(container, first video stream) of a video file; every failure is a MediaError naming the file."""
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            yield container, container.streams.video[0]
    except av.FFmpegError as e:
        raise MediaError(f"cannot decode video {path}: {e}") from None


def _decode_video(path: Path, target_fps: float | None) -> tuple[list[PIL.Image.Image], float]:
    with _video_stream(path) as (container, stream):
        fps = _stream_fps(stream)
        if fps is None:
            raise MediaError(f"cannot determine the frame rate of {path}")
        stride = frame_stride(fps, target_fps) if target_fps else 1
        # Decode every frame (inter-frame codecs need them) but convert only the kept ones to RGB.
        frames = [f.to_image() for i, f in enumerate(container.decode(stream)) if i % stride == 0]
    if not frames:
        raise MediaError(f"video {path} has no decodable frames")
    return frames, fps


def read_video_info(path: PathLike) -> tuple[int, int, int, float]:
    """(number of decoded frames, height, width, fps) of a video file; decodes it all, for tests and checks."""
    path = Path(path)
    with _video_stream(path) as (container, stream):
        count, height, width = 0, stream.height, stream.width
        for frame in container.decode(stream):
            count += 1
            height, width = frame.height, frame.width
        return count, height, width, _stream_fps(stream) or 0.0


# ---------------------------------------------------------------------------------------------- tensors
def preprocess_frames(frames: PIL.Image.Image | Sequence[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
    """PIL frames -> VAE input [1, 3, F, H, W] float32 in [-1, 1] (a single image gives F = 1).

    Same arithmetic as diffusers ``VaeImageProcessor.preprocess``: LANCZOS resize to exactly (width, height),
    float32 ``/ 255`` in numpy, then ``2 * x - 1`` in torch. Unlike diffusers, (H, W) are not floored to a multiple
    of 8: callers pass bucket sizes, which already are.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    frames = [frames] if isinstance(frames, PIL.Image.Image) else list(frames)
    if not frames:
        raise MediaError("no frames to preprocess")
    arrays = [
        np.asarray(f.convert("RGB").resize((width, height), resample=PIL.Image.LANCZOS)).astype(np.float32) / 255.0
        for f in frames
    ]
    x = torch.from_numpy(np.stack(arrays))  # [F, H, W, 3] in [0, 1]
    x = 2.0 * x - 1.0
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded video [B, 3, F, H, W] in [-1, 1] -> uint8 frames [F, H, W, 3] of sample 0.

    Reference rounding (diffusers ``postprocess_video`` + the demos): ``(x * 0.5 + 0.5).clamp(0, 1)`` in the
    tensor's own dtype (bf16 on GPU), then float32, ``* 255`` and truncation to uint8 (not rounding).
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a video [B, 3, F, H, W], got {list(video.shape)}")
    x = (video[0] * 0.5 + 0.5).clamp(0, 1)  # [3, F, H, W], same dtype as video
    x = x.permute(1, 2, 3, 0).float().cpu().numpy()
    return (x * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- writing
class VideoWriter:
    """Stream uint8 RGB frames into an H.264 (libx264, yuv420p) file, atomically.

    Use as a context manager; ``write`` takes [H, W, 3] or [F, H, W, 3] uint8 (numpy or torch). The file appears at
    ``path`` only when the block exits cleanly; on an exception the partial file is deleted and an existing file at
    ``path`` is left untouched.

    Odd sizes: yuv420p needs even width and height, so an odd frame gets its last row / column repeated (edge
    padding) and the video is one pixel larger there. This keeps every pixel and the widely playable yuv420p,
    where yuv444p would not play in most browsers and cropping would lose a row.
    """

    def __init__(self, path: PathLike, fps: float, crf: int = 18):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51] (libx264), got {crf}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        # Hidden, unique, same directory (so the final rename is atomic) and same suffix (so ffmpeg picks the muxer).
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.partial{self.path.suffix}")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame, before padding
        self.frames_written = 0

    def __enter__(self) -> VideoWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if not self.path.parent.is_dir():
            raise MediaError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        av = _av()
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f"cannot write video {self.path}: {e}") from None

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append one frame [H, W, 3] or a batch [F, H, W, 3], uint8 RGB."""
        if self._container is None:
            raise MediaError(f"VideoWriter for {self.path} is not open")
        batch = self._as_batch(frames)
        if self._stream is None:
            self._add_stream(*batch.shape[1:3])
        if batch.shape[1:3] != self._size:
            raise MediaError(f"frame size {list(batch.shape[1:3])} differs from the video's {list(self._size)}")
        for frame in batch:
            self._mux(_av().VideoFrame.from_ndarray(_pad_to_even(frame), format="rgb24"))
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, close the file and move it onto ``path``."""
        if self._container is None:
            return
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"no frames were written to {self.path}")
        try:
            self._mux(None)  # flush the frames x264 still holds (lookahead / B-frames)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._container = None
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._tmp.unlink(missing_ok=True)
            raise MediaError(f"cannot move the finished video onto {self.path}: {e}") from None

    def abort(self) -> None:
        """Drop the partial file; ``path`` is not touched."""
        if self._container is not None:
            with contextlib.suppress(_av().FFmpegError):  # the file is being discarded anyway
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def _as_batch(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise MediaError(f"frames must be uint8 [H, W, 3] or [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        return frames

    def _add_stream(self, height: int, width: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1001 * 1000)  # PyAV wants a rational rate; 30000/1001 survives
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf)}
        self._size = (height, width)

    def _mux(self, frame) -> None:  # an av.VideoFrame, or None to flush
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H + H%2, W + W%2, 3], repeating the last row / column (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return np.ascontiguousarray(frame)
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: PathLike, frames: np.ndarray | torch.Tensor | Sequence, fps: float, crf: int = 18) -> None:
    """Write uint8 frames [F, H, W, 3] (array, tensor, or a list of [H, W, 3] arrays / PIL images) to H.264,
    atomically (see :class:`VideoWriter`)."""
    with VideoWriter(path, fps, crf) as writer:
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            writer.write(frames)
        else:
            for frame in frames:
                writer.write(np.asarray(frame.convert("RGB") if isinstance(frame, PIL.Image.Image) else frame))
