"""MP4 encoding/decoding of camera streams with PyAV (LeRobot's video storage)."""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path

import numpy as np

# LeRobot v2.1 defaults: AV1 (SVT-AV1), yuv420p, a keyframe every 2 frames for cheap random access.
DEFAULT_CODEC = "libsvtav1"
_CODEC_NAMES = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "h264": "h264", "libx265": "hevc"}


def codec_name(codec: str) -> str:
    return _CODEC_NAMES.get(codec, codec)


def encode_video(
    path: Path, frames: np.ndarray, fps: float, *, codec: str = DEFAULT_CODEC, gop: int = 2, crf: int = 30
) -> None:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames to an mp4 file (yuv420p), one frame every ``1/fps`` seconds."""
    import av  # lazy: PyAV loads the FFmpeg libraries; only video datasets need it

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be uint8 [T, H, W, 3] RGB, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"video frames must have even height and width for yuv420p, got {height}x{width}")
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config to stderr otherwise
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = int(fps) if float(fps).is_integer() else fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options={"g": str(gop), "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_video(path: Path, timestamps: Sequence[float] | None = None, *, tolerance_s: float = 1e-3) -> np.ndarray:
    """Decode RGB frames ``uint8 [N, H, W, 3]``: all frames, or the ones at ``timestamps`` (seconds).

    For timestamps, the decoder seeks to the keyframe before the first one and decodes forward; each requested
    time must match a frame within ``tolerance_s``.
    """
    import av  # lazy: PyAV loads the FFmpeg libraries; only video datasets need it

    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if timestamps is None:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        wanted = np.asarray(timestamps, dtype=np.float64)
        first, last = float(wanted.min()), float(wanted.max())
        if stream.time_base is not None and first > 0:
            container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        times, images = [], []
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else float(frame.pts * stream.time_base)
            if t < first - tolerance_s:
                continue
            times.append(t)
            images.append(frame.to_ndarray(format="rgb24"))
            if t >= last - tolerance_s:
                break
    if not times:
        raise ValueError(f"{path}: no frame at or after t={first:.4f}s (video too short?)")
    times_arr = np.asarray(times)
    nearest = np.abs(times_arr[None, :] - wanted[:, None]).argmin(axis=1)
    err = np.abs(times_arr[nearest] - wanted)
    if np.any(err > tolerance_s):
        bad = int(np.argmax(err))
        raise ValueError(
            f"{path}: no frame within {tolerance_s}s of t={wanted[bad]:.4f}s (nearest decoded frame at "
            f"{times_arr[nearest[bad]]:.4f}s); the video and the parquet timestamps disagree"
        )
    return np.stack([images[j] for j in nearest])
