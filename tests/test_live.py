"""Live recognition as a user runs it: headless on real clips, a browser page, failing sources, Ctrl-C."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from biometrics.cli.main import cli
from biometrics.errors import SourceError
from biometrics.face import Face
from biometrics.gallery import EmbedderId, Gallery, NewTemplate
from biometrics.imaging import load_image
from biometrics.live import web
from biometrics.live.capture import Frame, FrameSource
from biometrics.live.recognizer import FrameResult, LiveRecognizer, TrackReport
from biometrics.live.session import KNOWN_COLOUR, GalleryLink, LiveControls, annotate, run_live, track_label
from biometrics.live.tracker import IoUTracker
from biometrics.live.web import BrowserView

BIOMETRICS = [sys.executable, "-m", "biometrics"]


@pytest.fixture
def performer_gallery(tmp_path, pipeline, sample) -> Path:
    """A gallery with one person: the largest face of frame 100 of hamilton_clip.mp4."""
    capture = cv2.VideoCapture(str(sample("hamilton_clip.mp4")))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = capture.read()
    capture.release()
    assert ok
    face, *_ = pipeline.embed_one(frame)
    path = tmp_path / "gallery.db"
    with Gallery(path, create=True) as gallery:
        template = NewTemplate(face.embedding, "frame100.png", tuple(face.box))
        gallery.enroll("performer", EmbedderId.of(pipeline.embedder), [template])
    return path


@pytest.fixture
def short_clip(tmp_path, sample) -> Path:
    """The first 30 frames of hamilton_clip.mp4 as an MJPEG .avi, whose header declares its 30 frames."""
    capture = cv2.VideoCapture(str(sample("hamilton_clip.mp4")))
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 360))
    for _ in range(30):
        ok, frame = capture.read()
        assert ok
        writer.write(frame)
    writer.release()
    capture.release()
    return path


def _cut(clip: Path, size: int) -> Path:
    """The first ``size`` bytes of ``clip``: a truncated copy beside it."""
    cut = clip.with_name(f"{clip.stem}-{size}{clip.suffix}")
    cut.write_bytes(clip.read_bytes()[:size])
    return cut


def _frame_count(video: Path) -> int:
    """Frames that actually decode (not the count the header declares)."""
    capture, count = cv2.VideoCapture(str(video)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture
def serve():
    """``serve([body, ...])``: the URL of a local HTTP server answering its n-th GET with the n-th body, then 404
    (a stream that drops, comes back, or is gone)."""
    servers = []

    def start(bodies: list[bytes]) -> str:
        pending = list(bodies)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                if not pending:
                    self.send_error(404)
                    return
                body = pending.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/clip.avi"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_headless_run_on_the_clip_writes_video_and_events(tmp_path, sample, performer_gallery):
    video, events = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    args = ["live", "--source", sample("hamilton_clip.mp4"), "--headless", "--threads", "2"]
    result = CliRunner().invoke(
        cli, [*map(str, args), "--gallery", performer_gallery, "--out", video, "--events", events]
    )
    assert result.exit_code == 0, result.output
    assert "275 frames in" in result.stdout and " fps " in result.stdout

    lines = _events(events)
    assert [line["frame"] for line in lines] == list(range(275))  # a file is read completely, nothing dropped
    assert all(set(track) == {"id", "box", "identity", "score"} for line in lines for track in line["tracks"])
    assert "embedding" not in events.read_text()
    named = [line["frame"] for line in lines if any(t["identity"] == "performer" for t in line["tracks"])]
    assert 100 in named and len(named) > 50  # recognised, and the identity follows the track
    assert all(sum(t["identity"] == "performer" for t in line["tracks"]) <= 1 for line in lines)
    track_frames = sum(len(line["tracks"]) for line in lines)
    embedded = int(result.stdout.split(" faces embedded")[0].rsplit(" ", 1)[1])
    assert embedded < track_frames / 3  # tracks carry identities: faces are not embedded on every frame

    written = cv2.VideoCapture(str(video))
    assert written.get(cv2.CAP_PROP_FRAME_COUNT) == 275
    assert (written.get(cv2.CAP_PROP_FRAME_WIDTH), written.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 360)
    written.release()


def test_headless_run_on_the_1080p_video(tmp_path, sample):
    events = tmp_path / "events.jsonl"
    args = ["live", "--source", sample("video_1080p.mp4"), "--headless", "--threads", "2", "--max-side", "640"]
    result = CliRunner().invoke(cli, [*map(str, args), "--gallery", tmp_path / "none.db", "--events", events])
    assert result.exit_code == 0, result.output
    lines = _events(events)
    assert len(lines) == 105 and any(line["tracks"] for line in lines)
    assert all(t["identity"] is None for line in lines for t in line["tracks"])  # no gallery: everyone unknown


def test_unusable_sources_exit_2_with_a_reason(tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    not_a_photo = tmp_path / "notes.jpg"  # opens (as an image sequence), but no frame decodes
    not_a_photo.write_text("not a photo")
    cases = {
        str(tmp_path / "missing.mp4"): "no such video file",
        str(tmp_path): "not a video file (a directory, device or FIFO)",
        str(not_a_video): "cannot open",
        str(not_a_photo): f"no frame could be decoded from {not_a_photo}",
        "9": "camera 9: cannot open",
        "/dev/null": "camera /dev/null: cannot open",  # a device file is a camera, like /dev/video0
        "/dev/video99": "/dev/video99: no such camera",
        "": "the source is empty",
    }
    outputs = ["--out", tmp_path / "out.mp4", "--events", tmp_path / "events.jsonl"]
    for source, reason in cases.items():
        args = ["live", "--source", source, "--headless", "--gallery", tmp_path / "g.db", *outputs]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and reason in result.stderr
        assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "events.jsonl").exists()  # no empty outputs


def test_ffmpegs_own_messages_stay_off_stderr(tmp_path):
    """FFmpeg writes straight to file descriptor 2 (a real process shows it, CliRunner does not): only our
    lines reach a script."""
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not a photo")
    command = [*BIOMETRICS, "live", "--source", str(not_a_photo), "--headless"]
    proc = subprocess.run([*command, "--gallery", str(tmp_path / "g.db")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if "@ 0x" in line] == []  # "[mjpeg @ 0x...] No JPEG data"


def test_a_truncated_file_keeps_its_outputs_and_exits_2(tmp_path, short_clip):
    truncated = _cut(short_clip, short_clip.stat().st_size // 2)
    decodable = _frame_count(truncated)
    assert 0 < decodable < 28  # the header still declares 30
    video, events = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    args = ["live", "--source", truncated, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--out", video, "--events", events])
    assert result.exit_code == 2, result.output
    reason = f"{truncated}: video ended at frame {decodable} of the 30 its header declares (truncated or corrupt?)"
    assert result.stderr.strip().splitlines()[-1] == f"error: {reason}"
    assert len(_events(events)) == decodable and _frame_count(video) == decodable  # finalised and kept


class CutShortWriter:
    """cv2.VideoWriter on a disk that fills during the run: no write reports an error, and the file ends cut
    short, without the index an mp4 keeps at its end."""

    real = cv2.VideoWriter

    def __init__(self, path, *args):
        self.path, self.writer = path, self.real(path, *args)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.writer.isOpened()

    def write(self, frame) -> None:
        self.writer.write(frame)

    def release(self) -> None:
        self.writer.release()
        os.truncate(self.path, os.path.getsize(self.path) // 2)


@pytest.mark.parametrize("free", [0, 2**30], ids=["disk-full", "other-failure"])
def test_a_video_that_could_not_be_completed_is_an_error_naming_it_and_the_old_video_stays(
    tmp_path, short_clip, monkeypatch, free
):
    """Without the check, this run exited 0 with its summary and left an unplayable video."""
    video, events = tmp_path / "out" / "annotated.mp4", tmp_path / "events.jsonl"
    video.parent.mkdir()
    video.write_bytes(b"an earlier run's video")
    monkeypatch.setattr(cv2, "VideoWriter", CutShortWriter)
    monkeypatch.setattr(os, "statvfs", lambda _path: SimpleNamespace(f_bavail=free, f_frsize=4096))
    args = ["live", "--source", short_clip, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--out", video, "--events", events])
    assert result.exit_code == 2 and "frames in" not in result.stdout, result.output
    reason = "No space left on device" if free == 0 else "it reads back with 0 of 30 frames"
    assert result.stderr.strip().splitlines()[-1] == f"error: {video}: the video could not be completed ({reason})"
    assert video.read_bytes() == b"an earlier run's video" and os.listdir(video.parent) == [video.name]
    assert len(_events(events)) == 30  # the other output is finished all the same


class UnopenedWriter(CutShortWriter):
    """OpenCV's writer on a full disk (or for a container it cannot write): not opened, and no reason why."""

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return False


@pytest.mark.parametrize("free", [0, 2**30], ids=["disk-full", "other-failure"])
def test_a_video_that_cannot_be_started_says_whether_the_disk_is_full(tmp_path, short_clip, monkeypatch, free):
    """On a full disk the writer does not open: that was blamed on the file's extension."""
    video = tmp_path / "annotated.mp4"
    monkeypatch.setattr(cv2, "VideoWriter", UnopenedWriter)
    monkeypatch.setattr(os, "statvfs", lambda _path: SimpleNamespace(f_bavail=free, f_frsize=4096))
    args = ["live", "--source", short_clip, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--out", video])
    reason = "cannot write video (No space left on device)" if free == 0 else "cannot write a video with this extens"
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith(f"error: {video}: {reason}")
    assert not video.exists()


def test_events_cut_short_by_a_full_disk_end_on_a_whole_line(tmp_path, short_clip, small_disk):
    """The disk filled mid-line: the file ended in '{"', a line no reader can parse."""
    free = lambda: os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize  # noqa: E731
    with open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * (free() - 6000))
    events = small_disk / "events.jsonl"
    args = ["live", "--source", short_clip, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--events", events])
    assert result.exit_code == 2 and "cannot write events (No space left on device)" in result.stderr, result.output
    text = events.read_text()
    assert text.endswith("\n") and all(json.loads(line)["frame"] >= 0 for line in text.splitlines())


@pytest.mark.parametrize("clip", ["short_clip", "hamilton_clip.mp4"], ids=["when-closed", "mid-run"])
def test_events_that_cannot_be_written_are_an_error_naming_the_file(tmp_path, request, sample, clip):
    """/dev/full: every write fails with ENOSPC, when the last lines are flushed or while the run goes on."""
    source = request.getfixturevalue(clip) if clip == "short_clip" else sample(clip)
    mode = os.stat("/dev/full").st_mode
    args = ["live", "--source", source, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--events", "/dev/full"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == "error: /dev/full: cannot write events (No space left on device)"
    assert os.stat("/dev/full").st_mode == mode  # a device is written to, never made owner-only


def test_the_video_and_events_are_owner_only_in_folders_made_owner_only(tmp_path, short_clip):
    """They show faces and names: 0600 whatever the umask, an earlier events file too, from the start."""
    video, events = tmp_path / "new" / "video" / "annotated.mp4", tmp_path / "events.jsonl"
    events.write_text("an earlier run's events\n")
    events.chmod(0o644)
    previous = os.umask(0o022)
    try:
        args = ["live", "--source", short_clip, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
        result = CliRunner().invoke(cli, [*map(str, args), "--out", video, "--events", events])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert _frame_count(video) == len(_events(events)) == 30
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (video, events, video.parent, video.parent.parent)}
    assert list(modes.values()) == [0o600, 0o600, 0o700, 0o700]


def test_events_to_standard_output_leave_it_to_them_alone(tmp_path, short_clip):
    """`--events -` (README: a camera that runs for days, piped to a rotating log): stdout is JSON Lines only, one
    per frame, and the summary goes to stderr."""
    args = ["live", "--source", short_clip, "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, [*map(str, args), "--events", "-"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()] == list(range(30))
    assert "30 frames in" in result.stderr and sorted(path.name for path in tmp_path.iterdir()) == ["clip.avi"]


def test_events_to_a_reader_that_goes_away_end_the_run_with_141(tmp_path, sample):
    """`live --events - | head -1`: the 275 frames' events fill the pipe, the reader leaves, the run ends as every
    command does when its reader goes away (README, exit codes), without an error line."""
    args = ["live", "--source", sample("hamilton_clip.mp4"), "--headless", "--threads", "2", "--events", "-"]
    command = [sys.executable, "-m", "biometrics", *map(str, args), "--gallery", str(tmp_path / "g.db")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert json.loads(proc.stdout.readline())["frame"] == 0
        proc.stdout.close()
        assert proc.wait(timeout=120) == 141 and b"error" not in proc.stderr.read()


def test_browser_view_without_out_writes_only_events(tmp_path, short_clip):
    events = tmp_path / "events.jsonl"
    args = ["live", "--source", short_clip, "--view", "browser", "--port", "0", "--threads", "2"]
    result = CliRunner().invoke(cli, [*map(str, args), "--gallery", tmp_path / "g.db", "--events", events])
    assert result.exit_code == 0, result.output
    assert "30 frames in" in result.stdout and len(_events(events)) == 30
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.avi", "events.jsonl"]  # no video


def test_a_photo_is_a_one_frame_video(tmp_path, sample):
    args = ["live", "--source", sample("obama.jpg"), "--headless", "--threads", "2", "--gallery", tmp_path / "g.db"]
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    assert ": 1 frame in " in result.stdout and "(detector on 1 frame, 0 faces embedded, 0 dropped)" in result.stdout


class FakeCapture:
    """A cv2.VideoCapture stand-in delivering ``frames`` frames, then failing."""

    def __init__(self, frames: int, opened: bool = True):
        self.left, self.opened = frames, opened

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        self.left -= 1
        return (True, np.zeros((4, 4, 3), np.uint8)) if self.left >= 0 else (False, None)

    def get(self, prop) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0  # a live source declares no frame count

    def release(self) -> None:
        pass


def test_a_dropped_stream_is_reopened_with_back_off_then_given_up():
    captures = iter([FakeCapture(3), FakeCapture(0, opened=False), FakeCapture(2)] + [FakeCapture(0, False)] * 3)
    messages: list[str] = []
    source = FrameSource(
        "rtsp://camera.invalid/stream",
        queue_size=100,
        reconnect_attempts=3,
        backoff_s=0.001,
        notify=messages.append,
        open_capture=lambda _: next(captures),
    )
    received = []
    with pytest.raises(SourceError, match="lost and not back after 3 reconnection attempts"):
        received.extend(source.frames())
    assert [f.index for f in received] == [0, 1, 2, 3, 4]  # 3 frames, reconnected on the 2nd try, 2 more
    assert any(m.endswith(": reconnected") for m in messages) and sum("reconnecting in" in m for m in messages) == 5


def test_a_stream_that_reopens_without_frames_runs_out_of_attempts(serve, short_clip):
    header_only = short_clip.read_bytes()[: short_clip.read_bytes().index(b"movi") + 4]  # opens; no frame
    messages: list[str] = []
    url = serve([header_only] * 10)
    source = FrameSource(url, reconnect_attempts=3, backoff_s=0.001, notify=messages.append)
    with pytest.raises(SourceError, match="no frame could be decoded from stream .* in 4 attempts"):
        list(source.frames())
    assert sum("reconnecting in" in m for m in messages) == 3  # reopening is no success until a frame comes


def test_a_video_over_http_is_read_whole_by_a_slow_reader(serve, short_clip):
    """A served video (it declares its frame count) is a file, not a live stream: a reader slower than the network
    gets every frame, and media time, as from the file itself."""
    source = FrameSource(serve([short_clip.read_bytes()]), queue_size=2)
    received = []
    for frame in source.frames():
        received.append(frame)
        time.sleep(0.01)
    assert [frame.index for frame in received] == list(range(30)) and source.dropped == 0
    assert received[-1].timestamp == pytest.approx(29 / source.fps, abs=0.05)


def test_a_video_over_http_ends_where_it_declares_and_a_drop_resumes_where_it_stopped(serve, short_clip):
    clip = short_clip.read_bytes()
    dropped = _cut(short_clip, len(clip) // 2)
    stopped_at = _frame_count(dropped)
    messages: list[str] = []
    source = FrameSource(serve([dropped.read_bytes(), clip]), queue_size=100, backoff_s=0.001, notify=messages.append)
    frames = list(source.frames())
    assert [frame.index for frame in frames] == list(range(30))  # every frame once, none replayed
    whole = cv2.VideoCapture(str(short_clip))
    assert np.array_equal(frames[stopped_at].image, [whole.read()[1] for _ in range(stopped_at + 1)][-1])
    assert [m for m in messages if "reconnected" in m] == [
        f"{source.label}: reconnected, resuming at frame {stopped_at}"
    ]


def test_a_truncated_video_over_http_gives_up_instead_of_replaying(serve, short_clip):
    truncated = _cut(short_clip, short_clip.stat().st_size // 2).read_bytes()
    source = FrameSource(serve([truncated] * 10), queue_size=100, reconnect_attempts=3, backoff_s=0.001)
    received = []
    with pytest.raises(SourceError, match="not back after 3 reconnection attempts \\(it ends at frame .* of the 30"):
        received.extend(frame.index for frame in source.frames())
    assert received == list(range(len(received))) and 0 < len(received) < 30  # delivered once, never again


def test_a_camera_that_stops_is_an_error_and_a_slow_reader_gets_recent_frames():
    stopping = FrameSource("0", open_capture=lambda _: FakeCapture(2))
    with pytest.raises(SourceError, match="camera 0 stopped delivering frames"):
        list(stopping.frames())

    camera = FrameSource("0", queue_size=2, open_capture=lambda _: FakeCapture(500))
    received = []
    with pytest.raises(SourceError):
        for frame in camera.frames():
            received.append(frame.index)
            time.sleep(0.02)  # a reader slower than the camera
    assert camera.dropped > 0 and len(received) < 500  # stale frames dropped: the queue never grew
    assert received == sorted(received) and received[-1] == 499  # the last frame was the newest


def test_tracker_keeps_ids_for_moving_faces():
    from biometrics.face import Face

    def face(x: float) -> Face:
        return Face(np.array([x, 0, x + 100, 100], np.float32), np.zeros((5, 2)), 0.9)

    tracker = IoUTracker(max_missed_frames=2)
    first = [t.id for t in tracker.update([face(0), face(500)], 0)]
    moved = [t.id for t in tracker.update([face(10), face(510), face(1000)], 1)]
    assert moved == [*first, 3]  # same people keep their ids, a newcomer gets a new one
    tracker.update([face(1000)], 4)
    assert [t.id for t in tracker.tracks] == [3]  # unseen for more than 2 frames: ended


def test_overlay_measures_fps_from_the_second_frame_and_labels_stay_inside(short_clip, pipeline):
    shown: list[float] = []

    class FpsRecorder:
        wants_pixels, closed = False, False

        def show(self, annotated, result, fps):
            shown.append(fps)

        def close(self):
            pass

    run_live(FrameSource(str(short_clip)), LiveRecognizer(pipeline, None), [FpsRecorder()])
    assert len(shown) == 30 and shown[0] == 0.0 and all(fps > 0 for fps in shown[1:])  # no warm-up in the average

    face = Face(np.array([100, 0, 300, 200], np.float32), None, 0.9)  # at the top edge of the frame
    result = FrameResult(0, 0.0, (TrackReport(1, face, "performer", 0.73),), True, 1)
    canvas = annotate(np.zeros((360, 640, 3), np.uint8), result, 0.0)
    inside = canvas[6:40, 104:296]  # below the box's top line, off its sides
    assert (inside == KNOWN_COLOUR).all(axis=2).any()  # the label is drawn inside the box, not above the image
    assert track_label(result.tracks[0]) == "#1 performer 0.73"
    far = Face(np.array([10, 10, 40, 50], np.float32), None, 0.9)  # 30 px wide: someone far from the camera
    assert track_label(TrackReport(2, far, None, 0.21)) == "#2 unknown 0.21 small"


def test_ctrl_c_while_a_frame_is_being_recorded_lets_every_view_finish_it(short_clip, pipeline):
    """The interrupt lands inside one view's show (as a real Ctrl-C can, between the events line and the video
    frame): that frame still reaches every view and is counted, and then the run stops."""
    records: dict[str, list[int]] = {"events": [], "video": []}

    class Recorder:
        wants_pixels, closed = False, False

        def __init__(self, name: str, interrupt_at: int | None = None):
            self.name, self.interrupt_at = name, interrupt_at

        def show(self, annotated, result, fps):
            if result.index == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here: without the deferral, this frame is never recorded
            records[self.name].append(result.index)

        def close(self):
            pass

    views = [Recorder("events", interrupt_at=3), Recorder("video")]
    summary = run_live(FrameSource(str(short_clip)), LiveRecognizer(pipeline, None), views)
    assert summary.stopped and summary.frames == 4
    assert records == {"events": [0, 1, 2, 3], "video": [0, 1, 2, 3]}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _post(url: str, payload: dict, token: str) -> dict:
    headers = {"Content-Type": "application/json", **_bearer(token)}
    request = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=40) as response:
        return json.loads(response.read())


def _get_json(url: str, token: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_bearer(token)), timeout=10) as response:
        return json.loads(response.read(), parse_constant=pytest.fail)  # strict JSON


def _ask(view: BrowserView, method: str, path: str, headers: dict, body: bytes | None = None):
    """One request to ``view``: the response, its body read (a stream's is left unread)."""
    connection = http.client.HTTPConnection("127.0.0.1", view.server.server_port, timeout=10)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    if not response.getheader("Content-Type", "").startswith("multipart/"):
        response.body = response.read()
        connection.close()
    return response


@pytest.fixture
def browser_view(pipeline):
    view = BrowserView(LiveControls(LiveRecognizer(pipeline, None)), port=0)
    yield view
    view.close()


def test_browser_threshold_accepts_only_cosine_similarities(browser_view):
    view = browser_view
    for refused in (5.0, -1.5, math.nan, math.inf, "nan"):
        with pytest.raises(urllib.error.HTTPError) as answer:
            _post(f"{view.url}threshold", {"threshold": refused}, view.token)
        assert answer.value.code == 400
    assert _post(f"{view.url}threshold", {"threshold": -0.25}, view.token) == {"threshold": -0.25}
    assert _get_json(f"{view.url}state.json", view.token)["threshold"] == -0.25


def _show_frame(view: BrowserView, image: np.ndarray | None = None) -> None:
    """Hand ``view`` a frame, as the live loop does: ``image``, or a small black one."""
    view.show(np.zeros((48, 64, 3), np.uint8) if image is None else image, FrameResult(0, 0.0, (), False, 0), 25.0)


def test_every_request_to_the_page_needs_the_runs_token(browser_view, pipeline, tmp_path, sample):
    """Without the token printed at the start (missing, wrong, or a cookie from another run), the page, the
    stream, the state, the threshold and enrolment are all refused 403, and nothing reaches the live loop; opening
    the printed URL sets an HttpOnly cookie and leads to the clean URL, and with the cookie (the page) or a Bearer
    header (a script) everything works."""
    view, json_body = browser_view, {"Content-Type": "application/json"}
    requests = [
        ("GET", "/", None),
        ("GET", "/state.json", None),
        ("GET", "/stream.mjpg", None),
        ("POST", "/threshold", b'{"threshold": 0.05}'),
        ("POST", "/enroll", b'{"name": "obama"}'),
    ]
    wrong = view.token[:-1] + ("A" if view.token[-1] != "A" else "B")
    other_cookies = f'theme="dark"; ,= ,;\xff=a; other={view.token}'  # the token under another page's name
    for credentials in ({}, _bearer(wrong), {"Cookie": f"{view.cookie}={wrong}"}, {"Cookie": other_cookies}):
        for method, path, body in requests:
            answer = _ask(view, method, path, {**json_body, **credentials}, body)
            assert answer.status == 403 and "token" in json.loads(answer.body)["error"], (method, path, credentials)
    assert _ask(view, "GET", f"/?token={wrong}", {}).status == 403
    assert view.controls.threshold != 0.05 and view.controls._requests.empty()

    login = _ask(view, "GET", f"/?token={view.token}", {})
    assert login.status == 303 and login.getheader("Location") == "/"
    cookie = login.getheader("Set-Cookie")
    assert cookie.startswith(f"{view.cookie}={view.token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = _ask(view, "GET", "/", {"Cookie": cookie.split(";")[0]})
    assert page.status == 200 and b'src="/stream.mjpg"' in page.body
    _show_frame(view)
    stream = _ask(view, "GET", "/stream.mjpg", {"Cookie": cookie.split(";")[0]})
    assert stream.status == 200 and stream.readline() == b"--frame\r\n"
    stream.close()
    assert _post(f"{view.url}threshold", {"threshold": 0.5}, view.token) == {"threshold": 0.5}

    link = GalleryLink(tmp_path / "g.db", None, EmbedderId.of(pipeline.embedder))
    frame, nobody_tracked = Frame(0, 0.0, load_image(sample("obama.jpg"))), SimpleNamespace(tracks=[])
    answered = threading.Event()

    def live_loop() -> None:
        while not answered.is_set():
            view.controls.serve_requests(link, frame, nobody_tracked)
            time.sleep(0.01)

    loop = threading.Thread(target=live_loop)
    loop.start()
    try:
        answer = _post(f"{view.url}enroll", {"name": "obama"}, view.token)
    finally:
        answered.set()
        loop.join()
    assert answer == {"message": "enrolled obama (1 template(s))"}


def test_browser_requests_the_page_would_never_send_are_refused_in_json_and_enrol_no_one(browser_view):
    """Bodies that are no JSON object, names that are no string, a track or threshold of the wrong type, a huge or
    negative Content-Length, another method: each a JSON 4xx/5xx answer, the server still up, no enrolment asked."""
    view = browser_view

    def send(method: str, path: str, body: bytes, length: str | None = None) -> tuple[int, dict]:
        headers = {
            "Content-Type": "application/json",
            "Content-Length": length or str(len(body)),
            **_bearer(view.token),
        }
        answer = _ask(view, method, path, headers, body)
        return answer.status, json.loads(answer.body)

    bodies = [
        b"[]",
        b"5",
        b"[" * 100_000,
        b"\xff\xfe",
        b'{"name": null}',
        b'{"name": {"a": 1}}',
        b'{"name": 123}',
        b'{"name": "ann", "track": 1.5}',
        b'{"name": "ann", "track": true}',
    ]
    for body in bodies:
        status, answer = send("POST", "/enroll", body)
        assert status == 400 and answer["error"].startswith("bad request"), (body[:20], answer)
    assert send("POST", "/threshold", b'{"threshold": true}')[0] == 400
    assert send("POST", "/threshold", b'{"threshold": 1' + b"0" * 400 + b"}")[0] == 400  # too large a float
    for length in ("-1", str(10**10), "many"):
        assert send("POST", "/enroll", b"{}", length)[0] == 400
    status, answer = send("DELETE", "/enroll", b"")
    assert status == 501 and "error" in answer
    assert view.controls._requests.empty()  # nothing reached the live loop
    assert _post(f"{view.url}threshold", {"threshold": 0.5}, view.token) == {"threshold": 0.5}  # still serving


def test_requests_from_other_sites_are_refused_and_no_answer_can_be_embedded_or_framed(browser_view):
    """Another site's <img src=".../stream.mjpg"> (a browser marks it Sec-Fetch-Site: cross-site, or same-site from
    another port of 127.0.0.1) is refused even with the cookie; every answer, refusals and the stream included,
    tells the browser not to embed, frame, sniff, cache it, or send the page's URL (the token) as a Referer."""
    view, token = browser_view, _bearer(browser_view.token)
    for site in ("cross-site", "same-site"):
        answer = _ask(view, "GET", "/stream.mjpg", {**token, "Sec-Fetch-Site": site})
        assert answer.status == 403 and "other sites" in json.loads(answer.body)["error"]
    _show_frame(view)
    answers = [
        _ask(view, "GET", "/", {**token, "Sec-Fetch-Site": "same-origin"}),
        _ask(view, "GET", "/state.json", {**token, "Sec-Fetch-Site": "none"}),
        _ask(view, "GET", "/stream.mjpg", token),
        _ask(view, "GET", f"/?token={view.token}", {}),
        _ask(view, "GET", "/nothing", token),
        _ask(view, "GET", "/state.json", {}),
    ]
    assert [answer.status for answer in answers] == [200, 200, 200, 303, 404, 403]
    for answer in answers:
        assert answer.getheader("Cross-Origin-Resource-Policy") == "same-origin"
        assert answer.getheader("X-Content-Type-Options") == "nosniff"
        assert answer.getheader("Content-Security-Policy") == "frame-ancestors 'none'"
        assert answer.getheader("X-Frame-Options") == "DENY"
        assert answer.getheader("Referrer-Policy") == "no-referrer"
        assert answer.getheader("Cache-Control") == "no-store"
    answers[2].close()


def test_a_stalled_request_is_dropped_but_a_paused_viewer_keeps_its_stream(pipeline, monkeypatch):
    """A body that stops arriving, or a connection that sends nothing, frees its thread after the request timeout;
    a viewer that stopped reading for longer (a hidden tab), while the server's writes to it waited, keeps its
    stream and gets the latest frame when it reads again."""
    monkeypatch.setattr(web, "REQUEST_TIMEOUT_S", 0.3)
    view = BrowserView(LiveControls(LiveRecognizer(pipeline, None)), port=0)
    port = view.server.server_port
    headers = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {view.token}\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as stalled:
            body = "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"  # 2 bytes of 100
            stalled.sendall(f'POST /threshold HTTP/1.1\r\n{headers}{body}"'.encode())
            started = time.monotonic()
            answer = stalled.makefile("rb").read()
            assert time.monotonic() - started < 3
            assert answer.startswith(b"HTTP/1.0 400") and b"did not arrive within 0.3 s" in answer
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            assert idle.recv(1) == b""  # closed by the server

        noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)  # large JPEGs: buffers fill
        with socket.socket() as viewer:
            viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            viewer.settimeout(10)
            viewer.connect(("127.0.0.1", port))
            viewer.sendall(f"GET /stream.mjpg HTTP/1.1\r\n{headers}\r\n".encode())
            paused_until = time.monotonic() + 1.5  # five request timeouts without reading
            while time.monotonic() < paused_until:
                _show_frame(view, noise)
                time.sleep(0.02)
            _show_frame(view)  # the small one
            lengths = (line.split()[1] for line in viewer.makefile("rb") if line.startswith(b"Content-Length: "))
            assert any(int(length) < 10_000 for length in lengths), "the stream ended before the latest frame"
    finally:
        view.close()


def test_a_fifth_viewer_is_turned_away_until_one_leaves(browser_view):
    view, token = browser_view, _bearer(browser_view.token)
    viewers = [_ask(view, "GET", "/stream.mjpg", token) for _ in range(web.MAX_STREAMS)]
    assert [viewer.status for viewer in viewers] == [200] * 4
    fifth = _ask(view, "GET", "/stream.mjpg", token)
    assert fifth.status == 503 and "viewers" in json.loads(fifth.body)["error"]
    assert _ask(view, "GET", "/state.json", token).status == 200  # the page itself still answers
    viewers.pop().close()
    deadline = time.monotonic() + 10
    while (newcomer := _ask(view, "GET", "/stream.mjpg", token)).status != 200:  # the left one's slot frees
        assert time.monotonic() < deadline, "the slot of a viewer who left was never freed"  # on its next frame
        _show_frame(view)
        time.sleep(0.05)
    for viewer in [*viewers, newcomer]:
        viewer.close()


def test_an_unforeseen_failure_tells_the_page_no_paths_and_stderr_the_details(browser_view, monkeypatch, capsys):
    """A full disk under the gallery: the page hears that its request failed; the message, which may hold file
    paths, goes to the stderr of the live run only."""
    failed = Future()
    failed.set_exception(sqlite3.OperationalError("unable to open database file /home/someone/private/g.db"))
    monkeypatch.setattr(LiveControls, "request_enrolment", lambda *_args: failed)
    with pytest.raises(urllib.error.HTTPError) as answer:
        _post(f"{browser_view.url}enroll", {"name": "obama"}, browser_view.token)
    error = json.loads(answer.value.read())["error"]
    assert answer.value.code == 500 and "/home/someone" not in error and "stderr" in error
    assert "OperationalError: unable to open database file /home/someone/private/g.db" in capsys.readouterr().err


def test_a_browser_enrolment_warns_when_the_face_matches_none_of_the_persons_or_someone_elses(
    performer_gallery, pipeline, sample
):
    """At the camera the face is enrolled anyway (a view not yet recognised is what re-enrolment is for), with
    the reason to look twice in the message the page shows."""
    capture = cv2.VideoCapture(str(sample("hamilton_clip.mp4")))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    frame = Frame(100, 4.0, capture.read()[1])
    capture.release()
    link = GalleryLink(performer_gallery, None, EmbedderId.of(pipeline.embedder))
    message, _ = link.enroll(pipeline, "performer", frame, None, pipeline.threshold)
    assert message == "enrolled performer (2 template(s))"
    twice, _ = link.enroll(pipeline, "someone", frame, None, pipeline.threshold)
    assert twice.startswith("enrolled someone (1 template(s)); live frame 100 also matches 'performer', already")
    stranger, _ = link.enroll(pipeline, "someone", Frame(0, 0.0, load_image(sample("biden.jpg"))), None, 0.4)
    assert stranger.startswith("enrolled someone (2 template(s)); live frame 0 matches none of someone's other photos")


def test_the_index_a_browser_enrolment_leaves_is_the_gallerys(performer_gallery, pipeline, sample):
    """The live view searches, from the next frame on, the index the enrolment returns: exactly what reading the
    gallery would give, whether the person is new (added to the index read for the check) or not (read again)."""
    link = GalleryLink(performer_gallery, None, EmbedderId.of(pipeline.embedder))
    probes = np.stack(
        [pipeline.embed_one(load_image(sample(photo)))[0].embedding for photo in ("biden2.jpg", "obama.jpg")]
    )
    for name, photo in [("biden", "biden.jpg"), ("performer", "obama2.jpg"), ("biden", "obama3.jpg")]:
        _, index = link.enroll(pipeline, name, Frame(0, 0.0, load_image(sample(photo))), None, 0.4)
        read = link.load_index()
        assert index.names == read.names and len(index) == len(read)
        assert index.search(probes, 3) == read.search(probes, 3)


def test_browser_page_in_headless_chromium(tmp_path, sample):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the browser page is not tested")
    port, gallery = _free_port(), tmp_path / "gallery.db"
    env = dict(os.environ, BIOMETRICS_THREADS="2")
    command = [*BIOMETRICS, "live", "--source", str(sample("hamilton_clip.mp4")), "--view", "browser"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--gallery", str(gallery)], env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        printed = next(line for line in server.stderr if line.startswith("live view at "))
        login = printed.split()[3]  # the page's URL with the run's token, as a user copies it
        assert login.startswith(f"{base}/?token=")
        token = login.partition("=")[2]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get_json(f"{base}/state.json", token)["frame"] is not None:
                    break
            except OSError:
                time.sleep(0.2)
        shot = tmp_path / "page.png"
        subprocess.run(
            [
                chromium,
                *[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1100,500",
                    "--timeout=3000",
                ],
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--screenshot={shot}",
                login,
            ],
            capture_output=True,
            timeout=60,
        )
        page = cv2.imread(str(shot))
        assert page is not None and page.shape == (500, 1100, 3)
        stream = page[:360, :640]  # the MJPEG <img> sits in the top-left corner, at the clip's size
        assert stream.std() > 20 and not np.array_equal(stream, page[:360, 640:1280])  # a picture, not a blank

        assert _post(f"{base}/threshold", {"threshold": 0.5}, token) == {"threshold": 0.5}
        enrolled = _post(f"{base}/enroll", {"name": "performer", "track": None}, token)
        assert enrolled["message"].startswith("enrolled performer")
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with Gallery(gallery) as stored:
        assert [p.name for p in stored.people()] == ["performer"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_cleanly_with_complete_outputs_and_a_summary(tmp_path, sample, stop):
    video, events = tmp_path / "annotated.mp4", tmp_path / "events.jsonl"
    command = [*BIOMETRICS, "live", "--source", str(sample("video_1080p.mp4")), "--headless", "--threads", "2"]
    process = subprocess.Popen(
        [*command, "--out", str(video), "--events", str(events), "--gallery", str(tmp_path / "g.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not events.exists() or events.stat().st_size == 0):
        time.sleep(0.1)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in stderr and "Traceback" not in stderr
    lines = _events(events)  # every line written is complete JSON
    assert lines and [line["frame"] for line in lines] == list(range(len(lines)))
    assert f": {len(lines)} frame" in stdout and " fps (detector on " in stdout  # the summary of a normal end
    assert _frame_count(video) == len(lines)  # a playable video: the mp4 was finalised


def test_a_browser_enrolment_moves_the_threshold_with_the_gallery_until_it_is_set_by_hand(
    performer_gallery, pipeline, sample
):
    """live sets its threshold for the gallery's size; each enrolment from the page adds a template, and the
    threshold follows (the page's message says where to), unless the slider chose one."""
    link = GalleryLink(performer_gallery, None, EmbedderId.of(pipeline.embedder))
    controls = LiveControls(LiveRecognizer(pipeline, link.load_index()), lambda templates: 0.3 + templates / 100)
    frame, nobody_tracked = Frame(0, 0.0, load_image(sample("biden.jpg"))), SimpleNamespace(tracks=[])

    def enrol(name: str) -> str:
        done = controls.request_enrolment(name, None)
        controls.serve_requests(link, frame, nobody_tracked)
        return done.result(timeout=0)

    assert enrol("biden").endswith("; threshold 0.3200 for 2 templates")
    assert controls.threshold == pytest.approx(0.32)
    controls.threshold = 0.45  # the slider
    assert not enrol("biden").endswith("for 3 templates") and controls.threshold == 0.45
    assert "also matches" not in enrol(" biden ")  # as typed on the page: biden, no look-alike of himself


def test_a_browser_enrolment_the_page_gave_up_on_never_happens_and_a_failure_ends_no_run(
    performer_gallery, pipeline, sample, monkeypatch
):
    """An enrolment the page stopped waiting for (the loop was busy reconnecting a stream) is withdrawn, not
    carried out unannounced frames later; an unforeseen failure (a full disk) is the request's answer, and the
    live loop goes on."""
    link = GalleryLink(performer_gallery, None, EmbedderId.of(pipeline.embedder))
    controls = LiveControls(LiveRecognizer(pipeline, link.load_index()))
    frame, nobody_tracked = Frame(0, 0.0, load_image(sample("biden.jpg"))), SimpleNamespace(tracks=[])
    withdrawn = controls.request_enrolment("biden", None)
    assert withdrawn.cancel()  # what the page's handler does on its time-out
    controls.serve_requests(link, frame, nobody_tracked)
    with Gallery(performer_gallery) as gallery:
        assert "biden" not in [person.name for person in gallery.people()]

    def disk_full(*_args, **_kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(GalleryLink, "enroll", disk_full)
    failed = controls.request_enrolment("biden", None)
    controls.serve_requests(link, frame, nobody_tracked)  # returns: the run is not ended
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        failed.result(timeout=0)


def test_a_live_run_that_cannot_start_leaves_the_events_file_as_it_was(tmp_path, sample):
    """The page's port taken: the run never starts, and an events file from an earlier run is not emptied."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"frame": 0}\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["live", "--source", sample("obama.jpg"), "--view", "browser", "--port", port, "--events", events]
        result = CliRunner().invoke(cli, [*map(str, args), "--gallery", str(tmp_path / "g.db")])
    assert result.exit_code == 2 and "error: " in result.stderr
    assert events.read_text() == '{"frame": 0}\n'


def test_live_starts_on_an_empty_prepared_gallery_file(pipeline, tmp_path):
    """An empty file made beforehand (0600, for the gallery to come) is no gallery yet, as for `enroll`."""
    prepared = tmp_path / "gallery.db"
    prepared.touch(mode=0o600)
    assert GalleryLink(prepared, None, EmbedderId.of(pipeline.embedder)).load_index() is None
