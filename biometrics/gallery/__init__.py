"""Enrol faces once, recognise them later: a persistent gallery (SQLite) and 1:N search over it."""

from biometrics.gallery.cipher import KEY_ENV, load_key
from biometrics.gallery.search import (
    DEFAULT_FPIR,
    EnrolmentCheck,
    GalleryThreshold,
    Identification,
    Match,
    TemplateIndex,
    check_enrolment,
    faiss_available,
    gallery_threshold,
    strangers_named,
    threshold_by_size,
)
from biometrics.gallery.store import (
    GALLERY_ENV,
    UNKNOWN,
    EmbedderId,
    Gallery,
    KeptImage,
    NewTemplate,
    Person,
    Templates,
    check_name,
    default_gallery_path,
)

__all__ = [
    "DEFAULT_FPIR",
    "GALLERY_ENV",
    "KEY_ENV",
    "UNKNOWN",
    "EmbedderId",
    "EnrolmentCheck",
    "Gallery",
    "GalleryThreshold",
    "Identification",
    "KeptImage",
    "Match",
    "NewTemplate",
    "Person",
    "TemplateIndex",
    "Templates",
    "check_enrolment",
    "check_name",
    "default_gallery_path",
    "faiss_available",
    "gallery_threshold",
    "load_key",
    "strangers_named",
    "threshold_by_size",
]
