"""Verification on your own photos: one folder per person, every pair of photos scored.

What an engineer needs before trusting a threshold: on *their* people and cameras, how often does it accept two
different people (FMR) and reject one person photographed twice (FNMR)? Every genuine pair (two photos of one
person) and every impostor pair (photos of two people) is scored, as a technology evaluation counts them (ISO/IEC
19795-1). Each photo's face is chosen and embedded exactly as ``biometrics verify`` does it. A photo with no
detected face, or an unreadable file, is a failure to acquire: counted, listed and left out of the pairs (not
replaced by a centre crop, as the LFW protocol does). The lowest-scoring genuine and highest-scoring impostor pairs
are named: that is where mislabelled photos show up.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from biometrics.errors import DataError, ImageError, NoFaceError
from biometrics.evaluation import metrics, plots
from biometrics.evaluation.identification import SizeThreshold, identification_rates
from biometrics.evaluation.report import (
    _md_table,
    remove_stale_outputs,
    run_section,
    without_scores,
    write_score_plots,
)
from biometrics.files import open_output
from biometrics.gallery.search import DEFAULT_FPIR, claim_threshold, threshold_by_size
from biometrics.imaging import files_under, is_image_name, load_image
from biometrics.pipeline.facade import FacePipeline, Selection, sharing_one_detector

REPORTED_FMRS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4, "1e-5": 1e-5}
LISTED_PAIRS = 10  # hardest genuine and impostor pairs named in the report
SCORES_CSV_MAX_PAIRS = 1_000_000
"""The most pairs scores.csv is written for (some 1,400 photos; about 80 MB): beyond, the report says how to score
them again instead."""


@dataclass(frozen=True)
class PhotoFolder:
    """A folder of people: ``images[i]`` (relative to ``root``) shows ``people[identities[i]]``."""

    root: Path
    people: list[str]
    images: list[str]
    identities: np.ndarray
    other_files: int  # files without an image type's suffix, ignored
    without_photos: dict[str, str] = field(default_factory=dict)  # person folder -> why it is left out

    @classmethod
    def read(cls, root: str | os.PathLike) -> PhotoFolder:
        """Each sub-folder is a person, the image files in it (JPEG, PNG, BMP, WebP, by suffix; in folders of its own
        too, say one per year) their photos; hidden files and folders are skipped. A person folder without photos
        is left out, and said to be (a person the user meant to include, not silently missing). Needs two people
        with photos, one of them with two."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (expected one sub-folder of photos per person)")
        people, images, identities, other_files, without_photos = [], [], [], 0, {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = files_under(folder)
            photos = [p for p in files if is_image_name(p)]
            other_files += len(files) - len(photos)
            if photos:
                identities += [len(people)] * len(photos)
                images += [str(p.relative_to(root)) for p in photos]
                people.append(folder.name)
            else:
                others = f" ({len(files)} other file(s) ignored)" if files else ""
                without_photos[folder.name] = f"no photos{others}"
        if len(people) < 2 or np.bincount(identities).max() < 2:
            empty = f", {len(without_photos)} folder(s) without photos" if without_photos else ""
            raise DataError(
                f"{root}: found {len(images)} photo(s) of {len(people)} person(s){empty}; expected one sub-folder of "
                "photos per person, at least two people, and two photos of at least one of them"
            )
        return cls(root, people, images, np.array(identities), other_files, without_photos)


@dataclass(frozen=True)
class FolderEmbeddings:
    """The embeddings of the photos whose face was found (``kept`` indexes ``PhotoFolder.images``), and why the
    others were left out (photo -> reason)."""

    kept: np.ndarray
    embeddings: np.ndarray
    left_out: dict[str, str]
    several_faces: int  # photos showing more than one face (the selected one was embedded)


def embed_folder(
    pipelines: Sequence[FacePipeline], photos: PhotoFolder, select: Selection = "largest", progress: bool = True
) -> list[FolderEmbeddings]:
    """One embedding per photo and pipeline: its selected face, as ``verify`` would compare it. Each photo is
    decoded and searched once, by the detector the pipelines share, and that face is embedded by each."""
    pipelines = sharing_one_detector(pipelines)
    kept, vectors, left_out, several = [], [[] for _ in pipelines], {}, 0
    for i, name in enumerate(tqdm(photos.images, desc="photos", unit="img", disable=not progress)):
        try:
            pixels = load_image(photos.root / name)
            face, _, count = pipelines[0].embed_one(pixels, select)
        except ImageError as exc:
            left_out[name] = str(exc).removeprefix(f"{photos.root / name}: ")
            continue
        except NoFaceError as exc:
            left_out[name] = str(exc)
            continue
        kept.append(i)
        several += count > 1
        vectors[0].append(face.embedding)
        for model, pipeline in enumerate(pipelines[1:], start=1):
            vectors[model].append(pipeline.embed(pixels, [face])[0].embedding)
    kept = np.array(kept, dtype=np.int64)
    return [
        FolderEmbeddings(kept, np.stack(rows) if rows else np.zeros((0, 0), np.float32), left_out, several)
        for rows in vectors
    ]


def operating_point(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict:
    """FMR and FNMR at ``threshold`` (a pair is accepted when its similarity >= threshold), with their counts."""
    false_matches = int(np.count_nonzero(impostor >= threshold))
    false_non_matches = int(np.count_nonzero(genuine < threshold))
    return {
        "threshold": float(threshold),
        "fmr": false_matches / impostor.size,
        "false_matches": false_matches,
        "fnmr": false_non_matches / genuine.size,
        "false_non_matches": false_non_matches,
    }


def least_like_their_person(genuine: np.ndarray, genuine_rows: np.ndarray, faces: int) -> tuple[np.ndarray, ...]:
    """Each photo's mean similarity to its person's other photos, lowest first, for photos whose person has at
    least three (of two photos neither can be singled out): (photo rows, means, how many other photos)."""
    partners = np.bincount(genuine_rows.ravel(), minlength=faces)
    totals = np.bincount(genuine_rows.ravel(), weights=np.repeat(genuine, 2), minlength=faces)
    rows = np.flatnonzero(partners >= 2)
    means = totals[rows] / partners[rows]
    order = np.argsort(means, kind="stable")
    return rows[order], means[order], partners[rows[order]]


def evaluate_folder(
    pipelines: Sequence[FacePipeline],
    photos: PhotoFolder,
    select: Selection = "largest",
    progress: bool = True,
    gallery_photos: int = 1,
    fpir: float = DEFAULT_FPIR,
) -> dict[str, dict]:
    """Rates for each pipeline on ``photos`` (by ``pipeline.name``; the pipelines share a detector, so each is
    scored on the same faces): at its threshold, at each FMR of ``REPORTED_FMRS`` these impostor pairs resolve (one
    false match allowed at least), EER and AUC; and, under ``identification``, the open-set 1:N rates of a gallery
    enrolled with each person's first ``gallery_photos`` photos (``biometrics.evaluation.identification``), there
    also at the threshold `identify` searches it at (set for its size for ``fpir`` from the card's calibration;
    without one, the fixed threshold, as `identify` uses it), with 1:1 claims against it (`verify --as`) at the
    card's threshold and at the one set for ``gallery_photos`` templates a person. ``pairs`` holds each score's
    two photos (indexes of ``photos.images``). JSON-ready apart from ``PER_PAIR``'s entries."""
    thresholds = [pipeline.threshold for pipeline in pipelines]  # an uncalibrated embedder fails before any work
    return {
        pipeline.name: _rates(
            threshold,
            threshold_by_size(pipeline.embedder.false_match_thresholds, fpir),
            _claim_threshold(pipeline, gallery_photos),
            photos,
            embedded,
            gallery_photos,
        )
        for pipeline, threshold, embedded in zip(
            pipelines, thresholds, embed_folder(pipelines, photos, select, progress), strict=True
        )
    }


def _claim_threshold(pipeline: FacePipeline, templates: int) -> float | None:
    """The threshold `verify --as` checks a claim at, for a person with ``templates``; None uncalibrated."""
    calibration = pipeline.embedder.false_match_thresholds
    return claim_threshold(calibration, templates).value if calibration else None


def _rates(
    threshold: float,
    threshold_for_size: SizeThreshold | None,
    threshold_for_claims: float | None,
    photos: PhotoFolder,
    embedded: FolderEmbeddings,
    gallery_photos: int,
) -> dict:
    identities = photos.identities[embedded.kept]
    genuine, genuine_rows, impostor, impostor_rows = metrics.pair_scores(embedded.embeddings, identities)
    if genuine.size == 0 or impostor.size == 0:
        raise DataError(
            f"{photos.root}: a face was found in {len(embedded.kept)} of {len(photos.images)} photos, which leaves "
            f"{genuine.size} genuine and {impostor.size} impostor pairs; both kinds are needed"
        )
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(genuine.size, np.int8), np.zeros(impostor.size, np.int8)])
    eer, eer_threshold = metrics.eer(scores, labels)
    names = np.array(photos.images)[embedded.kept]

    def listed(rows: np.ndarray, similarities: np.ndarray, order: np.ndarray) -> list[dict]:
        return [{"a": names[rows[i, 0]], "b": names[rows[i, 1]], "similarity": float(similarities[i])} for i in order]

    odd_rows, odd_means, odd_partners = least_like_their_person(genuine, genuine_rows, len(names))
    identify_threshold = threshold_for_size or (lambda templates: threshold)  # no calibration: `identify` uses it
    try:
        identification = identification_rates(
            embedded.embeddings, identities, threshold, gallery_photos, identify_threshold, threshold_for_claims
        )
        identification_curve = identification.pop("curve")
        for row in identification["strangers_named"]["people"]:
            row["person"], row["mostly_as"] = photos.people[row["person"]], photos.people[row["mostly_as"]]
    except ValueError as exc:
        raise DataError(f"{photos.root}: 1:N identification with --gallery-photos {gallery_photos}: {exc}") from None
    return {
        "people": len(np.unique(identities)),
        "photos": len(photos.images),
        "faces": len(embedded.kept),
        "left_out": embedded.left_out,
        "several_faces": embedded.several_faces,
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "at_threshold": operating_point(genuine, impostor, threshold),
        "at_fmr": {
            key: operating_point(genuine, impostor, metrics.threshold_at_fmr(impostor, fmr))
            for key, fmr in REPORTED_FMRS.items()
            if fmr * impostor.size >= 1
        },
        "eer": eer,
        "eer_threshold": eer_threshold,
        "auc": metrics.auc(scores, labels),
        "lowest_genuine": listed(genuine_rows, genuine, np.argsort(genuine, kind="stable")[:LISTED_PAIRS]),
        "highest_impostor": listed(impostor_rows, impostor, np.argsort(-impostor, kind="stable")[:LISTED_PAIRS]),
        "least_like_their_person": [
            {"photo": names[row], "mean_similarity": float(mean), "other_photos": int(partners)}
            for row, mean, partners in zip(
                odd_rows[:LISTED_PAIRS], odd_means[:LISTED_PAIRS], odd_partners[:LISTED_PAIRS], strict=True
            )
        ],
        "identification": identification,
        "identify_threshold": "fixed" if threshold_for_size is None else "by gallery size",
        "identification_curve": identification_curve,
        "scores": scores,
        "labels": labels,
        "pairs": embedded.kept[np.concatenate([genuine_rows, impostor_rows])],
    }


def training_data(card_data: dict) -> list[str]:
    """The datasets a model's card says it learned from, LFW with the folds it left out (empty: not stated)."""
    split = card_data.get("data_split") or {}
    excluded = split.get("lfw_excluded_folds")
    return [
        f"lfw (all but the people of folds {', '.join(map(str, excluded))})" if name == "lfw" and excluded else name
        for name in split.get("datasets", [])
    ]


def _rate(value: float, count: int) -> str:
    return f"{100 * value:.3g}% ({count:,})"


def _markdown(photos: PhotoFolder, results: dict[str, dict], meta: dict, files: dict[str, Path]) -> str:
    ignored = f" ({photos.other_files} other files ignored)" if photos.other_files else ""
    lines = [
        f"# Verification on `{photos.root}`",
        "",
        *run_section(meta),
        "",
        "## Results",
        "",
        f"{len(photos.people):,} people, {len(photos.images):,} photos{ignored}. Every pair of photos is scored: "
        "a genuine pair shows one person, an impostor pair two. A pair is accepted when its cosine similarity is "
        "at least the threshold. Photos without a detected face are left out (failures to acquire).",
        "",
    ]
    if photos.without_photos:
        lines += [f"Person folders left out ({len(photos.without_photos)}):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in photos.without_photos.items()] + [""]
    lines += _md_table(
        ["pipeline", "faces / photos", "genuine pairs", "impostor pairs", "threshold", "FMR (false matches)"]
        + ["FNMR (false non-matches)", "EER", "AUC"],
        [
            [
                label,
                f"{run['faces']:,} / {run['photos']:,}",
                f"{run['genuine_pairs']:,}",
                f"{run['impostor_pairs']:,}",
                f"{run['at_threshold']['threshold']:.4f}",
                _rate(run["at_threshold"]["fmr"], run["at_threshold"]["false_matches"]),
                _rate(run["at_threshold"]["fnmr"], run["at_threshold"]["false_non_matches"]),
                f"{100 * run['eer']:.2f}%",
                f"{run['auc']:.5f}",
            ]
            for label, run in results.items()
        ],
    )
    lines += [
        "",
        "The threshold is each embedder's own (its card's, or `--threshold`), set without these photos.",
        "",
        "## Thresholds at target false-match rates",
        "",
        "Set on these photos' impostor pairs, so they describe these photos rather than predict new ones; an FMR "
        "below one false match in all the impostor pairs is not listed.",
        "",
    ]
    lines += _md_table_or(
        "No FMR of 1e-2 or below: too few impostor pairs to resolve one.",
        ["pipeline", "FMR", "threshold", "FMR reached (false matches)", "FNMR (false non-matches)"],
        [
            [
                label,
                key,
                f"{point['threshold']:.4f}",
                _rate(point["fmr"], point["false_matches"]),
                _rate(point["fnmr"], point["false_non_matches"]),
            ]
            for label, run in results.items()
            for key, point in run["at_fmr"].items()
        ],
    )
    lines += _identification_markdown(results, meta.get("fpir", DEFAULT_FPIR))
    for label, run in results.items():
        lines += ["", f"## {label}", ""]
        if run["left_out"]:
            lines += [f"Left out ({len(run['left_out'])}):", ""]
            lines += [f"- `{name}`: {reason}" for name, reason in run["left_out"].items()] + [""]
        if run["several_faces"]:
            lines += [f"{run['several_faces']} photo(s) show several faces; the {meta['select']} one was used.", ""]
        lines += [
            "Where mislabelled photos show up: the photos least like their person's other photos (people with "
            "three photos or more)",
            "",
        ]
        lines += _md_table(
            ["photo", "mean similarity to the person's other photos", "other photos"],
            [
                [f"`{p['photo']}`", f"{p['mean_similarity']:.4f}", str(p["other_photos"])]
                for p in run["least_like_their_person"]
            ],
        )
        for title, key in (
            ("the lowest-scoring genuine pairs", "lowest_genuine"),
            ("the highest-scoring impostor pairs", "highest_impostor"),
        ):
            lines += ["", f"and {title}:", ""]
            lines += _md_table(
                ["a", "b", "similarity"], [[f"`{p['a']}`", f"`{p['b']}`", f"{p['similarity']:.4f}"] for p in run[key]]
            )
        lines += [""]
    trained = [f"- `{m['name']}`: {', '.join(m['trained_on'])}" for m in meta["models"] if m.get("trained_on")]
    if trained:
        lines += [
            "## What the models learned from",
            "",
            "If these people are in a model's training data, its numbers here are not a held-out measure.",
            "",
            *trained,
            "",
        ]
    lines += [_scores_csv_note(photos, results, files), ""]
    lines += ["## Models", ""] + [f"- `{m['name']}` sha256 `{m['sha256']}`" for m in meta["models"]]
    lines += ["", "## Plots", ""] + [f"![{key}]({path.name})" for key, path in files.items() if path.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _scores_csv_note(photos: PhotoFolder, results: dict[str, dict], files: dict[str, Path]) -> str:
    """Where every pair's score is, or, for too many pairs, how to score them again."""
    if "scores_csv" in files:
        return (
            "Every pair's score under each pipeline (photos relative to the folder; empty where a pipeline left a "
            "photo out): [scores.csv](scores.csv)."
        )
    pairs = max(run["genuine_pairs"] + run["impostor_pairs"] for run in results.values())
    row = 2 * np.mean([len(name) for name in photos.images]) + 4 + 10 * len(results)
    return (
        f"No scores.csv: {pairs:,} pairs would make a file of about {pairs * row / 1e9:.1f} GB (it is written for "
        f"{SCORES_CSV_MAX_PAIRS:,} pairs at most). To score them again, in Python: "
        "`photos = PhotoFolder.read(FOLDER)`, `embedded = embed_folder(pipelines, photos, select)` "
        "(`biometrics.evaluation.folder`), then for each pipeline's `e` "
        "`metrics.pair_scores(e.embeddings, photos.identities[e.kept])` (`biometrics.evaluation.metrics`): genuine "
        "and impostor scores, each with its two rows of `e.kept` (which indexes `photos.images`)."
    )


def _md_table_or(nothing: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """The table, or the sentence ``nothing`` when it has no rows."""
    return _md_table(header, rows) if rows else [nothing]


def _identification_point(point: dict) -> list[str]:
    """Threshold, FPIR, FNIR and misidentification rate of one 1:N operating point, as table cells."""
    return [
        f"{point['threshold']:.4f}",
        _rate(point["fpir"], point["false_positives"]),
        _rate(point["fnir"], point["misses"]),
        _rate(point["misidentification_rate"], point["misidentifications"]),
    ]


def _identification_markdown(results: dict[str, dict], fpir: float) -> list[str]:
    first = next(iter(results.values()))["identification"]
    photos = first["enrolled_photos"]
    each = "their first photo" if photos == 1 else f"their first {photos} photos"
    lines = [
        "",
        "## 1:N identification (open set)",
        "",
        f"What `biometrics identify` would answer: each person with more than {photos} photo(s) is enrolled with "
        f"{each} (file-name order) and scored by their best template; their other photos are mated searches, answered "
        "right when their person comes first at or above the threshold (else a miss: FNIR). Every photo is also a "
        "non-mated search, against the gallery without its own person: naming anyone at or above the threshold is "
        "a false positive (FPIR). A misidentification is a mated search answered with someone else's name. Rank-1 "
        "and rank-5: the person first, or among the first five, at any score.",
        "",
    ]
    searches = {label: run["identification"] for label, run in results.items()}
    lines += _md_table(
        ["pipeline", "gallery: people (templates)", "mated / non-mated searches", "rank-1", "rank-5", "threshold"]
        + ["FPIR (false positives)", "FNIR (misses)", "misidentifications"],
        [
            [
                label,
                f"{run['gallery_people']:,} ({run['templates']:,})",
                f"{run['mated_searches']:,} / {run['non_mated_searches']:,}",
                f"{100 * run['rank_1']:.2f}%",
                f"{100 * run['rank_5']:.2f}%",
                *_identification_point(run["at_threshold"]),
            ]
            for label, run in searches.items()
        ],
    )
    at_size = {label: run["at_size_threshold"] for label, run in searches.items() if run["at_size_threshold"]}
    fixed = [label for label, run in results.items() if run["identify_threshold"] == "fixed"]
    if at_size:
        lines += [
            "",
            "What `identify` answers: the threshold set for a gallery of this size to name "
            f"{fpir:g} of strangers (`--fpir`), from the embedder card's calibration on other people"
            + (
                "; an embedder whose card has a threshold but no calibrated FMR is searched at that fixed threshold "
                "(`threshold_set_for: null`), however large the gallery"
                if fixed
                else ""
            )
            + ":",
            "",
        ]
        lines += _md_table(
            ["pipeline", "FPIR asked", "threshold", "FPIR reached (false positives)", "FNIR (misses)"]
            + ["misidentifications", "FPIR per person"],
            [
                [
                    label,
                    "- (fixed)" if label in fixed else f"{fpir:g}",
                    *_identification_point(point),
                    f"{100 * point['fpir_per_person']:.3g}%",
                ]
                for label, point in at_size.items()
            ],
        )
    lines += [
        "",
        "Thresholds set on these non-mated searches for a target FPIR (they describe these photos):",
        "",
    ]
    lines += _md_table_or(
        "No FPIR of 1e-1 or below: too few non-mated searches to resolve one.",
        ["pipeline", "FPIR", "threshold", "FPIR reached (false positives)", "FNIR (misses)", "misidentifications"],
        [
            [label, key, *_identification_point(point)]
            for label, run in searches.items()
            for key, point in run["at_fpir"].items()
        ],
    )
    lines += [
        "",
        "The larger the gallery, the more strangers reach the threshold: FPIR by gallery size, for galleries drawn "
        "at random from the enrolled people (pooled over the draws), and the thresholds that would hold FPIR at "
        "1e-2 and 1e-3 there (- where the searches cannot resolve it); `identify`'s default threshold, set for "
        "each size from the card, should hold FPIR near the target (a fixed one cannot):",
        "",
    ]

    def threshold(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    def at_size_threshold(row: dict) -> str:
        if "size_threshold" not in row:
            return "-"
        return f"{row['size_threshold']:.4f} ({100 * row['fpir_at_size_threshold']:.3g}%)"

    lines += _md_table(
        ["pipeline", "people in the gallery", "galleries drawn", "non-mated searches", "FPIR at the threshold"]
        + [f"identify's threshold (FPIR; target {fpir:g})", "threshold for FPIR 1e-2", "for FPIR 1e-3"],
        [
            [
                label,
                f"{row['people']:,}",
                str(row["galleries"]),
                f"{row['searches']:,}",
                f"{100 * row['fpir_at_threshold']:.3g}%",
                at_size_threshold(row),
                threshold(row["threshold_at_fpir_1e-2"]),
                threshold(row["threshold_at_fpir_1e-3"]),
            ]
            for label, run in searches.items()
            for row in run["by_gallery_size"]
        ],
    )
    lines += [
        "",
        "Who the false positives are: the people searched as strangers who were given a name most often, at the "
        "threshold `identify` would use (the card's without a calibration), and whose name they were mostly given. "
        "A look-alike of someone enrolled, or a mislabelled photo, shows here; so does a stranger photographed far "
        "more often than the others, who alone can lift FPIR per search (FPIR per person counts each person once).",
        "",
    ]
    lines += _md_table_or(
        "No stranger was given a name.",
        ["pipeline", "threshold", "person searched", "photos searched", "named", "mostly as (times)"],
        [
            [
                label,
                f"{run['strangers_named']['threshold']:.4f}",
                row["person"],
                f"{row['searches']:,}",
                f"{row['named']:,}",
                f"{row['mostly_as']} ({row['mostly_as_times']:,})",
            ]
            for label, run in searches.items()
            for row in run["strangers_named"]["people"]
        ],
    )
    lines += [
        "",
        f"1:1 against an enrolled person (`verify PHOTO --as NAME`), this gallery: each enrolled person's other "
        "photos claim to be them (genuine claims), and every photo claims to be each enrolled person it does not "
        f"show (impostor claims); the best of the person's {photos} template(s) decides. At the card's 1:1 threshold "
        "an impostor passes more often the more templates there are; `verify --as` sets its threshold for their "
        "number, to hold the card's FMR per claim:",
        "",
    ]

    claim_thresholds = {"at_threshold": "the card's 1:1", "at_claim_threshold": "`verify --as`'s"}
    lines += _md_table(
        ["pipeline", "genuine / impostor claims", "threshold", "FMR per claim", "FNMR per claim"],
        [
            [
                label,
                f"{run['claims']['genuine_claims']:,} / {run['claims']['impostor_claims']:,}",
                f"{which}: {point['threshold']:.4f}",
                _rate(point["fmr"], point["false_matches"]),
                _rate(point["fnmr"], point["false_non_matches"]),
            ]
            for label, run in searches.items()
            for key, which in claim_thresholds.items()
            if (point := run["claims"][key]) is not None
        ],
    )
    return lines


def write_folder_pair_scores(path: Path, photos: PhotoFolder, runs: dict[str, dict]) -> Path:
    """Every pair scored, a row each (its two photos, relative to the folder, and whether they show one person)
    with its score under each pipeline, empty where a pipeline left one of the photos out: the numbers of the
    report can be recomputed from it. Scores only, no embeddings."""
    n = len(photos.images)
    keys = {label: run["pairs"][:, 0].astype(np.int64) * n + run["pairs"][:, 1] for label, run in runs.items()}
    rows = np.unique(np.concatenate(list(keys.values())))
    columns = []
    for label, run in runs.items():
        column = np.full(rows.size, np.nan)
        column[np.searchsorted(rows, keys[label])] = run["scores"]
        columns.append(column)
    first, second = rows // n, rows % n
    same = photos.identities[first] == photos.identities[second]
    with open_output(path, newline="", private=True) as file:
        writer = csv.writer(file)
        writer.writerow(["photo_a", "photo_b", "same_person", *runs])
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            scores = ("" if np.isnan(column[i]) else f"{column[i]:.6f}" for column in columns)
            writer.writerow([photos.images[a], photos.images[b], int(same[i]), *scores])
    return path


def write_folder_report(out: Path, photos: PhotoFolder, runs: dict[str, dict], meta: dict) -> dict[str, Path]:
    """report.json, report.md, roc.png, det.png, identification.png (1:N DET), one score histogram per pipeline
    (its threshold marked) and scores.csv (``write_folder_pair_scores``) when no pipeline scored more than
    ``SCORES_CSV_MAX_PAIRS`` pairs: n photos make n(n-1)/2, a file of gigabytes for a few thousand photos. All
    owner-only (0600, in folders created 0700): they name the user's people, their photos and how alike they are."""
    remove_stale_outputs(out, ["scores.csv"])
    thresholds = {label: run["at_threshold"]["threshold"] for label, run in runs.items()}
    files = write_score_plots(out, runs, thresholds, private=True)
    pairs = max(len(run["scores"]) for run in runs.values())
    if pairs <= SCORES_CSV_MAX_PAIRS:
        files["scores_csv"] = write_folder_pair_scores(out / "scores.csv", photos, runs)
    files["identification"] = plots.plot_det(
        {label: run["identification_curve"] for label, run in runs.items()},
        out / "identification.png",
        title="1:N identification (open set)",
        rates=("False positive identification rate (FPIR)", "False negative identification rate (FNIR)"),
        private=True,
    )
    public = without_scores(runs)
    report = {
        "title": f"Verification on {photos.root}",
        "meta": meta,
        "folders_left_out": photos.without_photos,
        "scores_csv": {"written": "scores_csv" in files, "pairs": pairs, "max_pairs": SCORES_CSV_MAX_PAIRS},
        "results": public,
    }
    files["json"] = out / "report.json"
    with open_output(files["json"], private=True) as file:
        file.write(json.dumps(report, indent=2) + "\n")
    files["md"] = out / "report.md"
    with open_output(files["md"], private=True) as file:
        file.write(_markdown(photos, public, meta, files))
    return files
