"""Where annotated frames go: a video file and an events log (headless), or an OpenCV window."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from biometrics.errors import BiometricsError
from biometrics.live.recognizer import FrameResult


class View(Protocol):
    wants_pixels: bool  # whether ``show`` needs the annotated image (drawing costs time)
    closed: bool  # the user asked to stop (window closed, q pressed)

    def show(self, annotated: np.ndarray | None, result: FrameResult, fps: float) -> None: ...

    def close(self) -> None: ...


class HeadlessRecorder:
    """``--out annotated.mp4`` and ``--events events.jsonl`` (one JSON line per processed frame, no embeddings).
    A run that processed no frame leaves neither behind."""

    closed = False

    def __init__(self, video: Path | None, events: Path | None, fps: float = 30.0):
        self.video_path, self.events_path, self.fps = video, events, fps
        self.wants_pixels = video is not None
        self._frames = 0
        self._writer: cv2.VideoWriter | None = None
        try:
            self._events = None if events is None else open(events, "w")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise BiometricsError(f"{events}: cannot write events ({exc.strerror or exc})") from None

    def show(self, annotated: np.ndarray | None, result: FrameResult, fps: float) -> None:
        self._frames += 1
        if self._events is not None:
            self._events.write(json.dumps(result.to_event()) + "\n")
        if self.video_path is not None:  # other views may want pixels when this one has no --out
            if self._writer is None:
                self._writer = self._open_writer(annotated.shape)
            self._writer.write(annotated)

    def _open_writer(self, shape: tuple[int, ...]) -> cv2.VideoWriter:
        height, width = shape[:2]
        writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not writer.isOpened():
            raise BiometricsError(f"{self.video_path}: cannot write video (use .mp4 in a writable folder)")
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self._events is not None:
            self._events.close()
            if not self._frames:  # opened at the start, to fail before any work if it cannot be written
                self.events_path.unlink(missing_ok=True)


def gui_available() -> bool:
    """Whether OpenCV can open a window: a GUI build (not opencv-python-headless) and, on Linux, a display."""
    backend = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    display = sys.platform != "linux" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return bool(backend and backend.group(1).upper() != "NONE" and display)


class WindowView:
    """An OpenCV window; q or Esc (or closing it) stops the run."""

    wants_pixels = True

    def __init__(self, title: str = "biometrics live"):
        self.title = title
        self.closed = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, annotated: np.ndarray | None, result: FrameResult, fps: float) -> None:
        cv2.imshow(self.title, annotated)
        key = cv2.waitKey(1) & 0xFF
        self.closed = key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
