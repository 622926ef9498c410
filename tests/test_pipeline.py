from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image

from biometrics import FacePipeline, VerificationResult, cosine_similarity
from biometrics.detection import box_iou
from biometrics.errors import ImageError, NoFaceError, UsageError
from biometrics.imaging import load_image
from biometrics.pipeline import select_face


def test_same_person_and_different_people(pipeline, sample):
    same = pipeline.verify(sample("obama.jpg"), sample("obama2.jpg"))
    different = pipeline.verify(sample("obama.jpg"), sample("biden.jpg"))
    assert same.same_person and same.similarity >= pipeline.threshold
    assert not different.same_person and different.similarity < pipeline.threshold
    assert set(same.timings_ms) == {"decode", "detect", "align", "embed"}


def test_embeddings_are_unit_length_and_batching_changes_nothing(pipeline, sample):
    image = load_image(sample("multiface.jpg"))
    faces = pipeline.analyze(image)
    assert len(faces) == 6
    batch = np.stack([face.embedding for face in faces])
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = pipeline.embed(image, [faces[3]])[0].embedding
    np.testing.assert_allclose(single, faces[3].embedding, atol=1e-4)
    assert cosine_similarity(faces[0], faces[0]) == pytest.approx(1.0, abs=1e-5)


def test_a_crowd_is_embedded_in_chunks_that_bound_the_runtime_s_memory(sample):
    """ONNX Runtime keeps the memory of the largest batch a session ran for its whole life (README, Python): a
    frame of 20 faces reaches the network EMBED_BATCH faces at a time, with the embeddings of one face at a time."""
    from biometrics.embedding import EMBED_BATCH

    pipeline = FacePipeline(threads=1)
    image = load_image(sample("multiface.jpg"))
    crowd = pipeline.analyze(image) * 4
    batches, session = [], pipeline.embedder.session

    class Recording:
        def run(self, names, feed):
            batches.append(len(feed[pipeline.embedder.input_name]))
            return session.run(names, feed)

    pipeline.embedder.session = Recording()
    together = pipeline.embed(image, crowd)
    assert sum(batches) == len(crowd) == 24 and max(batches) == EMBED_BATCH == 4
    for face, alone in zip(together[:6], crowd[:6], strict=True):
        np.testing.assert_allclose(face.embedding, alone.embedding, atol=1e-4)


def test_embeddings_of_different_embedders_are_refused_by_name(pipeline, sample):
    """A 128-d face (ours) against a 512-d one (another embedder's, an ArcFace .onnx) is a ``UsageError`` naming
    both lengths, not NumPy's shape error; an empty or multi-row array says what it got instead of scoring 0."""
    face = pipeline.embed_one(sample("obama.jpg"))[0]
    assert face.embedding.shape == (128,)
    other = dataclasses.replace(face, embedding=np.ones(512, dtype=np.float32) / np.sqrt(512))
    for a, b in ((face, other), (face.embedding, other.embedding), (other, face.embedding)):
        with pytest.raises(UsageError, match=r"different lengths \((128 vs 512|512 vs 128)\).*different embedders"):
            cosine_similarity(a, b)
    for bad in (np.zeros(0, dtype=np.float32), face.embedding[None]):
        with pytest.raises(UsageError, match=re.escape(f"one non-empty vector), got an array of shape {bad.shape}")):
            cosine_similarity(face, bad)


def test_face_selection(pipeline, sample):
    image = load_image(sample("two_people.jpg"))
    faces = pipeline.detect(image)
    largest = select_face(faces, "largest")
    assert largest.area == max(face.area for face in faces)
    assert select_face(faces, 1) is faces[1]
    with pytest.raises(NoFaceError, match="out of range"):
        select_face(faces, 5)


def test_choosing_the_face_in_a_group_photo_changes_the_answer(pipeline, sample):
    """two_people.jpg holds Obama and Biden: each face matches its own person."""
    image = load_image(sample("two_people.jpg"))
    faces = pipeline.analyze(image)
    obama = pipeline.embed_one(load_image(sample("obama.jpg")))[0]
    biden = pipeline.embed_one(load_image(sample("biden.jpg")))[0]
    matches = sorted(
        round(cosine_similarity(face, person), 2) >= pipeline.threshold for face in faces for person in (obama, biden)
    )
    assert matches == [False, False, True, True]


def test_no_face_is_a_clear_error(pipeline, no_face_photo, sample):
    with pytest.raises(NoFaceError, match="no_face.jpg: no face found"):
        pipeline.verify(no_face_photo, sample("obama.jpg"))


def test_threshold_comes_from_the_card_with_its_meaning():
    pipeline = FacePipeline(threads=1)
    block = pipeline.embedder.model.card.data["threshold"]
    assert pipeline.threshold == block["value"]
    assert "FMR" in block["meaning"] and "folds 1-5" in block["meaning"]


def test_one_selection_applies_to_both_photos_and_a_pair_to_each(pipeline, sample):
    group = sample("two_people.jpg")
    image = load_image(group)
    faces = pipeline.detect(image)
    centre = faces.index(select_face(faces, "center", image.shape))
    assert pipeline.verify(group, group, select="center").face_indexes == (centre, centre)
    assert pipeline.verify(group, group, select=1).face_indexes == (1, 1)
    assert pipeline.verify(group, group, select=(0, 1)).face_indexes == (0, 1)


def test_paths_and_arrays_of_any_common_layout_give_the_same_faces(pipeline, sample):
    """A path, the BGR array, its BGRA and its grey forms; a float or oddly shaped array is a clear error."""
    path = sample("obama.jpg")
    image = load_image(path)
    boxes = [face.box for face in pipeline.analyze(image)]
    assert len(boxes) == 1
    np.testing.assert_array_equal(pipeline.analyze(path)[0].box, boxes[0])
    np.testing.assert_array_equal(pipeline.detect(path)[0].box, boxes[0])
    np.testing.assert_array_equal(pipeline.detect(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))[0].box, boxes[0])
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    for layout in (grey, grey[..., None]):
        found = pipeline.detect(layout)
        assert len(found) == 1 and box_iou(found[0].box[None], np.array(boxes))[0, 0] > 0.9
    for bad, what in ((image / 255.0, "float64"), (image[..., :2], "uint8"), (image[:0], "uint8")):
        with pytest.raises(ImageError, match=f"expected a BGR uint8 image .*got a {what} array"):
            pipeline.detect(bad)
    with pytest.raises(ImageError, match="got a float64 array"):
        pipeline.verify(image / 255.0, path)
    np.testing.assert_array_equal(pipeline.detect(path.read_bytes())[0].box, boxes[0])  # an encoded file's bytes
    for other in (Image.open(path), image.tolist(), None):
        with pytest.raises(ImageError, match="expected a path, an image file's bytes or a BGR uint8 array"):
            pipeline.detect(other)


def test_a_library_users_mistakes_are_named(pipeline, sample):
    """Settings and selections of the wrong kind fail at once, saying what was expected, instead of deep inside
    ONNX Runtime (blaming the model file), as a silently empty result (max_side 0) or as every pair "different"
    (a NaN threshold)."""
    for settings in ({"threads": "2"}, {"threads": 2.5}, {"threads": 1000}, {"threads": 0}, {"threads": True}):
        with pytest.raises(UsageError, match="expected a whole number of threads, 1 to 256"):
            FacePipeline(**settings)
    for settings in ({"max_side": 0}, {"max_side": -5}, {"max_side": 640.5}):
        with pytest.raises(UsageError, match="max_side=.*expected a whole number of pixels"):
            FacePipeline(**settings)
    for threshold in (float("nan"), "0.5", 1.5):
        with pytest.raises(UsageError, match="expected a cosine similarity"):
            FacePipeline(threshold=threshold)
    photo = sample("obama.jpg")
    for select in (1.0, True, None):
        with pytest.raises(ValueError, match="expected one of largest, center, score or a face index"):
            pipeline.verify(photo, photo, select=select)
    with pytest.raises(ValueError, match="a pair of them"):
        pipeline.verify(photo, photo, select=("largest",))


def test_each_thread_times_its_own_calls(pipeline, sample):
    """Threads sharing one pipeline each get the timings of their own verification, not a mix of all of them."""
    photos = (sample("obama.jpg"), sample("obama2.jpg"))

    def verify_timed(_) -> tuple[VerificationResult, float]:
        start = time.perf_counter()
        result = pipeline.verify(*photos)
        return result, (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(4) as pool:
        timed = list(pool.map(verify_timed, range(8)))
    for result, wall_ms in timed:
        assert set(result.timings_ms) == {"decode", "detect", "align", "embed"}
        assert sum(result.timings_ms.values()) <= wall_ms  # its own stages only
    assert len({round(result.similarity, 6) for result, _ in timed}) == 1


def test_faces_compare_by_identity_and_print_no_embedding(pipeline, sample):
    faces = pipeline.analyze(load_image(sample("two_people.jpg")))
    assert faces[0] != faces[1] and faces[1] in faces and len(set(faces)) == len(faces)
    assert dataclasses.replace(faces[0]) != faces[0]
    result = pipeline.verify(sample("obama.jpg"), sample("obama2.jpg"))
    assert isinstance(result, VerificationResult)
    text = repr(result)
    assert "embedding" not in text and f"{result.faces[0].embedding[0]:.5f}"[:7] not in text
    assert "box=" in text and "score=" in text and f"similarity={result.similarity}" in text


def test_python_dash_m_runs_the_command_line():
    """`python -m biometrics` in its own interpreter, as a user runs it (runpy inside pytest's process warned that
    the package was already imported)."""
    proc = subprocess.run([sys.executable, "-m", "biometrics", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "verify" in proc.stdout, proc.stderr
