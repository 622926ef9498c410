from __future__ import annotations

import numpy as np
import pytest

from biometrics import FacePipeline, cosine_similarity
from biometrics.errors import NoFaceError
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
