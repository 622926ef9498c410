"""Frames from a camera, a video file or a network stream, read in their own thread.

The queue between the reader and the recogniser is bounded. A camera or live stream is real time: when the
recogniser falls behind, the oldest frame is dropped so it always works on a recent one. A video file, and a
video served over http(s) (a stream that declares its frame count), is read completely (the reader waits for room
instead), so every frame is processed. A stream that drops is reopened with exponential back-off; a camera that
is missing or stops is an error. A served video ends at the frame count it declares; one that drops before is
reopened and resumes where it stopped (never replayed from its start), and gives up like a stream if it keeps
ending there. A file that ends well short of the count its header declares is an error.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from biometrics.errors import SourceError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass(frozen=True)
class Frame:
    index: int  # position in the source (counts dropped frames too)
    timestamp: float  # seconds: media time in a file, since the start for a camera or stream
    image: np.ndarray


@dataclass(frozen=True)
class _End:
    error: SourceError | None = None


class _FrameBuffer:
    """The bounded FIFO between the reading thread and the recogniser. Dropping the oldest frame and queueing the
    new one is one step under the lock: with a queue.Queue, a reader taking a frame between a failed put and the
    drop made the drop take the newest frame instead. The end marker is never refused nor dropped."""

    def __init__(self, size: int):
        self._items: deque[Frame | _End] = deque()
        self._size = size
        self._changed = threading.Condition()

    def put(self, frame: Frame, drop_oldest: bool, timeout: float) -> tuple[bool, bool]:
        """Queue ``frame``; when full, drop the oldest or wait up to ``timeout`` for room. Returns (queued, dropped)."""
        with self._changed:
            dropped = False
            if len(self._items) >= self._size:
                if drop_oldest:
                    self._items.popleft()
                    dropped = True
                elif not self._changed.wait_for(lambda: len(self._items) < self._size, timeout):
                    return False, False
            self._items.append(frame)
            self._changed.notify_all()
            return True, dropped

    def end(self, marker: _End) -> None:
        with self._changed:
            self._items.append(marker)
            self._changed.notify_all()

    def get(self) -> Frame | _End:
        with self._changed:
            self._changed.wait_for(lambda: self._items)
            item = self._items.popleft()
            self._changed.notify_all()
            return item


def is_camera(source: str) -> bool:
    """A camera index ("0") or a camera's device file (/dev/video0)."""
    return source.isdigit() or (source.startswith("/dev/") and Path(source).is_char_device())


def describe_source(source: str) -> str:
    return f"camera {source}" if is_camera(source) else f"stream {source}" if is_stream(source) else source


def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_SCHEMES)


class FrameSource:
    """``--source``: a camera index ("0") or device (/dev/video0), a video file, or a stream URL (rtsp, rtmp, http(s),
    udp, tcp, srt). Iterate with ``frames()``.

    ``pace`` plays a file at its own frame rate (for watching); otherwise a file is read as fast as it is
    processed. ``open_capture`` is ``cv2.VideoCapture`` unless a test gives another opener.
    """

    def __init__(
        self,
        source: str,
        *,
        queue_size: int = 2,
        pace: bool = False,
        reconnect_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        notify: Callable[[str], None] = lambda message: None,
        open_capture: Callable = cv2.VideoCapture,
    ):
        self.source = source
        self.label = describe_source(source)
        self.live = is_camera(source) or is_stream(source)
        if not source.strip():
            raise SourceError("the source is empty: give a camera index (0), a video file or a stream URL")
        if not self.live and not Path(source).is_file():
            if source.startswith("/dev/video"):
                what = "no such camera (no video device by that name)"
            elif not Path(source).exists():
                what = "no such video file"
            else:
                what = "not a video file (a directory, device or FIFO)"
            raise SourceError(f"{source}: {what}")
        self.reconnect_attempts = reconnect_attempts
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.notify = notify
        self._open_capture = open_capture
        self._buffer = _FrameBuffer(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_all, name="capture", daemon=True)
        self.dropped = 0
        self._reconnections = 0  # attempts since a frame was last read
        self._capture = self._open()
        if self._capture is None:
            raise SourceError(self._cannot_open())
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 30.0  # what the source says it delivers
        self.declared_frames = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))  # 0: live, or not said
        self.real_time = is_camera(source) or (self.live and not self.declared_frames)  # else every frame is read
        self.pace = pace and not self.real_time

    def _cannot_open(self) -> str:
        if is_camera(self.source):
            return f"{self.label}: cannot open (no such camera, or another program is using it)"
        return f"{self.label}: cannot open (not a video, unsupported codec, or unreachable)"

    def _open(self):
        capture = self._open_capture(int(self.source) if self.source.isdigit() else self.source)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def frames(self) -> Iterator[Frame]:
        """Frames until the file ends or ``stop()``; raises SourceError if the source fails."""
        self._thread.start()
        try:
            while True:
                item = self._buffer.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _read_all(self) -> None:
        error = None
        try:
            self._read_frames()
        except SourceError as exc:
            error = exc
        finally:
            if self._capture is not None:
                self._capture.release()
        self._buffer.end(_End(error))

    def _read_frames(self) -> None:
        index, start = 0, time.monotonic()
        opened_at = 0  # index of the first frame from the current capture
        while not self._stop.is_set():
            ok, image = self._capture.read()
            if not ok:
                if self._ended(index, index - opened_at):
                    return
                self._reconnect(resume_at=index if self.declared_frames else 0, delivered=index)
                opened_at = index
                continue
            self._reconnections = 0
            if self.real_time:
                timestamp = time.monotonic() - start
            else:
                timestamp = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if self.pace:
                    self._stop.wait(max(0.0, start + timestamp - time.monotonic()))
            self._put(Frame(index, timestamp, image))
            index += 1

    def _ended(self, position: int, read: int) -> bool:
        """A read failed at frame ``position`` of the source, ``read`` frames after the current capture opened:
        True if that ends the run, False if the stream dropped (reconnect); raises SourceError if the source
        failed. A video served over http(s) ends where it declares; a live stream declares no frame count, so its
        end is a drop."""
        if is_camera(self.source):
            raise SourceError(f"{self.label} stopped delivering frames")
        declared = self.declared_frames
        short = declared > 0 and position < 0.95 * declared and declared - position > 2  # counts can be a bit off
        if is_stream(self.source):
            return declared > 0 and read > 0 and not short
        if read == 0:
            raise SourceError(f"no frame could be decoded from {self.label} (not a video, or corrupt?)")
        if short:
            ended = f"video ended at frame {read} of the {declared} its header declares"
            raise SourceError(f"{self.label}: {ended} (truncated or corrupt?)")
        return True

    def _reconnect(self, resume_at: int, delivered: int) -> None:
        """Reopen a dropped stream, waiting backoff_s, 2 x backoff_s, ... (capped) between attempts. The attempts
        count again from the first only once a frame is read: a stream that reopens but delivers nothing gives up.
        A served video starts again from its first frame: the ``resume_at`` frames already delivered are skipped.
        ``delivered``: frames read so far; none at all, and the source is said to give none, not to be lost."""
        self._capture.release()
        self._capture = None
        while self._reconnections < self.reconnect_attempts:
            delay = min(self.max_backoff_s, self.backoff_s * 2**self._reconnections)
            self._reconnections += 1
            self.notify(
                f"{self.label}: lost; reconnecting in {delay:.1f} s ({self._reconnections}/{self.reconnect_attempts})"
            )
            if self._stop.wait(delay):
                return
            self._capture = self._open()
            if self._capture is not None and self._skip(resume_at):
                self.notify(f"{self.label}: reconnected" + (f", resuming at frame {resume_at}" if resume_at else ""))
                return
            if self._capture is not None:
                self._capture.release()
                self._capture = None
        reason = f"{self.label}: lost and not back after {self.reconnect_attempts} reconnection attempts"
        if not delivered:
            reason = (
                f"no frame could be decoded from {self.label} in {self.reconnect_attempts + 1} attempts (not a video, "
                "an unsupported codec, or a video whose index is at its end served without range requests?)"
            )
        elif resume_at:
            reason += f" (it ends at frame {resume_at} of the {self.declared_frames} it declares: truncated?)"
        raise SourceError(reason)

    def _skip(self, frames: int) -> bool:
        """Pass over the first ``frames`` frames of a reopened capture; False if it ends before."""
        return all(self._capture.grab() for _ in range(frames))

    def _put(self, frame: Frame) -> None:
        """Queue ``frame``; when full, drop the oldest frame (real time) or wait for room (a file). Once stopped,
        frames are discarded: nobody reads any more."""
        while not self._stop.is_set():
            queued, dropped = self._buffer.put(frame, drop_oldest=self.real_time, timeout=0.1)
            self.dropped += dropped
            if queued:
                return
