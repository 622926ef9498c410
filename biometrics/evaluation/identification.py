"""Open-set 1:N identification on a people folder: what `biometrics identify` answers, measured.

A gallery search fails in two ways that a 1:1 comparison does not show. A person who is enrolled may come back
with someone else's name first, or below the threshold (a false negative identification); a stranger is named
whenever *any* of the N enrolled people scores at least the threshold (a false positive identification). A
threshold set for 1:1 at false-match rate f accepts a stranger with probability close to N * f in a gallery of N
people, so the threshold that suits verification does not suit a large gallery.

Protocol (NIST FRVT 1:N terms, rank 1): each person with more than ``enrolled_photos`` usable photos is enrolled
with their first ones (file-name order), one template each, and scored by their best template, as the gallery
does; their other photos are *mated* searches. Every photo is also a *non-mated* search, against the gallery
without its own person (as if they had never enrolled); people with too few photos to enrol are strangers to
every search. FNIR(T): the share of mated searches whose mate is not first or scores below T. FPIR(T): the share
of non-mated searches whose best candidate scores at least T.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from biometrics.evaluation import metrics

REPORTED_FPIRS = {"1e-1": 1e-1, "1e-2": 1e-2, "1e-3": 1e-3}
GALLERY_SIZES = (1, 10, 100, 1_000, 10_000, 100_000)
SIZE_DRAWS = 20  # random galleries drawn per size below the full one, fewer from 100 people (see by_gallery_size)
SizeThreshold = Callable[[int], float]
"""A gallery's size (templates) -> the threshold searched at (``biometrics.gallery.gallery_threshold``)."""
LISTED_STRANGERS = 10  # searched people named most often, in the report
BLOCK = 2048  # searches scored at once: bounds memory to BLOCK x gallery templates


@dataclass(frozen=True)
class SearchOutcomes:
    """Every search's result, enough to read off any threshold: per mated search the mate's score, its rank among
    the enrolled people (1 = first; ties count against it) and the best non-mate's score; per non-mated search
    the best score."""

    gallery_people: int
    templates: int
    mate_scores: np.ndarray
    mate_ranks: np.ndarray
    best_non_mate: np.ndarray
    non_mated: np.ndarray
    non_mated_people: np.ndarray  # per non-mated search: the searched photo's person (an identity)
    non_mated_named: np.ndarray  # and the enrolled person who scored best (an identity)


@dataclass(frozen=True)
class Enrolment:
    """Who is enrolled with which photos: each enrolled person's first ``photos_each`` photos are their templates
    (``template_rows``, grouped by person); ``column[i]`` is photo i's person's place in the gallery, -1 if that
    person is not enrolled. A person is enrolled when photos are left over to search with."""

    photos_each: int
    template_rows: np.ndarray
    column: np.ndarray
    enrolled: np.ndarray  # the identity in each column

    @classmethod
    def of(cls, identities: np.ndarray, photos_each: int) -> Enrolment:
        counts = np.bincount(identities)
        enrolled = np.flatnonzero(counts > photos_each)
        if enrolled.size == 0:
            raise ValueError(f"no person has more than {photos_each} photo(s): nobody to enrol and search for")
        column = np.full(counts.size, -1, dtype=np.int64)
        column[enrolled] = np.arange(enrolled.size)
        rows = np.concatenate([np.flatnonzero(identities == p)[:photos_each] for p in enrolled])
        return cls(photos_each, rows.astype(np.int64), column[identities], enrolled)

    @property
    def people(self) -> int:
        return self.enrolled.size

    def search_blocks(self, embeddings: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Every photo searched, ``BLOCK`` at a time: (first photo; each photo's score for each enrolled person,
        the best over that person's templates as the gallery scores it, with the photo's own person at -inf;
        its own person's score, -inf if not enrolled)."""
        gallery = embeddings[self.template_rows]
        starts = np.arange(0, self.template_rows.size, self.photos_each)
        for begin in range(0, len(embeddings), BLOCK):
            block = embeddings[begin : begin + BLOCK] @ gallery.T
            scores = np.maximum.reduceat(block, starts, axis=1).astype(np.float64)  # thresholds are float64
            own = self.column[begin : begin + BLOCK]
            enrolled = np.flatnonzero(own >= 0)
            own_score = np.full(len(scores), -np.inf, dtype=scores.dtype)
            own_score[enrolled] = scores[enrolled, own[enrolled]]
            scores[enrolled, own[enrolled]] = -np.inf
            yield begin, scores, own_score


def search_outcomes(embeddings: np.ndarray, identities: np.ndarray, enrolled_photos: int = 1) -> SearchOutcomes:
    """Search every photo (rows of unit-length ``embeddings``, ``identities[i]`` its person) in the gallery."""
    enrolment = Enrolment.of(identities, enrolled_photos)
    is_mated_search = enrolment.column >= 0
    is_mated_search[enrolment.template_rows] = False
    parts = {name: [] for name in ("mate_scores", "mate_ranks", "best_non_mate", "non_mated", "people", "named")}
    for begin, others, own_score in enrolment.search_blocks(embeddings):
        best_other = others.max(axis=1)
        mated = is_mated_search[begin : begin + len(others)]
        parts["mate_scores"].append(own_score[mated])
        parts["mate_ranks"].append(1 + np.count_nonzero(others[mated] >= own_score[mated, None], axis=1))
        parts["best_non_mate"].append(best_other[mated])
        searched = np.isfinite(best_other)  # a gallery of only their own person: no search
        parts["non_mated"].append(best_other[searched])
        parts["people"].append(identities[begin : begin + len(others)][searched])
        parts["named"].append(enrolment.enrolled[others[searched].argmax(axis=1)])
    return SearchOutcomes(
        enrolment.people, int(enrolment.template_rows.size), *(np.concatenate(part) for part in parts.values())
    )


def _hits(outcomes: SearchOutcomes) -> np.ndarray:
    """Per mated search, the score from which it is a hit (mate first; ties count against), -inf if never."""
    return np.where(outcomes.mate_ranks == 1, outcomes.mate_scores, -np.inf)


def operating_point(outcomes: SearchOutcomes, threshold: float) -> dict:
    """FNIR, FPIR and misidentifications (a mated search answered with another enrolled person's name) at
    ``threshold``, with their counts; and FPIR per person, each searched person's share of photos given a name,
    averaged over people, which a few much-photographed people cannot dominate as they can FPIR per search."""
    misses = int(np.count_nonzero(_hits(outcomes) < threshold))
    named = outcomes.non_mated >= threshold
    false_positives = int(np.count_nonzero(named))
    wrong = int(np.count_nonzero((outcomes.mate_ranks > 1) & (outcomes.best_non_mate >= threshold)))
    mated, non_mated = outcomes.mate_scores.size, outcomes.non_mated.size
    searches = np.bincount(outcomes.non_mated_people)
    by_person = np.bincount(outcomes.non_mated_people, weights=named, minlength=searches.size)[searches > 0]
    return {
        "threshold": float(threshold),
        "fnir": misses / mated,
        "misses": misses,
        "fpir": false_positives / non_mated,
        "false_positives": false_positives,
        "fpir_per_person": float(np.mean(by_person / searches[searches > 0])),
        "misidentification_rate": wrong / mated,
        "misidentifications": wrong,
    }


def most_named_strangers(outcomes: SearchOutcomes, threshold: float, limit: int = LISTED_STRANGERS) -> list[dict]:
    """The searched people given a name most often at ``threshold``, as non-mated searches (most first): how
    many of their photos were searched and named, and the enrolled person who took most of those names. A
    look-alike of someone enrolled, or a mislabelled photo, shows here; so does a stranger photographed far more
    often than the others, who alone can lift FPIR per search."""
    named = outcomes.non_mated >= threshold
    people, searches = np.unique(outcomes.non_mated_people, return_counts=True)
    times = np.bincount(outcomes.non_mated_people[named], minlength=people.max() + 1)[people]
    listed = []
    for i in np.argsort(-times, kind="stable")[:limit]:
        if times[i] == 0:
            break
        as_whom, counts = np.unique(
            outcomes.non_mated_named[named & (outcomes.non_mated_people == people[i])], return_counts=True
        )
        listed.append(
            {
                "person": int(people[i]),
                "searches": int(searches[i]),
                "named": int(times[i]),
                "mostly_as": int(as_whom[counts.argmax()]),
                "mostly_as_times": int(counts.max()),
            }
        )
    return listed


def curve(outcomes: SearchOutcomes) -> metrics.RocCurve:
    """FPIR (as ``fmr``) and the hit rate 1 - FNIR (as ``tmr``) at every threshold, for a DET plot."""
    hits, non_mated = np.sort(_hits(outcomes)), np.sort(outcomes.non_mated)
    finite = np.concatenate([hits[np.isfinite(hits)], non_mated])
    thresholds = np.concatenate([[np.inf], np.unique(finite)[::-1]])
    fpir = (non_mated.size - np.searchsorted(non_mated, thresholds, side="left")) / non_mated.size
    hit_rate = (hits.size - np.searchsorted(hits, thresholds, side="left")) / hits.size
    return metrics.RocCurve(fmr=fpir, tmr=hit_rate, thresholds=thresholds)


def by_gallery_size(
    embeddings: np.ndarray,
    identities: np.ndarray,
    threshold: float,
    enrolled_photos: int = 1,
    threshold_for_size: SizeThreshold | None = None,
    seed: int = 0,
) -> list[dict]:
    """FPIR at ``threshold``, at ``threshold_for_size(templates)`` if given, and the thresholds that hold FPIR at 1e-2
    and 1e-3, for galleries of 1, 10, 100, ... people drawn at random from the enrolled ones (``SIZE_DRAWS``
    galleries a size up to 100 people, fewer above; the non-mated searches of all pooled), and for the full
    gallery. A searched person's own template is left out, so their gallery holds one person fewer when they are
    among those drawn."""
    enrolment = Enrolment.of(identities, enrolled_photos)
    people = enrolment.people
    rng = np.random.default_rng(seed)
    draws = {
        n: [rng.choice(people, n, replace=False) for _ in range(max(1, min(SIZE_DRAWS, 2_000 // n)))]
        for n in GALLERY_SIZES
        if n < people
    }  # a large gallery's best non-mate varies little from one draw to the next, and costs n per search
    draws[people] = [np.arange(people)]
    pooled: dict[int, list[np.ndarray]] = {n: [] for n in draws}
    for _, others, _ in enrolment.search_blocks(embeddings):
        for n, galleries in draws.items():
            for gallery in galleries:
                best = others[:, gallery].max(axis=1)
                pooled[n].append(best[np.isfinite(best)])
    rows = []
    for n in sorted(pooled):
        best = np.concatenate(pooled[n])
        row = {"people": n, "galleries": len(draws[n]), "searches": int(best.size)}
        row["fpir_at_threshold"] = float(np.mean(best >= threshold))
        if threshold_for_size is not None:
            row["size_threshold"] = threshold_for_size(n * enrolled_photos)
            row["fpir_at_size_threshold"] = float(np.mean(best >= row["size_threshold"]))
        for key, fpir in (("1e-2", 1e-2), ("1e-3", 1e-3)):
            row[f"threshold_at_fpir_{key}"] = metrics.threshold_at_fmr(best, fpir) if fpir * best.size >= 1 else None
        rows.append(row)
    return rows


def claim_rates(
    embeddings: np.ndarray, identities: np.ndarray, enrolled_photos: int, thresholds: dict[str, float]
) -> dict:
    """1:1 claims against the gallery that ``search_outcomes`` searches, as `verify PHOTO --as NAME` checks them:
    each photo of an enrolled person that is not one of their templates claims to be them (a genuine claim), and
    every photo claims to be each enrolled person it does not show (impostor claims); the best of the claimed
    person's templates decides. Under each key of ``thresholds``: FMR and FNMR per claim there, with their counts."""
    enrolment = Enrolment.of(identities, enrolled_photos)
    is_genuine = enrolment.column >= 0
    is_genuine[enrolment.template_rows] = False
    limits = np.array(list(thresholds.values()), dtype=np.float64)
    genuine = impostor = 0
    false_matches, false_non_matches = np.zeros(limits.size, np.int64), np.zeros(limits.size, np.int64)
    for begin, others, own_score in enrolment.search_blocks(embeddings):
        claims = own_score[is_genuine[begin : begin + len(others)]]
        genuine += claims.size
        false_non_matches += np.count_nonzero(claims[:, None] < limits, axis=0)
        impostor_scores = others[np.isfinite(others)]  # -inf: the photo's own person, not an impostor claim
        impostor += impostor_scores.size
        false_matches += np.count_nonzero(impostor_scores[:, None] >= limits, axis=0)
    return {"genuine_claims": genuine, "impostor_claims": impostor} | {
        key: {
            "threshold": float(limit),
            "fmr": int(fm) / impostor,
            "false_matches": int(fm),
            "fnmr": int(fnm) / genuine,
            "false_non_matches": int(fnm),
        }
        for key, limit, fm, fnm in zip(thresholds, limits, false_matches, false_non_matches, strict=True)
    }


def identification_rates(
    embeddings: np.ndarray,
    identities: np.ndarray,
    threshold: float,
    enrolled_photos: int = 1,
    threshold_for_size: SizeThreshold | None = None,
    threshold_for_claims: float | None = None,
) -> dict:
    """The 1:N report of one pipeline: gallery and search counts, rank-1 and rank-5 identification rates (the mate
    first, or among the first five, at any score), the rates at ``threshold`` and at ``threshold_for_size`` of
    this gallery's size (the one `identify` sets from the embedder's card, which this checks on other people: None
    without), FNIR at each FPIR of ``REPORTED_FPIRS`` the non-mated searches resolve, FPIR by gallery size, and the
    strangers named most often at the threshold `identify` would use (``most_named_strangers``; people as identities),
    and 1:1 claims against this gallery (``claim_rates``) at ``threshold`` and at ``threshold_for_claims``, the one
    `verify --as` sets for this many templates a person (None: not set). JSON-ready apart from ``curve``."""
    outcomes = search_outcomes(embeddings, identities, enrolled_photos)
    if outcomes.non_mated.size == 0:
        raise ValueError("no non-mated search: every photo's person is the only one enrolled")
    identify_threshold = threshold if threshold_for_size is None else threshold_for_size(outcomes.templates)
    claim_thresholds = {"at_threshold": threshold}
    if threshold_for_claims is not None:
        claim_thresholds["at_claim_threshold"] = threshold_for_claims
    claims = claim_rates(embeddings, identities, enrolled_photos, claim_thresholds)
    claims.setdefault("at_claim_threshold", None)
    return {
        "enrolled_photos": enrolled_photos,
        "gallery_people": outcomes.gallery_people,
        "templates": outcomes.templates,
        "mated_searches": int(outcomes.mate_scores.size),
        "non_mated_searches": int(outcomes.non_mated.size),
        "rank_1": float(np.mean(outcomes.mate_ranks == 1)),
        "rank_5": float(np.mean(outcomes.mate_ranks <= 5)),
        "at_threshold": operating_point(outcomes, threshold),
        "at_size_threshold": None if threshold_for_size is None else operating_point(outcomes, identify_threshold),
        "at_fpir": {
            key: operating_point(outcomes, metrics.threshold_at_fmr(outcomes.non_mated, fpir))
            for key, fpir in REPORTED_FPIRS.items()
            if fpir * outcomes.non_mated.size >= 1
        },
        "by_gallery_size": by_gallery_size(embeddings, identities, threshold, enrolled_photos, threshold_for_size),
        "strangers_named": {
            "threshold": identify_threshold,
            "people": most_named_strangers(outcomes, identify_threshold),
        },
        "claims": claims,
        "curve": curve(outcomes),
    }
