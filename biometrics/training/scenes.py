"""Training scenes for a face detector, composed from single-face training photos and their pseudo-labels.

LFW, CelebA and UTKFace show one large face per image; WIDER-style scenes hold many faces from ~10 px to the
full frame. A scene is an n x n grid (n = 1..4) of cells; each cell shows one training image scaled so its main
face gets a log-uniform size that fits the cell, shifted at random inside it. Cells never overlap, so no face
hides another; the canvas under and between them is a smooth random texture, or (``photo_background``) a
training photo enlarged to fill it, whose faces stay labels where the cells leave them visible. Faces cut to
less than ``min_visible`` of their area are dropped. Then a horizontal flip (landmarks swap sides), colour and
blur jitter, and the optional hard cases (rotation, occlusion, low resolution, grey).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.imaging import load_image
from biometrics.training.pseudo_labels import PseudoLabels

MIRRORED_LANDMARKS = [1, 0, 2, 4, 3]  # a flip turns the eye seen on the left into the one seen on the right


@dataclass
class Scene:
    """One training image (BGR uint8) and its faces: boxes Mx4, landmarks Mx5x2 (NaN if unknown), scores M."""

    image: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class SceneSpec:
    size: int = 320
    grid: tuple[int, ...] = (1, 1, 2, 2, 3, 4)  # drawn uniformly: one-cell scenes twice as often
    min_face: float = 10.0
    max_face_fraction: float = 0.9  # of the cell
    min_visible: float = 0.6
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.25
    blur: float = 0.15
    min_score: float = 0.3  # pseudo-faces the ensemble is less sure of are not labels
    clutter: int = 0  # up to this many distractors (text, shapes) drawn off the faces: hard negatives
    rotate: float = 0.0  # in-plane rotation of each cell's photo, up to this many degrees either way
    occlude: float = 0.0  # chance that a face gets a random block over part of it (hands, mics, hats)
    degrade: float = 0.0  # chance of a low-resolution, noisy scene (downscaled 1.5-4x and back, sensor noise)
    grayscale: float = 0.0
    photo_background: float = 0.0  # chance that a photo, not a texture, lies under the cells (no photo edges)


def compose_scene(labels: PseudoLabels, rng: np.random.Generator, spec: SceneSpec) -> Scene:
    """A random scene from random training images (see the module docstring)."""
    n = int(rng.choice(spec.grid))
    cell = spec.size // n
    canvas = _background(spec.size, rng)
    boxes, landmarks, scores = [], [], []
    under = None
    if spec.photo_background and rng.random() < spec.photo_background:
        under = _photo_under(canvas, labels, rng, spec)
        covered = np.zeros(canvas.shape[:2], bool)
    for row in range(n):
        for col in range(n):
            image, faces = _random_photo(labels, rng, spec)
            main = max(range(len(faces)), key=lambda i: _width(labels.boxes[faces[i]]), default=None)
            reference = _width(labels.boxes[faces[main]]) if main is not None else max(image.shape[:2]) / 2
            largest = max(spec.min_face * 1.01, spec.max_face_fraction * cell)
            face_size = np.exp(rng.uniform(np.log(spec.min_face), np.log(largest)))
            scale = face_size / max(reference, 1.0)
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
            face_boxes, face_points = labels.boxes[faces] * scale, labels.landmarks[faces] * scale
            if spec.rotate and main is not None:
                angle = rng.uniform(-spec.rotate, spec.rotate)
                scaled, face_boxes, face_points = _rotate(scaled, face_boxes, face_points, angle, face_boxes[main])
            # Offset of the scaled image in the cell: random, but keeping the main face inside the cell.
            anchor = face_boxes[main] if main is not None else np.array([0, 0, *scaled.shape[1::-1]])
            low = -anchor[:2]
            high = cell - anchor[2:]
            offset = rng.uniform(np.minimum(low, high), np.maximum(low, high))
            x0, y0 = int(round(offset[0])), int(round(offset[1]))
            pasted = _paste(canvas, scaled, col * cell + x0, row * cell + y0, (col * cell, row * cell, cell))
            if under is not None and pasted is not None:
                covered[pasted[1] : pasted[3], pasted[0] : pasted[2]] = True
            shift = np.array([col * cell + x0, row * cell + y0], np.float32)
            placed = zip(face_boxes + np.tile(shift, 2), face_points + shift, labels.scores[faces], strict=True)
            for box, points, score in placed:
                clipped = _visible(box, (col * cell, row * cell), ((col + 1) * cell, (row + 1) * cell), spec)
                if clipped is None:
                    continue
                if spec.occlude and rng.random() < spec.occlude:
                    _occlude(canvas, clipped, rng)
                boxes.append(clipped)
                landmarks.append(points)
                scores.append(score)
    if under is not None:
        for box, points, score in zip(*under, strict=True):
            x1, y1, x2, y2 = box.astype(int)
            if 1 - covered[y1:y2, x1:x2].mean() >= spec.min_visible:
                boxes.append(box)
                landmarks.append(points)
                scores.append(score)
    _draw_clutter(canvas, boxes, rng, spec.clutter)
    scene = Scene(
        canvas,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(landmarks, np.float32).reshape(-1, 5, 2),
        np.asarray(scores, np.float32),
    )
    if rng.random() < spec.flip:
        scene = flip_scene(scene)
    _jitter(scene.image, rng, spec)
    if spec.degrade and rng.random() < spec.degrade:
        _degrade(scene.image, rng)
    if spec.grayscale and rng.random() < spec.grayscale:
        scene.image[:] = cv2.cvtColor(cv2.cvtColor(scene.image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return scene


def _random_photo(labels: PseudoLabels, rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """A random training photo and the rows of its faces that are labels (ensemble score >= ``min_score``)."""
    image_id = int(rng.integers(len(labels.paths)))
    rows = labels.faces_of(image_id)
    faces = np.flatnonzero(labels.scores[rows] >= spec.min_score) + rows.start
    return load_image(labels.paths[image_id]), faces


def _visible(box: np.ndarray, low: tuple[int, int], high: tuple[int, int], spec: SceneSpec) -> np.ndarray | None:
    """``box`` clipped to the region ``low``..``high``, or None if the clip leaves less than ``min_visible`` of it."""
    clipped = np.clip(box, [*low, *low], [*high, *high])
    if _area(clipped) < spec.min_visible * _area(box) or _width(clipped) < 2:
        return None
    return clipped


def _photo_under(canvas: np.ndarray, labels: PseudoLabels, rng: np.random.Generator, spec: SceneSpec):
    """Fill ``canvas`` with a random training photo, enlarged to cover it (less if its face would outgrow
    ``max_face_fraction``), at a random offset; its faces (boxes, landmarks, scores) in canvas coordinates,
    those the canvas edge cuts below ``min_visible`` left out."""
    image, faces = _random_photo(labels, rng, spec)
    size = canvas.shape[0]
    scale = size / min(image.shape[:2]) * rng.uniform(1.0, 1.6)
    if len(faces):
        scale = min(scale, spec.max_face_fraction * size / max(_width(labels.boxes[i]) for i in faces))
    scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x = int(rng.integers(min(0, size - scaled.shape[1]), max(0, size - scaled.shape[1]) + 1))
    y = int(rng.integers(min(0, size - scaled.shape[0]), max(0, size - scaled.shape[0]) + 1))
    _paste(canvas, scaled, x, y, (0, 0, size))
    shift = np.array([x, y], np.float32)
    boxes, points, scores = [], [], []
    for i in faces:
        clipped = _visible(labels.boxes[i] * scale + np.tile(shift, 2), (0, 0), (size, size), spec)
        if clipped is not None:
            boxes.append(clipped)
            points.append(labels.landmarks[i] * scale + shift)
            scores.append(labels.scores[i])
    return boxes, points, scores


def _rotate(image: np.ndarray, boxes: np.ndarray, points: np.ndarray, angle: float, around: np.ndarray):
    """Rotate a photo about the centre of box ``around``; each face's new box bounds its rotated inscribed
    ellipse (a rotated face's box should not grow by its corners), landmarks move exactly."""
    centre = (float(around[0] + around[2]) / 2, float(around[1] + around[3]) / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    size = image.shape[1::-1]
    rotated = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 @ matrix[:, :2].T + matrix[:, 2]
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    half = np.column_stack([np.hypot(half[:, 0] * cos, half[:, 1] * sin), np.hypot(half[:, 0] * sin, half[:, 1] * cos)])
    moved = points @ matrix[:, :2].T + matrix[:, 2]  # NaN landmarks stay NaN
    return rotated, np.hstack([centres - half, centres + half]).astype(np.float32), moved.astype(np.float32)


def _occlude(canvas: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> None:
    """A flat or noisy block 30-70% of the face's width and 30-60% of its height, over one of its sides or inside
    it (hands, microphones, hats)."""
    x1, y1, x2, y2 = box
    width, height = (x2 - x1) * rng.uniform(0.3, 0.7), (y2 - y1) * rng.uniform(0.3, 0.6)
    left = rng.choice([x1 - width / 3, x2 - width * 2 / 3, rng.uniform(x1, x2 - width)])
    top = rng.choice([y1 - height / 3, y2 - height * 2 / 3, rng.uniform(y1, y2 - height)])
    x, y = int(max(left, 0)), int(max(top, 0))
    patch = canvas[y : int(top + height), x : int(left + width)]
    colour = rng.integers(0, 256, 3)
    patch[:] = np.clip(colour + rng.normal(0, rng.uniform(0, 20), patch.shape), 0, 255).astype(np.uint8)


def _degrade(image: np.ndarray, rng: np.random.Generator) -> None:
    """What a small, cheap or distant camera gives: lost resolution, then sensor noise."""
    size = image.shape[1::-1]
    factor = rng.uniform(1.5, 4)
    small = cv2.resize(image, (int(size[0] / factor), int(size[1] / factor)), interpolation=cv2.INTER_AREA)
    noisy = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR) + rng.normal(0, rng.uniform(0, 8), image.shape)
    image[:] = np.clip(noisy, 0, 255).astype(np.uint8)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random colour texture: uncovered canvas should not teach "a face is a rectangle on flat grey"."""
    coarse = rng.integers(0, 256, (int(rng.integers(2, 9)),) * 2 + (3,), dtype=np.uint8)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.standard_normal(texture.shape, dtype=np.float32) * rng.uniform(0, 12)
    return np.clip(texture + noise, 0, 255).astype(np.uint8)


CLUTTER_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
)
CLUTTER_CHARACTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@&%$#"))


def _draw_clutter(canvas: np.ndarray, faces: list[np.ndarray], rng: np.random.Generator, count: int) -> None:
    """Draw up to ``count`` distractors - text, circles, ellipses, boxes - where they cover no face.

    The source photos hold faces and little else, so a student trained on them alone fired, with high scores, on
    the letters, signs and round shapes of WIDER scenes. Each distractor is kept off every labelled face (box
    grown by 10%) so no label is hidden.
    """
    guards = [np.asarray(box) + np.array([-1, -1, 1, 1]) * 0.1 * _width(np.asarray(box)) for box in faces]
    size = canvas.shape[0]
    for _ in range(int(rng.integers(0, count + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        thickness = int(rng.integers(1, 6))
        centre = rng.uniform(0, size, 2)
        extent = np.exp(rng.uniform(np.log(6), np.log(size / 2)))  # half-size, log-uniform like the faces
        kind = rng.integers(4)
        if kind == 0:
            text = "".join(rng.choice(CLUTTER_CHARACTERS, int(rng.integers(1, 9))))
            font = CLUTTER_FONTS[int(rng.integers(len(CLUTTER_FONTS)))]
            (width, height), _ = cv2.getTextSize(text, font, 1.0, thickness)
            scale = 2 * extent / max(width, height)
            box = np.array([centre[0], centre[1] - height * scale, centre[0] + width * scale, centre[1]])
        else:
            box = np.concatenate([centre - extent, centre + extent])
        if any(_area(np.concatenate([np.maximum(box[:2], g[:2]), np.minimum(box[2:], g[2:])])) > 0 for g in guards):
            continue
        x, y = int(centre[0]), int(centre[1])
        if kind == 0:
            cv2.putText(canvas, text, (x, y), font, scale, colour, max(1, int(thickness * scale)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(canvas, (x, y), int(extent), colour, int(rng.choice([-1, thickness])), cv2.LINE_AA)
        elif kind == 2:
            axes = (int(extent), int(extent * rng.uniform(0.3, 1)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(canvas, (x, y), axes, angle, 0, 360, colour, int(rng.choice([-1, thickness])), cv2.LINE_AA)
        else:
            corners = box.astype(int)
            cv2.rectangle(canvas, tuple(corners[:2]), tuple(corners[2:]), colour, int(rng.choice([-1, thickness])))


def flip_scene(scene: Scene) -> Scene:
    """Mirror left-right: boxes swap x1/x2, landmarks mirror and swap sides."""
    width = scene.image.shape[1]
    boxes = scene.boxes.copy()
    boxes[:, [0, 2]] = width - scene.boxes[:, [2, 0]]
    landmarks = scene.landmarks[:, MIRRORED_LANDMARKS].copy()
    landmarks[..., 0] = width - landmarks[..., 0]
    return Scene(np.ascontiguousarray(scene.image[:, ::-1]), boxes, landmarks, scene.scores)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, cell: tuple[int, int, int]):
    """Copy ``image`` with its top-left at (x, y) into ``canvas``, clipped to the square ``cell`` (x, y, side);
    the rectangle written (left, top, right, bottom), or None if nothing was."""
    cx, cy, side = cell
    left, top = max(x, cx), max(y, cy)
    right, bottom = min(x + image.shape[1], cx + side), min(y + image.shape[0], cy + side)
    if right <= left or bottom <= top:
        return None
    canvas[top:bottom, left:right] = image[top - y : bottom - y, left - x : right - x]
    return left, top, right, bottom


def _jitter(image: np.ndarray, rng: np.random.Generator, spec: SceneSpec) -> None:
    alpha = 1 + rng.uniform(-spec.contrast, spec.contrast)
    beta = rng.uniform(-spec.brightness, spec.brightness) * 255
    cv2.convertScaleAbs(image, dst=image, alpha=alpha, beta=beta + (1 - alpha) * float(image.mean()))
    if rng.random() < spec.blur:
        cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.5, 1.5), dst=image)


def _width(box: np.ndarray) -> float:
    return float(box[2] - box[0])


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
