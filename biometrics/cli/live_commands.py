"""``biometrics live``: recognise faces in a camera, video file or stream, in a browser, a window or headless.

Registered on the ``biometrics`` group by ``biometrics.cli.main`` (import that module, not this one).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from biometrics.cli.gallery_commands import (
    gallery_options,
    gallery_pipeline,
    search_threshold,
    search_threshold_options,
)
from biometrics.cli.main import pipeline_options, refuse_overwriting, sigterm_as_interrupt


@click.command()
@click.option(
    "--source",
    default="0",
    show_default=True,
    help="Camera index or device (/dev/video0), video file, or stream URL (rtsp, rtmp, http(s), udp, tcp, srt).",
)
@gallery_options
@pipeline_options
@search_threshold_options
@click.option("--headless", is_flag=True, help="No view: process as fast as possible (servers, tests, benchmarks).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the annotated video.")
@click.option(
    "--events",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write one JSON line per frame: index, time, tracks (id, box, identity, score); - for standard output "
    "(the summary then goes to stderr).",
)
@click.option(
    "--view",
    type=click.Choice(["auto", "browser", "window"]),
    default="auto",
    show_default=True,
    help="Without --headless: an OpenCV window if this OpenCV has a GUI, else the browser page.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Browser page port.")
@click.option(
    "--detect-every", type=click.IntRange(1), default=2, show_default=True, help="Run the detector every N frames."
)
@click.option(
    "--keep-images", is_flag=True, help="Keep the enrolled face (with a margin) of a browser enrolment in the gallery."
)
def live(
    source,
    gallery_path,
    key_file,
    detector,
    embedder,
    threads,
    max_side,
    threshold,
    fpir,
    headless,
    out,
    events,
    view,
    port,
    detect_every,
    keep_images,
):
    """Live recognition: capture, detect, track, identify, and draw boxes, names, scores and FPS."""
    import cv2

    from biometrics.gallery import EmbedderId, default_gallery_path, load_key, threshold_by_size
    from biometrics.live.capture import FrameSource, is_camera, is_stream
    from biometrics.live.recognizer import LiveRecognizer
    from biometrics.live.session import GalleryLink, LiveControls, run_live
    from biometrics.live.views import STDOUT, HeadlessRecorder, WindowView, gui_available

    def notify(message: str) -> None:
        click.echo(message, err=True)

    # Our messages say what failed, once: OpenCV's own log, and FFmpeg's (read when its backend first opens a
    # source; -8 is AV_LOG_QUIET), stay quiet unless the user set them.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

    video = {} if is_camera(source) or is_stream(source) else {"the --source video": source}
    refuse_overwriting({"--out": out, "--events": None if events == STDOUT else events}, video)
    pipeline = gallery_pipeline(gallery_path, key_file, detector, embedder, threads, max_side, threshold)
    link = GalleryLink(
        gallery_path or default_gallery_path(), load_key(key_file), EmbedderId.of(pipeline.embedder), keep_images
    )
    index = link.load_index()
    threshold, set_for = search_threshold(pipeline, threshold, fpir, 0 if index is None else len(index))
    if set_for and index is not None:
        notify(f"threshold {threshold:.4f} {set_for.describe()}")
        if warning := set_for.warning():
            notify(f"warning: {warning}")
    recognizer = LiveRecognizer(pipeline, index, threshold=threshold, detect_every=detect_every)
    frames = FrameSource(source, pace=not headless, notify=notify)
    views, controls = [], None
    if not headless:
        if view == "auto":
            view = "window" if gui_available() else "browser"
        elif view == "window" and not gui_available():
            notify("this OpenCV has no GUI (opencv-python-headless, or no display): using the browser page instead")
            view = "browser"
        if view == "window":
            views.append(WindowView())
        else:
            from biometrics.live.web import BrowserView

            # set for the gallery's size (not --threshold): the threshold follows enrolments
            follow = threshold_by_size(pipeline.embedder.false_match_thresholds, set_for.fpir) if set_for else None
            controls = LiveControls(recognizer, follow)
            browser = BrowserView(controls, port=port)
            views.append(browser)
            notify(f"live view at {browser.login_url} (Ctrl-C to stop)")
    if index is None:
        page = ", or on this page" if controls is not None else ""
        notify(
            f"no gallery at {link.path} yet: every face is unknown until someone is enrolled (`biometrics enroll "
            f"NAME IMAGE...`{page})"
        )
    if out or events:  # opened once the page serves: a run that cannot start leaves an events file as it was
        try:
            views.insert(0, HeadlessRecorder(out, events, frames.fps))
        except BaseException:
            for opened in views:
                opened.close()
            raise
    with sigterm_as_interrupt():  # the video is finalised and the summary printed
        summary = run_live(frames, recognizer, views, controls, link)
    if summary.stopped:
        notify("stopped")
    click.echo(f"{frames.label}: {summary}", err=events == STDOUT)  # stdout holds only events then


COMMANDS = (live,)
