"""Prediction on video files: frames decoded with OpenCV (its FFmpeg), predicted in batches, drawn into an
annotated video, and one JSON line per frame.

    zir predict runs/NAME clip.mp4 --out predictions/     # predictions/clip.mp4 and predictions/clip.jsonl

Each JSON line is ``{"frame": i, "time": seconds, ...}`` with the fields of the task's prediction
(``DetectionPrediction.to_dict``: boxes in the frame's pixels, scores, labels, classes).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from zir.errors import DataError, ZirError

if TYPE_CHECKING:
    from zir.engine.predictor import Predictor
    from zir.engine.sliced import Slicing

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
DEFAULT_FPS = 25.0  # written when the file does not say (some .avi and raw streams)
_REENCODE = "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`) or leave it out"


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:
        raise ZirError("video files need OpenCV: pip install 'zir[video]' (opencv-contrib-python-headless)") from e
    return cv2


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: ``fps`` (DEFAULT_FPS when it does not say), ``frames`` (an estimate the
    decoder may not reach; 0 when unknown) and the frame size."""

    fps: float
    frames: int
    width: int
    height: int


def frames(path: str | Path, batch_size: int = 8) -> tuple[VideoInfo, Iterator[list[torch.Tensor]]]:
    """Open a video and check that its first frame decodes; then yield its frames in batches.

    Returns:
        ``(info, batches)``: each batch a list of uint8 ``(3, H, W)`` RGB frames, in order.

    Raises:
        DataError: naming ``path``: it cannot be opened (missing, corrupt, a codec OpenCV lacks) or has
            no frame that decodes (empty or truncated before the first frame).
    """
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(path, f"OpenCV cannot open it as a video (corrupt, not a video, or a codec its FFmpeg "
                              f"lacks); {_REENCODE}")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise DataError(path, f"the video has no frame that decodes (empty, or truncated before its first "
                              f"frame); {_REENCODE}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    info = VideoInfo(fps=fps if 0 < fps < 1000 else DEFAULT_FPS, frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
                     width=first.shape[1], height=first.shape[0])

    def batches() -> Iterator[list[torch.Tensor]]:
        frame: np.ndarray | None = first
        try:
            while frame is not None:
                batch = []
                while frame is not None and len(batch) < batch_size:
                    batch.append(torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1))  # BGR->RGB
                    ok, frame = cap.read()
                    frame = frame if ok else None
                yield batch
        finally:
            cap.release()

    return info, batches()


class VideoWriter:
    """An MP4 (``mp4v``) writer of uint8 ``(3, H, W)`` RGB frames; opened on the first frame, so its size
    is the drawn frame's (drawing may enlarge small videos)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path, self.fps, self.writer, self.count = Path(path), fps, None, 0

    def write(self, frame: torch.Tensor) -> None:
        cv2 = _cv2()
        bgr = np.ascontiguousarray(frame.permute(1, 2, 0).numpy()[..., ::-1])  # (H, W, 3)
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (bgr.shape[1], bgr.shape[0]))
            if not self.writer.isOpened():
                raise DataError(self.path, "OpenCV cannot write an MP4 (mp4v) video here; choose another --out")
        self.writer.write(bgr)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def predict_video(predictor: Predictor, path: str | Path, out_video: str | Path, out_jsonl: str | Path,
                  draw: Callable[[torch.Tensor, Any, list[str]], torch.Tensor], conf: float | None = None,
                  slicing: Slicing | None = None, batch_size: int = 8, progress: bool = True) -> int:
    """Predict on every frame of ``path``; write the annotated video and one JSON line per frame.

    ``draw(frame (3, H, W) uint8, prediction, classes) -> (3, H', W') uint8`` draws a frame's prediction
    (``zir.analysis.draw.draw_prediction``; passed in because drawing is a layer above the engine).

    Returns:
        the number of frames written. A video that stops decoding early (truncated) keeps what decoded,
        with a warning naming the file.
    """
    from zir.data.contract import DetectionPrediction
    from zir.engine.sliced import predict_sliced

    info, batches = frames(path, batch_size)
    writer = VideoWriter(out_video, info.fps)
    bar = tqdm(total=info.frames or None, desc=Path(path).name, unit="frame", leave=False, disable=not progress)
    index = 0
    try:
        with open(out_jsonl, "w", encoding="utf-8") as lines:
            for batch in batches:
                if slicing is not None:
                    preds = [predict_sliced(predictor, f, slicing) for f in batch]
                else:
                    preds = predictor.predict(batch, batch_size=batch_size)
                for frame, pred in zip(batch, preds):
                    if conf is not None and isinstance(pred, DetectionPrediction):
                        pred = pred.above(conf)
                    writer.write(draw(frame, pred, predictor.classes))
                    record = {"frame": index, "time": round(index / info.fps, 6), **pred.to_dict(predictor.classes)}
                    lines.write(json.dumps(record) + "\n")
                    index += 1
                bar.update(len(batch))
    finally:
        writer.close()
        bar.close()
    if info.frames and index < info.frames - 1:  # containers often over-count by one
        print(f"zir: {path}: decoded {index} of the {info.frames} frames it declares (truncated or corrupt "
              "after that); the outputs hold those", file=sys.stderr)
    return index
