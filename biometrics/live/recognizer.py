"""Per-frame recognition for video: detect every few frames, track in between, embed a track only when needed."""

from __future__ import annotations

from dataclasses import dataclass

from biometrics.face import Face
from biometrics.gallery import Match, TemplateIndex
from biometrics.live.capture import Frame
from biometrics.live.tracker import IoUTracker, Track
from biometrics.pipeline import FacePipeline


@dataclass(frozen=True)
class TrackReport:
    """What a frame shows about one tracked face (never its embedding)."""

    id: int
    face: Face  # as last detected
    identity: str | None  # None: unknown
    score: float | None  # best gallery similarity when last embedded; None: not embedded or empty gallery

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "box": [round(float(v), 1) for v in self.face.box],
            "identity": self.identity,
            "score": None if self.score is None else round(self.score, 4),
        }


@dataclass(frozen=True)
class FrameResult:
    index: int
    timestamp: float
    tracks: tuple[TrackReport, ...]
    detected: bool  # whether the detector ran on this frame
    embedded: int  # faces embedded on this frame

    def to_event(self) -> dict:
        """One line of ``events.jsonl``."""
        return {
            "frame": self.index,
            "time": round(self.timestamp, 3),
            "tracks": [track.to_dict() for track in self.tracks],
        }


class LiveRecognizer:
    """Turns frames into tracked, identified faces.

    The detector runs every ``detect_every`` frames; a track is embedded when it starts, then again after
    ``refresh_known`` frames if it was identified or ``retry_unknown`` frames if not (a face turning towards
    the camera gets another chance quickly). ``threshold`` can change at any time: identities are decided
    from each track's stored best match when a frame is reported, so no re-embedding is needed.
    """

    def __init__(
        self,
        pipeline: FacePipeline,
        index: TemplateIndex | None,
        *,
        threshold: float | None = None,
        detect_every: int = 2,
        refresh_known: int = 30,
        retry_unknown: int = 6,
    ):
        self.pipeline = pipeline
        self.index = index
        self.threshold = pipeline.threshold if threshold is None else threshold
        self.detect_every = detect_every
        self.refresh_known = refresh_known
        self.retry_unknown = retry_unknown
        self.tracker = IoUTracker(max_missed_frames=3 * detect_every)
        self._processed = 0

    def use_index(self, index: TemplateIndex | None) -> None:
        """Search a new gallery index (after an enrolment); every track is re-identified on its next detection."""
        self.index = index
        for track in self.tracker.tracks:
            track.embedded_at = None

    def process(self, frame: Frame) -> FrameResult:
        detected = self._processed % self.detect_every == 0
        self._processed += 1
        embedded = 0
        if detected:
            tracks = self.tracker.update(self.pipeline.detect(frame.image), frame.index)
            due = [t for t in tracks if t.last_detected == frame.index and self._needs_embedding(t, frame.index)]
            if due and self.index is not None and len(self.index):
                faces = self.pipeline.embed(frame.image, [track.face for track in due])
                for track, found in zip(due, self.index.identify(faces, self.threshold, k=1), strict=True):
                    track.match, track.embedded_at = found.best, frame.index
                embedded = len(due)
        reports = tuple(self._report(track) for track in self.tracker.tracks)
        return FrameResult(frame.index, frame.timestamp, reports, detected, embedded)

    def _needs_embedding(self, track: Track, frame_index: int) -> bool:
        if track.embedded_at is None:
            return True
        identified = track.match is not None and track.match.score >= self.threshold
        return frame_index - track.embedded_at >= (self.refresh_known if identified else self.retry_unknown)

    def _report(self, track: Track) -> TrackReport:
        match: Match | None = track.match
        identity = match.name if match is not None and match.score >= self.threshold else None
        return TrackReport(track.id, track.face, identity, None if match is None else match.score)
