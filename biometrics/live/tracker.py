"""Tracking by detection: faces of consecutive detections are linked by box overlap (IoU).

A track carries its identity between embeddings, so a face is embedded when it appears and then only every
so often, not on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biometrics.detection import box_iou
from biometrics.face import Face
from biometrics.gallery import Match


@dataclass
class Track:
    """One face followed over frames. ``match`` is its best gallery match when last embedded (None: never)."""

    id: int
    face: Face
    last_detected: int
    match: Match | None = None
    embedded_at: int | None = None


class IoUTracker:
    """Greedy IoU association; a track not detected for ``max_missed_frames`` frames ends."""

    def __init__(self, iou_threshold: float = 0.3, max_missed_frames: int = 10):
        self.iou_threshold = iou_threshold
        self.max_missed_frames = max_missed_frames
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, faces: list[Face], frame_index: int) -> list[Track]:
        """Link this frame's detections to the tracks; returns the tracks that are alive."""
        unmatched = list(range(len(faces)))
        if self.tracks and faces:
            overlap = box_iou(np.array([t.face.box for t in self.tracks]), np.array([f.box for f in faces]))
            for flat in np.argsort(-overlap, axis=None):
                track_index, face_index = np.unravel_index(flat, overlap.shape)
                if overlap[track_index, face_index] < self.iou_threshold:
                    break
                track = self.tracks[track_index]
                if face_index in unmatched and track.last_detected != frame_index:
                    track.face, track.last_detected = faces[face_index], frame_index
                    unmatched.remove(face_index)
        self.tracks = [t for t in self.tracks if frame_index - t.last_detected <= self.max_missed_frames]
        for face_index in unmatched:
            self.tracks.append(Track(self._next_id, faces[face_index], frame_index))
            self._next_id += 1
        return self.tracks
