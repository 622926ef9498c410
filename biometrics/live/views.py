"""Where annotated frames go: a video file and an events log (headless), or an OpenCV window."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from biometrics.errors import OutputError
from biometrics.files import disk_full, open_private, replacing
from biometrics.live.recognizer import FrameResult


class View(Protocol):
    wants_pixels: bool  # whether ``show`` needs the annotated image (drawing costs time)
    closed: bool  # the user asked to stop (window closed, q pressed)

    def show(self, annotated: np.ndarray | None, result: FrameResult, fps: float) -> None: ...

    def close(self) -> None: ...


STDOUT = Path("-")
"""``--events -``: the events go to standard output, a line at a time (a log reader sees each frame)."""


class HeadlessRecorder:
    """``--out annotated.mp4`` and ``--events events.jsonl`` (one JSON line per processed frame, no embeddings;
    ``STDOUT``: standard output), both owner-only: they show faces and names. A run that processed no frame leaves
    neither file behind. The video is
    written beside its name and renamed into place once it reads back whole: cv2.VideoWriter reports no failed
    write (a full disk leaves an unplayable file cut short), and a failure leaves the file that was there."""

    closed = False

    def __init__(self, video: Path | None, events: Path | None, fps: float = 30.0):
        self.video_path, self.events_path, self.fps = video, events, fps
        self.wants_pixels = video is not None
        self._frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._partial: Path | None = None  # where the video is written until it is complete
        self._video = ExitStack()  # the partial video, replaced into place or removed when closed
        try:
            if events is None or events == STDOUT:
                self._events = None if events is None else sys.stdout
            else:
                self._events = open(open_private(events), "w")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise _cannot_write(events, "events", exc) from None

    def show(self, annotated: np.ndarray | None, result: FrameResult, fps: float) -> None:
        if self._events is not None:
            try:
                self._events.write(json.dumps(result.to_event()) + "\n")
                if self._events is sys.stdout:
                    self._events.flush()
            except BrokenPipeError:  # the reader of --events - went away (`| head`): the CLI's exit 141
                raise
            except OSError as exc:
                raise _cannot_write(self.events_path, "events", exc) from None
        if self.video_path is not None:  # other views may want pixels when this one has no --out
            if self._writer is None:
                self._writer = self._open_writer(annotated.shape)
            self._writer.write(annotated)
        self._frames += 1  # counted once in every output: the video is checked for as many

    def _open_writer(self, shape: tuple[int, ...]) -> cv2.VideoWriter:
        height, width = shape[:2]
        try:
            self._partial = self._video.enter_context(replacing(self.video_path, private=True))
        except OSError as exc:
            raise _cannot_write(self.video_path, "video", exc) from None
        writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not writer.isOpened():  # OpenCV says no more: a full disk, or a container it cannot write
            with self._video:  # raised inside: the partial file is removed, not renamed into place
                if disk_full(self.video_path.parent):
                    raise _cannot_write(self.video_path, "video", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
                raise OutputError(f"{self.video_path}: cannot write a video with this extension (use .mp4)")
        return writer

    def close(self) -> None:
        """Finish both outputs, each even when the other fails; an OutputError names one that could not be
        completed."""
        with ExitStack() as finishing:
            if self._events is not None:
                finishing.callback(self._close_events)
            if self._writer is not None:
                self._writer.release()
                with self._video:
                    self._check_video()

    def _close_events(self) -> None:
        try:
            if self._events is sys.stdout:
                self._events.flush()
            else:
                self._events.close()
        except BrokenPipeError:
            raise
        except OSError as exc:
            if self._events is not sys.stdout:
                _cut_to_whole_lines(self.events_path)
            raise _cannot_write(self.events_path, "events", exc) from None
        # opened at the start, to fail before any work: a run that processed no frame leaves no file
        if not self._frames and self.events_path != STDOUT and self.events_path.is_file():
            self.events_path.unlink()

    def _check_video(self) -> None:
        """Raise an OutputError unless the finished video opens and holds every frame written."""
        capture = cv2.VideoCapture(str(self._partial))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        capture.release()
        if frames < self._frames:
            full = disk_full(self._partial.parent)
            reason = os.strerror(errno.ENOSPC) if full else f"it reads back with {frames} of {self._frames} frames"
            raise OutputError(f"{self.video_path}: the video could not be completed ({reason})")


def _cut_to_whole_lines(path: Path) -> None:
    """A full disk stops the events file mid-line: cut it back to its last whole line, so that every line a reader
    parses is a whole event (lines are a few hundred bytes: the last 64 KiB hold the last newline)."""
    with suppress(OSError), open(path, "r+b") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a device (/dev/full reads zeros for ever): as it is
            return
        size = file.seek(0, os.SEEK_END)
        tail_start = file.seek(max(0, size - 65536))
        file.truncate(tail_start + file.read(65536).rfind(b"\n") + 1)


def _cannot_write(path: Path, what: str, exc: OSError) -> OutputError:
    return OutputError(f"{'standard output' if path == STDOUT else path}: cannot write {what} ({exc.strerror or exc})")


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
