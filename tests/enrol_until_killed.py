"""Helper for test_gallery's kill -9 test: enrol person PREFIX-0, PREFIX-1, ... until killed.

Prints each name only after its enrolment returned (committed), so every printed name must survive a SIGKILL.
Usage: enrol_until_killed.py GALLERY EMBEDDING.npy IMAGE.png PREFIX
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from biometrics.gallery import EmbedderId, Gallery, NewTemplate

EMBEDDER = EmbedderId("kill-test-embedder", "0" * 64, 128)


def main() -> None:
    gallery_path, embedding_path, image_path, prefix = sys.argv[1:]
    template = NewTemplate(np.load(embedding_path), "photo.png", (1.0, 2.0, 3.0, 4.0), Path(image_path).read_bytes())
    with Gallery(Path(gallery_path), create=True) as gallery:
        for i in range(1_000_000):
            name = f"{prefix}-{i}"
            gallery.enroll(name, EMBEDDER, [template, template])
            print(name, flush=True)


if __name__ == "__main__":
    main()
