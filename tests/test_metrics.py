from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from biometrics.evaluation import metrics as M
from biometrics.evaluation.plots import pareto_front, plot_det, plot_pareto, plot_roc, plot_score_histograms

# Hand-worked set: genuine 9, 8, 6, 3; impostor 7, 4, 2, 1 (integers so every value below is exact).
#   threshold: inf  9    8    7    6    4    3    2    1
#   TMR:       0   .25  .50  .50  .75  .75  1    1    1
#   FMR:       0    0    0   .25  .25  .50  .50  .75  1
HAND_SCORES = np.array([9, 8, 6, 3, 7, 4, 2, 1], dtype=float)
HAND_LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def _random_pairs(n: int = 400, seed: int = 0, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping genuine/impostor scores; rounding creates ties, which is where bugs hide."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    scores = rng.normal(loc=np.where(labels == 1, 0.6, 0.2), scale=0.2)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


# ----------------------------------------------------------------------------------------- hand-worked


def test_roc_hand_worked():
    c = M.roc(HAND_SCORES, HAND_LABELS)
    np.testing.assert_array_equal(c.thresholds, [np.inf, 9, 8, 7, 6, 4, 3, 2, 1])
    np.testing.assert_array_equal(c.tmr, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1])
    np.testing.assert_array_equal(c.fmr, [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1])
    np.testing.assert_array_equal(c.fnmr, 1 - c.tmr)


def test_auc_hand_worked():
    # Genuine-over-impostor pairs: 9 and 8 beat all 4, 6 beats 3, 3 beats 2 -> 13 / 16.
    assert M.auc(HAND_SCORES, HAND_LABELS) == 13 / 16


def test_eer_exact_crossing():
    # FNMR = FMR = 0.25 exactly at threshold 6.
    assert M.eer(HAND_SCORES, HAND_LABELS) == (0.25, 6.0)


def test_eer_interpolated():
    # genuine 4, 3, 1; impostor 2, 0. At threshold 3: FNMR 1/3, FMR 0; at 2: FNMR 1/3, FMR 1/2.
    # FNMR - FMR goes 1/3 -> -1/6, crossing at w = 2/3: EER = 2/3 * 1/2 = 1/3, threshold 3 - 2/3 = 7/3.
    rate, thr = M.eer(np.array([4.0, 3, 1, 2, 0]), np.array([1, 1, 1, 0, 0]))
    assert rate == pytest.approx(1 / 3, abs=1e-12)
    assert thr == pytest.approx(7 / 3, abs=1e-12)


def test_eer_perfect_separation_is_zero():
    rate, thr = M.eer(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))
    assert rate == 0.0
    assert thr == 0.8  # lowest genuine score still has FMR 0


@pytest.mark.parametrize(
    ("far", "expected"),
    [
        (0.0, (0.5, 8.0)),
        (0.1, (0.5, 8.0)),
        (0.25, (0.75, 6.0)),
        (0.3, (0.75, 6.0)),
        (0.5, (1.0, 3.0)),
        (1.0, (1.0, 3.0)),
    ],
)
def test_tar_at_far_hand_worked(far, expected):
    assert M.tar_at_far(HAND_SCORES, HAND_LABELS, far) == expected


def test_tar_at_far_prefers_lowest_far_among_equal_tar():
    # genuine 9, 6; impostor 8, 7, 1, 0. With FAR <= 0.25 TAR is 0.5 at threshold 9 (FAR 0) and at 8
    # (FAR 0.25); the threshold with the lower FAR must win.
    scores = np.array([9.0, 6, 8, 7, 1, 0])
    labels = np.array([1, 1, 0, 0, 0, 0])
    assert M.tar_at_far(scores, labels, 0.25) == (0.5, 9.0)
    assert M.tar_at_far(scores, labels, 0.5) == (1.0, 6.0)


def test_tar_at_far_reject_all_case():
    # Top score is an impostor, FAR 0.1 < 1/2 cannot be met except by rejecting everything.
    scores = np.array([1.0, 2.0, 3.0, 0.0])
    labels = np.array([1, 1, 0, 0])
    tar, thr = M.tar_at_far(scores, labels, 0.1)
    assert tar == 0.0
    assert thr == np.nextafter(3.0, np.inf)
    assert not np.any(scores >= thr)


def test_threshold_at_fmr_hand_worked():
    imp = np.arange(1.0, 11.0)  # 1..10
    t = M.threshold_at_fmr(imp, 0.2)
    assert t == np.nextafter(8.0, np.inf)  # accepts 9 and 10 only
    assert np.mean(imp >= t) == 0.2
    assert np.mean(imp >= np.nextafter(t, -np.inf)) > 0.2  # nothing smaller qualifies
    assert M.threshold_at_fmr(imp, 0.0) == np.nextafter(10.0, np.inf)
    assert M.threshold_at_fmr(imp, 0.05) == np.nextafter(10.0, np.inf)  # below 1/N: same as 0


def test_threshold_at_fmr_ties_and_float_rounding():
    # Three tied 5s cannot be split: allowing 2 of 4 still means rejecting all of them.
    assert M.threshold_at_fmr(np.array([5.0, 5, 5, 1]), 0.5) == np.nextafter(5.0, np.inf)
    # 0.29 * 100 == 28.999999999999996 in floats; 29 of 100 must still be allowed.
    imp = np.arange(100.0)
    t = M.threshold_at_fmr(imp, 0.29)
    assert t == np.nextafter(70.0, np.inf)
    assert np.mean(imp >= t) == 0.29


def test_threshold_at_fmr_random_is_smallest():
    rng = np.random.default_rng(3)
    imp = np.round(rng.normal(size=997), 2)
    for fmr in (0.0, 1e-3, 0.01, 0.1, 0.37, 0.9):
        t = M.threshold_at_fmr(imp, fmr)
        assert np.mean(imp >= t) <= fmr
        assert np.mean(imp >= np.nextafter(t, -np.inf)) > fmr


def test_best_accuracy_threshold_hand_worked():
    # Correct counts per candidate (accept >= ...): all 4, >=2: 5, >=3: 6, >=4: 5, >=6: 6, >=7: 5,
    # >=8: 6, >=9: 5, none: 4. Ties at 6 correct -> lowest candidate, the midpoint of 2 and 3.
    assert M.best_accuracy_threshold(HAND_SCORES, HAND_LABELS) == 2.5


def test_best_accuracy_threshold_outside_candidates():
    # Everything scoring high is genuine except one low impostor -> accept-all and reject-all edges.
    assert M.best_accuracy_threshold(np.array([1.0, 2, 3, 0.5]), np.array([1, 1, 1, 0])) == 0.75
    # Accept-all wins (3 genuine vs 1 impostor at the top): candidate below the minimum.
    assert M.best_accuracy_threshold(np.array([1.0, 2, 3, 4]), np.array([1, 1, 1, 0])) == 0.0
    # Reject-all wins: candidate above the maximum.
    assert M.best_accuracy_threshold(np.array([1.0, 2, 3, 4]), np.array([0, 0, 0, 1])) == 3.5
    assert M.best_accuracy_threshold(np.array([1.0, 2, 3, 4]), np.array([1, 0, 0, 0])) == 5.0


def _brute_force_best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    u = np.unique(scores)
    cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:], strict=True)] + [u[-1] + 1.0]
    best_t, best_acc = None, -1.0
    for t in cands:  # ascending, strict '>' keeps the lowest on ties
        acc = np.mean((scores >= t) == (labels == 1))
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t, best_acc


@pytest.mark.parametrize(("seed", "decimals"), [(0, 2), (1, 1), (2, None), (3, 0)])
def test_best_accuracy_threshold_matches_brute_force(seed, decimals):
    scores, labels = _random_pairs(n=300, seed=seed, decimals=decimals)
    ref_t, ref_acc = _brute_force_best_threshold(scores, labels)
    t = M.best_accuracy_threshold(scores, labels)
    assert t == pytest.approx(ref_t, abs=1e-12)
    assert np.mean((scores >= t) == (labels == 1)) == ref_acc
    # No threshold at all (e.g. any score value) does better than the chosen candidate.
    all_accs = [np.mean((scores >= v) == (labels == 1)) for v in np.append(scores, np.inf)]
    assert max(all_accs) == ref_acc


def test_best_accuracy_threshold_adjacent_floats():
    a = 0.5
    b = np.nextafter(a, 1.0)
    t = M.best_accuracy_threshold(np.array([b, a]), np.array([1, 0]))
    assert a < t <= b


def test_kfold_hand_worked_uses_other_folds_only():
    # fold 0: genuine 9, 8; impostor 2, 1.  fold 1: genuine 5, 4; impostor 7, 6.
    # Fold 0 is scored with fold 1's best threshold: accept-all and reject-all tie (2 of 4) -> lowest,
    # 4 - 1 = 3; on fold 0 that is 4/4 correct. Fold 1 uses fold 0's threshold 5 -> only genuine 5
    # correct, 1/4. Fold 1's own best threshold (3) would give 2/4, pooled data another value again.
    scores = np.array([9.0, 8, 2, 1, 5, 4, 7, 6])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = M.kfold_accuracy(scores, labels, folds)
    np.testing.assert_array_equal(r.fold_ids, [0, 1])
    np.testing.assert_array_equal(r.thresholds, [3.0, 5.0])
    np.testing.assert_array_equal(r.accuracies, [1.0, 0.25])
    assert r.mean == 0.625
    assert r.std == 0.375  # population std
    # Sanity: the in-fold threshold for fold 1 differs, so a leak would change the answer.
    assert M.best_accuracy_threshold(scores[4:], labels[4:]) == 3.0


def test_kfold_matches_reference_on_random_data():
    scores, labels = _random_pairs(n=600, seed=5)
    folds = np.repeat(np.array([7, 2, 4, 9, 0]), 120)  # unsorted, non-contiguous ids
    r = M.kfold_accuracy(scores, labels, folds)
    np.testing.assert_array_equal(r.fold_ids, [0, 2, 4, 7, 9])
    for fid, acc, thr in zip(r.fold_ids, r.accuracies, r.thresholds, strict=True):
        train, test = folds != fid, folds == fid
        ref_t, _ = _brute_force_best_threshold(scores[train], labels[train])
        assert thr == pytest.approx(ref_t, abs=1e-12)
        assert acc == np.mean((scores[test] >= thr) == (labels[test] == 1))
    assert r.std == pytest.approx(np.std(r.accuracies, ddof=0))


# ------------------------------------------------------------------------------ agreement with sklearn


@pytest.mark.parametrize("decimals", [None, 2])
def test_roc_and_auc_agree_with_sklearn(decimals):
    scores, labels = _random_pairs(n=500, seed=11, decimals=decimals)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    c = M.roc(scores, labels)
    np.testing.assert_array_equal(c.fmr, fpr)
    np.testing.assert_array_equal(c.tmr, tpr)
    np.testing.assert_array_equal(c.thresholds, thr)
    assert M.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-15)


def test_eer_and_tar_consistent_with_definitions_on_random_data():
    scores, labels = _random_pairs(n=2000, seed=21, decimals=3)
    gen, imp = scores[labels == 1], scores[labels == 0]
    rate, thr = M.eer(scores, labels)
    fnmr_at, fmr_at = np.mean(gen < thr), np.mean(imp >= thr)
    assert 0.1 < rate < 0.4
    # The interpolated EER lies between the step-function error rates around the threshold.
    assert abs(fnmr_at - rate) < 0.02 and abs(fmr_at - rate) < 0.02
    for far in (1e-3, 1e-2, 0.1):
        tar, t = M.tar_at_far(scores, labels, far)
        assert np.mean(imp >= t) <= far
        assert tar == np.mean(gen >= t)
        assert t in scores  # an actual score value
        # Brute force: no score threshold with FAR <= far beats it.
        best = max(np.mean(gen >= v) for v in np.unique(scores) if np.mean(imp >= v) <= far)
        assert tar == best


# -------------------------------------------------------------------------------------------- summary


def test_verification_summary_is_json_ready_and_consistent():
    scores, labels = _random_pairs(n=400, seed=8)
    folds = np.arange(400) % 10
    summ = M.verification_summary(scores, labels, folds)
    text = json.dumps(summ)
    assert json.loads(text) == summ
    assert summ["pairs"] == 400
    assert summ["genuine_pairs"] == int(labels.sum())
    assert summ["impostor_pairs"] == 400 - int(labels.sum())
    kf = M.kfold_accuracy(scores, labels, folds)
    assert summ["accuracy_mean"] == kf.mean and summ["accuracy_std"] == kf.std
    assert [p["fold"] for p in summ["per_fold"]] == list(range(10))
    assert [p["accuracy"] for p in summ["per_fold"]] == kf.accuracies.tolist()
    assert summ["auc"] == M.auc(scores, labels)
    assert (summ["eer"], summ["eer_threshold"]) == M.eer(scores, labels)
    assert set(summ["tar_at_far"]) == {"1e-2", "1e-3"}
    assert (summ["tar_at_far"]["1e-2"]["tar"], summ["tar_at_far"]["1e-2"]["threshold"]) == M.tar_at_far(
        scores, labels, 1e-2
    )

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert type(x) in (int, float, str, bool), type(x)

    walk(summ)


def test_a_tar_at_a_far_the_impostor_pairs_cannot_resolve_is_flagged_as_tar_at_far_0():
    """600 impostor pairs (LFW folds 9-10) measure a FAR no finer than 1/600: asked at FAR 1e-3, the TAR is the one
    at FAR 0, and the summary says so; at 1e-2 the threshold may accept up to 6 of them."""
    labels = np.repeat([1, 0], 600)
    scores = np.random.default_rng(3).normal(loc=np.where(labels == 1, 0.6, 0.2), scale=0.2)
    summ = M.verification_summary(scores, labels, np.arange(labels.size) % 2)
    assert summ["far_resolution"] == 1 / 600
    coarse, fine = summ["tar_at_far"]["1e-2"], summ["tar_at_far"]["1e-3"]
    assert fine["below_resolution"] and fine["false_accepts"] == 0
    assert fine["tar"] == M.tar_at_far(scores, labels, 0.0)[0]
    assert not coarse["below_resolution"] and coarse["false_accepts"] == 6  # no ties among random scores


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1]), "differ in length"),
        (np.array([[0.1, 0.2]]), np.array([0, 1]), "1-D"),
        (np.array([0.1, 0.2]), np.array([[0, 1]]), "1-D"),
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]), r"0 \(impostor\) or 1"),
        (np.array([0.1, 0.2]), np.array([1, 1]), "both genuine"),
        (np.array([0.1, 0.2]), np.array([0, 0]), "both genuine"),
        (np.array([0.1, np.nan]), np.array([0, 1]), "NaN"),
        (np.array([]), np.array([]), "empty"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [M.roc, M.auc, M.eer, M.best_accuracy_threshold, lambda s, lab: M.tar_at_far(s, lab, 0.01)],
)
def test_input_validation(fn, scores, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(scores, labels)


def test_kfold_validation():
    s, lab = np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        M.kfold_accuracy(s, lab, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="differ in length"):
        M.kfold_accuracy(s, lab, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="integer"):
        M.kfold_accuracy(s, lab, np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2 folds"):
        M.verification_summary(s, lab, np.zeros(4, dtype=int))


def test_rate_validation():
    s, lab = HAND_SCORES, HAND_LABELS
    with pytest.raises(ValueError, match="far"):
        M.tar_at_far(s, lab, 1.5)
    with pytest.raises(ValueError, match="far"):
        M.tar_at_far(s, lab, -0.1)
    with pytest.raises(ValueError, match="fmr"):
        M.threshold_at_fmr(s, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        M.threshold_at_fmr(np.ones((2, 2)), 0.1)


# ---------------------------------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def test_plots_write_png(tmp_path):
    s1, l1 = _random_pairs(n=500, seed=1, decimals=None)
    s2, l2 = _random_pairs(n=500, seed=2, decimals=None)
    curves = {"model A": M.roc(s1, l1), "model B": M.roc(s2 * 2, l2)}
    out = plot_roc(curves, tmp_path / "roc.png")
    assert out == tmp_path / "roc.png"
    _assert_png(out)
    _assert_png(plot_roc(curves, tmp_path / "roc_resolution.png", impostor_pairs=250))  # FMR < 1/250 shaded
    out = plot_det(curves, tmp_path / "sub" / "det.png")  # parent folder is created
    _assert_png(out)
    out = plot_score_histograms(s1, l1, tmp_path / "hist.png", threshold=0.4, title="A")
    _assert_png(out)
    out = plot_score_histograms(s1, l1, str(tmp_path / "hist_nothr.png"))
    _assert_png(out)


def test_pareto_front_keeps_the_models_nothing_beats_on_both_speed_and_accuracy(tmp_path):
    points = {  # label: (latency ms, accuracy, file bytes)
        "teacher": (29.3, 0.9947, 10_667_852),
        "student": (2.47, 0.9897, 1_415_333),
        "student-fp32": (3.04, 0.9887, 3_687_605),  # slower and less accurate than the student
        "mid": (10.0, 0.9930, 5_000_000),
        "same speed, worse": (10.0, 0.9900, 5_000_000),
    }
    assert pareto_front(points) == ["student", "mid", "teacher"]
    _assert_png(plot_pareto(points, tmp_path / "pareto.png"))


def test_pareto_labels_of_models_at_nearly_the_same_point_do_not_overlap():
    """A network's FP32 and INT8 files often sit on top of each other; every name must stay readable: apart from
    the others and the legend, inside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from biometrics.evaluation.plots import separate_labels

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([2.5, 30], [98.0, 99.5], label="Pareto front")
    ax.legend(loc="lower right")
    labels = [
        ax.annotate(f"model {i}\n1.4 MB", (2.5, 98.0), xytext=(5, 5), textcoords="offset points") for i in range(6)
    ]
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert labels[0].get_window_extent(renderer).overlaps(labels[1].get_window_extent(renderer))
    separate_labels(ax, labels)
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    axes, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
    assert all(axes.y0 <= box.y0 and box.y1 <= axes.y1 and not box.overlaps(legend) for box in boxes)


def test_log_rate_axes_start_below_the_smallest_rate_the_pairs_can_measure():
    from biometrics.evaluation.plots import _rate_floor

    six_hundred_impostors = np.array([0.0, 1 / 600, 0.5, 1.0])
    assert _rate_floor([six_hundred_impostors]) == pytest.approx(1e-3)
    assert _rate_floor([six_hundred_impostors], show=5e-4) == pytest.approx(1e-4)  # FMR 1e-3 marked: in view
    assert _rate_floor([np.array([0.0, 1e-3, 1.0])]) == pytest.approx(1e-4)  # strictly below a rate of 1e-3
    assert _rate_floor([np.array([0.0, 1e-9, 1.0])]) == 1e-5  # never below MIN_RATE
    assert _rate_floor([np.zeros(3)], show=5e-4) == pytest.approx(1e-4)  # no non-zero rate at all


def test_plots_reject_empty_input(tmp_path):
    with pytest.raises(ValueError):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_score_histograms(np.array([0.1, 0.2]), np.array([1, 1]), tmp_path / "x.png")
